"""One training run: the loop, evaluation, metrics, checkpoint/resume and the divergence guard.

Steps are counted from 1: step s is the s-th optimizer update, made on batch s. Its batch loss is the
loss of batch s before the update; an evaluation "at step s" is made after it (step 0: before any).
A run that meets a non-finite batch loss stops with ``status="diverged"`` and ``diverged_at=s``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from optimlab import registry
from optimlab.constrained.named import parse_constraint
from optimlab.data import Dataset, epoch_batches, steps_per_epoch
from optimlab.devices import resolve_device
from optimlab.errors import OptimlabError
from optimlab.optimizers import LOCAL_FLOW, OptimizerSpec, check_lr, default_lr
from optimlab.runfiles import (
    atomic_save,
    atomic_write_text,
    check_writable,
    load_checkpoint,
    remove_partial_files,
)
from optimlab.tasks import TASKS, Task

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "optimlab.run/1"
EVAL_BATCH = 1024  # bounds the memory of a CNN evaluation (1024 x 64 x 32 x 32 floats)
FORMULATIONS = ("lagrangian", "augmented_lagrangian", "quadratic_penalty")
# the run's stream of random operations in training (dropout) is seeded with seed + this: apart from
# its initialization's (seed) for every seed below 2**32
RANDOM_STREAM = 2**32
# fields of TrainConfig that may change between a run and its resumption
RESUMABLE_CHANGES = ("epochs", "iterations", "device")


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
    ``constraints``: e.g. ``["l2norm<=1"]`` (see :mod:`optimlab.constrained.named`): the run is then
    a constrained problem in ``formulation`` (``lagrangian``, ``augmented_lagrangian`` or
    ``quadratic_penalty``, the last two with the penalty coefficient ``penalty``, default 1), stepped
    by simultaneous gradient descent-ascent with ``optimizer`` on the model and ``dual_optimizer`` at
    ``dual_lr`` on the multipliers (the quadratic penalty has none).
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

    def __post_init__(self) -> None:
        if not isinstance(self.constraints, list | tuple):
            raise OptimlabError(f"constraints must be a list like ['l2norm<=1']; got {self.constraints!r}")
        self.constraints = [parse_constraint(c).text for c in self.constraints]
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
        for name in ("batch_size", "log_every", "seed"):
            _check_int(name, getattr(self, name), minimum=0 if name == "seed" else 1)
        if self.epochs is not None and self.iterations is not None:
            raise OptimlabError("give the budget as epochs or as iterations, not both")
        if self.epochs is None and self.iterations is None:
            self.epochs = 1
        for name in ("epochs", "iterations", "eval_every"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)

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


@dataclass
class RunResult:
    """What a run produced. ``evals``: one dict per evaluation (see :func:`train`); ``train_log``:
    ``{"step", "epoch", "loss", "lr"}`` every ``log_every`` steps."""

    config: TrainConfig
    status: str  # "completed" or "diverged"
    steps: int
    diverged_at: int | None
    evals: list[dict]
    train_log: list[dict]
    wall_time: float
    device: str
    model: nn.Module | None = None

    @property
    def final(self) -> dict:
        return self.evals[-1] if self.evals else {}

    def to_dict(self) -> dict:
        return {
            "config": self.config.to_dict(), "status": self.status, "steps": self.steps,
            "diverged_at": self.diverged_at, "wall_time": self.wall_time, "device": self.device,
            "final": self.final, "evals": self.evals, "train_log": self.train_log,
        }


def loss_function(task: str | Task) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The mean loss of a task (by name: mean cross-entropy over logits for classification; mean of
    1/2 (prediction - y)^2 for regression)."""
    return (TASKS[task] if isinstance(task, str) else task).loss


def task_of(config: TrainConfig, data: Dataset) -> Task:
    """The task a run trains on: ``config.loss`` on data of ``data.task``'s kind."""
    return registry.resolve_task(config.loss, data.task)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str | Task,
             batch_size: int = EVAL_BATCH) -> tuple[float, float | None]:
    """Mean loss and accuracy (a fraction; None for a task without one) of ``model`` on all of (x, y),
    in eval mode (BatchNorm's running statistics, no dropout)."""
    task = TASKS[task] if isinstance(task, str) else task
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        out = model(xb)
        loss_sum += task.loss_sum(out, yb).double()
        if task.accuracy:
            correct += task.hits(out, yb)
    model.train(was_training)
    n = x.shape[0]
    loss = loss_sum.item() / n
    return loss, (correct.item() / n if task.accuracy else None)


class RunProgress:
    """The state of a run that a checkpoint carries, besides model and optimizer."""

    def __init__(self) -> None:
        self.step = 0
        self.epoch = 0  # completed epochs
        self.status = "running"
        self.diverged_at: int | None = None
        self.evals: list[dict] = []
        self.train_log: list[dict] = []
        self.wall_time = 0.0

    def to_dict(self) -> dict:
        return dict(vars(self))

    def load(self, d: dict) -> None:
        for k in vars(self):
            setattr(self, k, d[k])


def train(
    config: TrainConfig,
    out: str | Path | None = None,
    resume: bool = False,
    data: Dataset | None = None,
    data_dir: str | Path | None = None,
    on_eval: Callable[[dict], None] | None = None,
    progress: bool = False,
    keep_model: bool = True,
    resume_from: dict | None = None,
    on_checkpoint: Callable[[dict, RunResult], None] | None = None,
) -> RunResult:
    """Train one model as ``config`` says and return what happened.

    ``out``: folder for ``checkpoint.pt`` (written atomically at the end of every epoch and of the
    run), ``metrics.json``, ``evals.csv`` and ``train_log.csv``. ``resume``: continue from the
    checkpoint in ``out`` (a run with no checkpoint starts fresh); it ends with exactly the metrics
    of an uninterrupted run. ``data``: an already loaded data set (else ``config.dataset`` is loaded).
    ``on_eval`` is called with every evaluation row: ``step``, ``epoch`` (fractional), ``batch_loss``,
    ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy`` (fractions; None for
    regression or when ``eval_train`` is off), ``lr``, ``wall_time`` (seconds since the start,
    evaluations included, summed over resumptions).

    Without a folder: ``on_checkpoint(checkpoint, result_so_far)`` receives the checkpoint (a dict
    of tensors and plain values) at the same moments, and ``resume_from`` continues from one.

    Random operations of training (Dropout's masks) draw from torch's global generators seeded for
    the run with ``seed + RANDOM_STREAM`` (the checkpoint carries their state); the caller's
    generators are restored afterwards.
    """
    device = resolve_device(config.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed + RANDOM_STREAM)
        return _train(config, out, resume, data, data_dir, on_eval, progress, keep_model, resume_from,
                      on_checkpoint)


def _train(config, out, resume, data, data_dir, on_eval, progress, keep_model, resume_from,
           on_checkpoint) -> RunResult:
    out = Path(out) if out is not None else None
    if resume and out is None:
        raise OptimlabError("resume needs the output folder of the run to continue (out=...)")
    if out is not None:
        check_writable(out)
        remove_partial_files(out)
        if resume and (out / CHECKPOINT).exists():
            resume_from = load_checkpoint(out / CHECKPOINT, CHECKPOINT_FORMAT)
        on_checkpoint = _folder_writer(out, on_checkpoint)
    device = resolve_device(config.device)
    data = load_data(config, data, data_dir, device)
    n = data.num_train
    check_batch_size(config.batch_size, data)
    per_epoch = steps_per_epoch(n, config.batch_size, config.drop_last)
    total = total_steps(config, per_epoch)

    task = task_of(config, data)
    model = init_model(config, data).to(device).train()
    loss_fn = task.loss
    local = _LocalFlow(config, model, loss_fn) if local_flow_name(config.optimizer) else None
    optimizer = local.optimizer if local is not None else \
        registry.build_optimizer(config.optimizer, model.parameters(), lr=config.lr)
    order = torch.Generator().manual_seed(config.seed)  # the batch order, its own stream
    state = RunProgress()
    lagrangian = _Constrained(config, model, optimizer, task, device) if config.constraints else None
    if resume_from is not None:
        _restore(resume_from, config, model, optimizer, order, state)
        if lagrangian is not None:
            lagrangian.optimizer.load_state_dict(resume_from["constrained"])
        if local is not None and local.scheduler is not None:
            local.scheduler.load_state_dict(resume_from["scheduler"])
    x, y = data.x_train, data.y_train
    started = time.perf_counter() - state.wall_time

    def record_eval(batch_loss: float | None) -> None:
        tr_loss, tr_acc = (evaluate(model, x, y, task) if config.eval_train
                           else (None, None))
        te_loss, te_acc = evaluate(model, data.x_test, data.y_test, task)
        row = {"step": state.step, "epoch": round(state.step / per_epoch, 6),
               "batch_loss": batch_loss, "train_loss": tr_loss, "train_accuracy": tr_acc,
               "test_loss": te_loss, "test_accuracy": te_acc,
               "lr": optimizer.param_groups[0]["lr"],
               "wall_time": time.perf_counter() - started}
        if lagrangian is not None:
            row.update(lagrangian.now())
        state.evals.append(row)
        if on_eval is not None:
            on_eval(row)

    def save() -> None:
        state.wall_time = time.perf_counter() - started
        if on_checkpoint is None:
            return
        # a snapshot, not views of the live tensors and lists (a caller may keep it)
        on_checkpoint(copy.deepcopy({
            "format": CHECKPOINT_FORMAT, "config": config.to_dict(),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": {"epoch_start": epoch_start, "torch": torch.get_rng_state(),
                    **({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})},
            "progress": state.to_dict(),
            **({"constrained": lagrangian.optimizer.state_dict()} if lagrangian is not None else {}),
            **({"scheduler": local.scheduler.state_dict()} if local is not None and local.scheduler
               is not None else {}),
        }), run_result(config, state, device, None))

    if state.step == 0 and not state.evals:
        record_eval(None)
    bar = progress_bar(total, state.step, progress)
    # the batch-order state the epoch in progress was drawn from: a checkpoint carries it, so that
    # a resumption mid-epoch draws the same permutation and skips the batches already done
    epoch_start = order.get_state()
    while state.status == "running" and state.step < total:
        epoch_start = order.get_state()
        batches = epoch_batches(n, config.batch_size, order, config.drop_last, device)
        skip = state.step - state.epoch * per_epoch  # > 0 only when resuming mid-epoch
        pending: list[torch.Tensor] = []  # batch losses not yet looked at
        last_loss = None
        for i in range(skip, len(batches)):
            idx = batches[i]
            if lagrangian is None and local is None:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                optimizer.step()
            else:
                loss = (lagrangian or local).step(x[idx], y[idx])
            pending.append(loss.detach())
            state.step += 1
            step = state.step
            at_eval = config.eval_every is not None and step % config.eval_every == 0
            last = step == total or i == len(batches) - 1
            if step % config.log_every == 0 or at_eval or last:
                logged = len(state.train_log)
                batch_loss = last_loss = _flush(pending, state, config.log_every, per_epoch,
                                                optimizer.param_groups[0]["lr"])
                if lagrangian is not None:
                    lagrangian.annotate(state.train_log[logged:], step)
                bar.update(step - bar.n)
                if state.status == "diverged":
                    break
                bar.set_postfix(loss=f"{batch_loss:.4f}", refresh=False)
                if at_eval or (step == total and not evaluated_at(state, step)):
                    record_eval(batch_loss)
            if step == total:
                break
        else:
            state.epoch += 1
            if config.eval_every is None and not evaluated_at(state, state.step):
                record_eval(last_loss)
            epoch_start = order.get_state()
            save()
            continue
        break
    if state.status == "running":
        state.status = "completed"
    bar.close()
    save()
    return run_result(config, state, device, model if keep_model else None)


class _LocalFlow:
    """The optimizers of the local problem inside a run: ``exact-flow`` (the exact flow of each batch,
    linear models) and ``localflow-sgd`` (SGD whose learning rate the curvature scheduler sets from
    the flow time ``lr``, the curvature measured every ``every`` steps)."""

    def __init__(self, config: TrainConfig, model: nn.Module, loss_fn):
        from optimlab.localflow import CurvatureScheduler, ExactFlow

        spec = OptimizerSpec.parse(config.optimizer)
        options = {**LOCAL_FLOW[spec.name], **spec.options}
        self.model, self.loss_fn, self.scheduler = model, loss_fn, None
        if spec.name == "exact-flow":
            self.optimizer = ExactFlow(model, lr=config.lr, rtol=options["rtol"], atol=options["atol"])
        else:
            self.optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=options["momentum"])
            self.scheduler = CurvatureScheduler(self.optimizer, every=options["every"],
                                                method=options["method"], eps=options["eps"])

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if self.scheduler is None:
            return self.optimizer.step(xb, yb).to(torch.float32)
        loss = self.scheduler.step(lambda: self.loss_fn(self.model(xb), yb))
        self.optimizer.step()
        return loss


class _Constrained:
    """A run's constraints: the problem, the primal-dual optimizer, and the extra columns of its
    records (``violation_<key>``, ``multiplier_<key>`` unless the quadratic penalty has none, and, in
    train_log, the batch ``accuracy``)."""

    def __init__(self, config: TrainConfig, model: nn.Module, optimizer, task: Task, device):
        from optimlab.constrained import ConstrainedOptimizer, Constraint, Problem, State

        self.named = [parse_constraint(c) for c in config.constraints]
        self.model = model
        classify, loss_fn = task.accuracy, task.loss

        def compute(xb, yb):
            out = model(xb)
            misc = {"accuracy": (out.argmax(1) == yb).float().mean()} if classify else {}
            return State(loss_fn(out, yb), {c.key: c.violation(model) for c in self.named}, misc=misc)

        self.problem = Problem(compute, {c.key: Constraint(c.kind, formulation=config.formulation,
                                                           penalty=config.penalty)
                                         for c in self.named}).to(device)
        dual = (registry.build_optimizer(config.dual_optimizer, self.problem.dual_parameters(),
                                         lr=config.dual_lr) if config.has_multipliers else None)
        self.multipliers = [c for c in self.named if config.has_multipliers]
        # the loop detects non-finite losses itself (divergence), without a sync every step
        self.optimizer = ConstrainedOptimizer(self.problem, optimizer, dual, check_finite=False)
        self.pending: list[torch.Tensor] = []

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        r = self.optimizer.step(xb, yb)
        values = [r.violations[c.key].reshape(()) for c in self.named]
        values += [r.multipliers[c.key].reshape(()) for c in self.multipliers]
        if "accuracy" in r.misc:
            values.append(r.misc["accuracy"])
        self.pending.append(torch.stack(values).detach())
        return r.loss

    def annotate(self, rows: list[dict], last_step: int) -> None:
        """Add the violations, multipliers and batch accuracy of the steps since the last call (up to
        ``last_step``) to those of ``rows`` (train_log rows of these steps)."""
        values = torch.stack(self.pending).tolist() if self.pending else []
        first, n, m = last_step - len(values) + 1, len(self.named), len(self.multipliers)
        for row in rows:
            v = values[row["step"] - first]
            for j, c in enumerate(self.named):
                row[f"violation_{c.key}"] = v[j]
            for j, c in enumerate(self.multipliers):
                row[f"multiplier_{c.key}"] = v[n + j]
            if len(v) > n + m:
                row["accuracy"] = v[n + m]
        self.pending.clear()

    @torch.no_grad()
    def now(self) -> dict:
        """The violations (exact, at the current parameters) and multipliers, for an evaluation row."""
        row = {f"violation_{c.key}": float(c.violation(self.model)) for c in self.named}
        for c in self.multipliers:
            row[f"multiplier_{c.key}"] = float(self.problem.constraints[c.key].multiplier.value())
        return row


def check_batch_size(batch_size: int, data: Dataset) -> None:
    if batch_size > data.num_train:
        raise OptimlabError(
            f"batch size {batch_size} is larger than the training set ({data.num_train} samples of "
            f"{data.name}); use at most {data.num_train}"
        )


def total_steps(config: TrainConfig, per_epoch: int) -> int:
    """The run's budget in steps."""
    return config.iterations if config.iterations is not None else config.epochs * per_epoch


def load_data(config: TrainConfig, data: object, data_dir, device) -> Dataset:
    """The run's data on ``device``: ``data`` (a Dataset or the four tensors) when given, else
    ``config.dataset`` (a name, a loader's import path, a loader or the data themselves)."""
    if data is None:
        return registry.load_data(config.dataset, config.dataset_options, device=device,
                                  normalize=config.normalize, data_dir=data_dir)
    return registry.as_dataset(data, "tensors").to(device)


def init_model(config: TrainConfig, data: Dataset) -> nn.Module:
    """The model of ``config``, initialized after ``torch.manual_seed(config.seed)`` (on the CPU),
    leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return registry.build_model(config.model, data.input_shape, data.num_classes, data.task,
                           **config.model_options)


def _folder_writer(out: Path, also: Callable | None) -> Callable[[dict, RunResult], None]:
    def write(ckpt: dict, result: RunResult) -> None:
        atomic_save(ckpt, out / CHECKPOINT)
        _write_metrics(out, result)
        if also is not None:
            also(ckpt, result)

    return write


def evaluated_at(state: RunProgress, step: int) -> bool:
    """Whether the run's last evaluation row is at ``step``."""
    return bool(state.evals) and state.evals[-1]["step"] == step


def _flush(pending: list[torch.Tensor], state: RunProgress, log_every: int, per_epoch: int,
           lr: float) -> float:
    """Look at the batch losses since the last look (one device sync): log, detect divergence.

    Returns the last batch loss. On a non-finite loss, marks the run diverged at its step.
    """
    values = torch.stack(pending).tolist()
    pending.clear()
    return record_losses(values, state, log_every, per_epoch, lr)


def record_losses(values: list[float], state: RunProgress, log_every: int, per_epoch: int,
                  lr: float) -> float:
    """Record the batch losses of the last ``len(values)`` steps (up to ``state.step``) as
    :func:`train` does: a train_log row every ``log_every`` steps; at the first non-finite loss the
    run is marked diverged at its step. Returns the last loss looked at."""
    first = state.step - len(values) + 1
    for offset, value in enumerate(values):
        s = first + offset
        if not math.isfinite(value):
            state.status, state.diverged_at, state.step = "diverged", s, s
            return value
        if s % log_every == 0:
            state.train_log.append({"step": s, "epoch": round(s / per_epoch, 6), "loss": value,
                                    "lr": lr})
    return values[-1]


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


def _restore(ckpt: dict, config: TrainConfig, model, optimizer, order, state: RunProgress) -> None:
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise OptimlabError(f"not a checkpoint of one run (format {ckpt.get('format')!r})")
    details = config_differences(ckpt["config"], config)
    if details:
        raise OptimlabError(
            f"the checkpoint belongs to a different run ({details}). Use another --out folder, or resume "
            "with the same settings (only the budget and the device may change)."
        )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    state.load(ckpt["progress"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    device = resolve_device(config.device)
    if "cuda" in ckpt["rng"] and device.type == "cuda":  # dropout's masks on the GPU
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    order.set_state(ckpt["rng"]["epoch_start"])  # the loop skips the batches of it already done
    if state.status == "completed":
        state.status = "running"  # a larger budget continues it; an equal one ends at once


def run_result(config: TrainConfig, state: RunProgress, device, model) -> RunResult:
    return RunResult(config=config, status=state.status, steps=state.step,
                     diverged_at=state.diverged_at, evals=list(state.evals),
                     train_log=list(state.train_log), wall_time=state.wall_time,
                     device=str(device), model=model)


def _write_metrics(out: Path, result: RunResult) -> None:
    """metrics.json (everything) and evals.csv / train_log.csv (one row per record)."""
    atomic_write_text(out / "metrics.json", json.dumps(result.to_dict(), indent=1))
    for name, rows in (("evals.csv", result.evals), ("train_log.csv", result.train_log)):
        if rows:
            cols = list(rows[0])
            lines = [",".join(cols)] + [
                ",".join("" if r[c] is None else repr(r[c]) for c in cols) for r in rows
            ]
            atomic_write_text(out / name, "\n".join(lines) + "\n")


def progress_bar(total: int, initial: int, enabled: bool):
    """A tqdm bar over the run's steps (disabled: a no-op)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="it", dynamic_ncols=True,
                leave=False)
