"""The settings of one run: :class:`TrainConfig`, validated when made, and what tells two apart.

The same config gives the same numbers (on the CPU, with the same number of threads).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from optimlab import registry
from optimlab.data import check_validation
from optimlab.engine.layout import check_memory_format
from optimlab.engine.precision import check_precision
from optimlab.errors import OptimlabError
from optimlab.optimizers import LOCAL_FLOW, OptimizerSpec, check_lr, default_lr
from optimlab.schedules import schedule_text

FORMULATIONS = ("lagrangian", "augmented_lagrangian", "quadratic_penalty")
# fields of TrainConfig that may change between a run and its resumption
RESUMABLE_CHANGES = ("epochs", "iterations", "device", "memory_format")
# fields added since runs were first named, with the value every earlier run had (names keep to them)
LATER_FIELDS = {"validation": None, "schedule": "constant", "precision": "fp32", "compile": False}


@dataclass
class TrainConfig:
    """Everything that defines a run; the same config and seed give the same numbers (on the CPU).

    ``model``, ``optimizer``, ``dataset`` and ``loss`` take names, import paths
    ``package.module:attribute`` or, in Python, objects (see :mod:`optimlab.registry`): a model class,
    factory or ``nn.Module``; an optimizer class, factory or table; a loader, a Dataset or the four
    tensors; a loss callable. Objects with an import path are kept as that path; others (lambdas,
    closures, instances) stay objects, which only this process can use (not the processes or Ray
    executors). ``model_options`` / ``dataset_options``: keyword arguments of the factory / loader.

    Budget: ``epochs`` or ``iterations`` (one of them; one epoch when neither is given).
    ``eval_every``: evaluate every so many iterations; None evaluates at the end of every epoch.
    ``log_every``: record the training batch loss every so many iterations.
    ``validation``: hold out a validation set from the training set (a fraction in (0, 1) or a
    count; the same examples for every run, :meth:`optimlab.data.Dataset.with_validation`),
    evaluated at every evaluation beside the test set; None (or 0): none.
    ``schedule``: the learning rate's schedule over the budget (:mod:`optimlab.schedules`:
    ``constant``, ``cosine(warmup=0.05)``, ``linear(...)``, ``step(...)``), as factors of ``lr``.
    ``constraints``: e.g. ``["l2norm<=1"]`` (see :mod:`optimlab.constrained.named`): the run is then
    a constrained problem in ``formulation`` (``lagrangian``, ``augmented_lagrangian`` or
    ``quadratic_penalty``, the last two with the penalty coefficient ``penalty``, default 1), stepped
    by simultaneous gradient descent-ascent with ``optimizer`` on the model and ``dual_optimizer`` at
    ``dual_lr`` on the multipliers (the quadratic penalty has none).
    ``precision``: ``fp32`` (plain), ``bf16`` or ``fp16``: mixed precision, the forward passes under
    autocast with fp32 master weights, fp16 with a gradient scaler (:mod:`optimlab.engine.precision`).
    ``compile``: the training steps of runs trained one by one call the model compiled by
    ``torch.compile`` (evaluations the model itself); their results equal the plain run's to
    rounding. Off by default: on the study benchmark's CPU it does not pay (the README's Speed).
    ``memory_format``: the layout of a convolutional network's images and parameters in runs trained
    one by one, ``contiguous``, ``channels_last``, or ``auto`` (default: the faster of the two,
    measured; :mod:`optimlab.engine.layout`); like the device, it does not change the run.
    """

    dataset: object = "mnist-10k"
    model: object = "mlp"
    optimizer: object = "sgd"
    lr: float | None = None
    batch_size: int = 100
    epochs: int | None = None
    iterations: int | None = None
    eval_every: int | None = None
    log_every: int = 10
    seed: int = 0
    drop_last: bool = False
    normalize: bool = True
    eval_train: bool = True
    model_options: dict = field(default_factory=dict)
    dataset_options: dict = field(default_factory=dict)
    loss: object = None
    constraints: list = field(default_factory=list)
    dual_optimizer: str = "sgd"
    dual_lr: float = 1e-3
    formulation: str = "lagrangian"
    penalty: float | None = None
    device: str = "auto"
    validation: float | int | None = None
    schedule: str = "constant"
    precision: str = "fp32"
    compile: bool = False
    memory_format: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.constraints, list | tuple):
            raise OptimlabError(f"constraints must be a list like ['l2norm<=1']; got {self.constraints!r}")
        self.constraints = [registry.parse_constraint(c).text for c in self.constraints]
        self.dual_optimizer = registry.optimizer_record(self.dual_optimizer)
        self.dual_lr = check_lr(self.dual_lr)
        self._check_formulation()
        for name in ("model_options", "dataset_options"):
            if not isinstance(getattr(self, name), dict):
                raise OptimlabError(
                    f"{name} must be a dict of keyword arguments; got {getattr(self, name)!r}")
        self.model = registry.model_record(self.model)
        self.dataset = registry.dataset_record(self.dataset)
        self.loss = registry.task_record(self.loss)
        local = local_flow_name(self.optimizer)
        self.optimizer = str(OptimizerSpec.parse(self.optimizer)) if local else \
            registry.optimizer_record(self.optimizer)
        if self.lr is None:
            self.lr = default_lr(local) if local else registry.resolve_optimizer(self.optimizer).default_lr()
        self.lr = check_lr(self.lr)
        if self.constraints and local:
            raise OptimlabError(f"constraints need a torch.optim optimizer; {local} is not one")
        self.schedule = schedule_text(self.schedule)
        self._check_precision(local)
        self.memory_format = check_memory_format(self.memory_format)
        if not isinstance(self.compile, bool):
            raise OptimlabError(f"compile must be true or false; got {self.compile!r}")
        if self.compile and local:
            raise OptimlabError(f"{local} is not compiled: compile is for torch.optim optimizers")
        if local and self.schedule != "constant":
            raise OptimlabError(f"{local} sets its own learning rate; an lr schedule ({self.schedule}) is "
                                "for torch.optim optimizers")
        for name in ("batch_size", "log_every", "seed"):
            _check_int(name, getattr(self, name), minimum=0 if name == "seed" else 1)
        self.validation = check_validation(self.validation)
        if self.epochs is not None and self.iterations is not None:
            raise OptimlabError("give the budget as epochs or as iterations, not both")
        if self.epochs is None and self.iterations is None:
            self.epochs = 1
        for name in ("epochs", "iterations", "eval_every"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)

    def _check_precision(self, local: str | None) -> None:
        self.precision = check_precision(self.precision)
        if self.precision == "fp32":
            return
        if local:
            raise OptimlabError(f"{local} computes its flow in fp32 or fp64; precision {self.precision!r} is "
                                "for torch.optim optimizers")
        if self.precision == "fp16" and self.constraints:
            raise OptimlabError("precision 'fp16' needs a gradient scaler, which constrained training does "
                                "not take; use 'bf16' (fp32's range, no scaler) or 'fp32'")

    def _check_formulation(self) -> None:
        if self.formulation not in FORMULATIONS:
            raise OptimlabError(f"unknown formulation {self.formulation!r}; valid: {', '.join(FORMULATIONS)}")
        if self.formulation != "lagrangian" and not self.constraints:
            raise OptimlabError(f"formulation {self.formulation!r} needs constraints (e.g. 'l2norm<=1')")
        if self.penalty is None:
            return
        if self.formulation == "lagrangian":
            raise OptimlabError("a penalty coefficient needs formulation 'augmented_lagrangian' or "
                                "'quadratic_penalty'; the Lagrangian has none")
        if isinstance(self.penalty, bool) or not isinstance(self.penalty, int | float) or not (
                math.isfinite(self.penalty) and self.penalty > 0):
            raise OptimlabError(f"the penalty coefficient must be a finite number > 0; got {self.penalty!r}")
        self.penalty = float(self.penalty)

    @property
    def has_multipliers(self) -> bool:
        """Whether the run has multipliers (and so a dual optimizer and a dual lr that matter)."""
        return bool(self.constraints) and self.formulation != "quadratic_penalty"

    @property
    def optimizer_label(self) -> str:
        """The optimizer as records and reports name it."""
        return registry.optimizer_label(self.optimizer)

    @property
    def portable(self) -> bool:
        """Whether every setting is a plain value (names, import paths), so that another process
        (a worker, a Ray task) can rebuild the run from :meth:`to_dict`."""
        return all(registry.portable(getattr(self, f.name)) for f in dataclasses.fields(self))

    def objects(self) -> list[str]:
        """The settings that hold Python objects without an import path, as ``field: <python: ...>``."""
        return [f"{f.name}: {registry.describe(getattr(self, f.name))}" for f in dataclasses.fields(self)
                if not registry.portable(getattr(self, f.name))]

    def to_dict(self) -> dict:
        """Plain values only: objects without an import path are written ``<python: NAME>``."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise OptimlabError(f"unknown run settings: {', '.join(unknown)}")
        objects = [f"{k}: {v}" for k, v in d.items() if isinstance(v, str) and v.startswith("<python: ")]
        if objects:
            raise OptimlabError(
                f"this run was defined in Python with objects that have no import path "
                f"({'; '.join(objects)}): "
                "only the process that holds them can train it. Continue it from Python with the same "
                "objects (build_study + run_study), or name them by import path")
        return cls(**d)


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value] if isinstance(value, list) else tuple(_plain(v) for v in value)
    return value if registry.portable(value) else registry.describe(value)


def local_flow_name(optimizer: object) -> str | None:
    """The local-flow optimizer a setting names (``exact-flow``, ``localflow-sgd``), else None;
    refuses hyperparameters it does not have."""
    if not isinstance(optimizer, str):
        return None
    spec = OptimizerSpec.parse(optimizer)
    if spec.name not in LOCAL_FLOW:
        return None
    unknown = sorted(set(spec.options) - set(LOCAL_FLOW[spec.name]))
    if unknown:
        raise OptimlabError(f"optimizer {spec.name!r} has no hyperparameter {', '.join(unknown)}; "
                            f"valid: {', '.join(LOCAL_FLOW[spec.name])}")
    return spec.name


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptimlabError(f"{name} must be an integer >= {minimum}; got {value!r}")



def config_differences(saved: dict, config: TrainConfig) -> str:
    """The settings in which a checkpoint's config differs from ``config``, as text ("" if none),
    leaving out those a resumption may change (RESUMABLE_CHANGES)."""
    mine = config.to_dict()
    # a setting added after the checkpoint was written: it had the field's default
    defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for f in dataclasses.fields(TrainConfig)}
    theirs = {k: saved.get(k, defaults.get(k)) for k in mine}
    differ = [k for k in mine if k not in RESUMABLE_CHANGES and theirs[k] != mine[k]]
    return "; ".join(f"{k}: checkpoint {theirs[k]!r}, now {mine[k]!r}" for k in differ)



def check_schedule_budget(saved: dict, config: TrainConfig) -> None:
    """A run with an lr schedule resumes only with its budget: the schedule spans it, and another
    budget would make it another run."""
    if config.schedule == "constant":
        return
    then = (saved.get("epochs"), saved.get("iterations"))
    if then != (config.epochs, config.iterations):
        raise OptimlabError(
            f"this run's lr schedule ({config.schedule}) spans its budget (epochs {then[0]}, iterations "
            f"{then[1]}); resumed with another (epochs {config.epochs}, iterations {config.iterations}) it "
            "would be another run. Resume with the same budget, or train the longer run into another folder")
