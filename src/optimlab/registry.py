"""Names, import paths and objects -> entries: the one door through which optimlab's own names, the
names of installed plugins and the user's own code reach the engine.

Wherever a name is accepted (Python, study files, ``optimlab train``) so is an import path
``package.module:attribute`` (a class or a factory), and in Python the object itself:

* **optimizers**: a name (``adam``, ``adam(betas=(0.9, 0.99))``), an import path with options
  (``mypkg.optim:Lion(betas=(0.9, 0.99))``), a table ``{"name": "prodigy", "class":
  "prodigyopt:Prodigy", "lr_linear": False, "options": {...}, "default_lr": 1.0}``, a
  :class:`~optimlab.optimizers.OptimizerEntry`, or a class / factory ``f(params, lr=..., **options)``.
  Only entries that declare it are taken to be lr-linear; a user's declaration is checked by a probe
  (:func:`probe_stacking`) and refused with the measured difference when it fails.
* **models**: a name, an import path, a class or factory (called with its options, and with
  ``input_shape`` / ``num_classes`` when it names them), or an ``nn.Module`` (copied: every run starts
  from its parameters).
* **data sets**: a catalogue name (``mnist-10k:0,1``), an import path of a loader returning a
  :class:`~optimlab.data.Dataset` or the four tensors ``(x_train, y_train, x_test, y_test)``, or
  either of those objects.
* **tasks**: ``classification``, ``regression``, or a loss ``loss(output, y)`` (the batch mean), as an
  import path or a callable.

Installed packages add names through the entry-point group ``optimlab.plugins``: each entry point is
a function ``register(registrar)`` that calls :class:`Registrar`'s methods. A plugin that fails to
import is a warning naming its package; everything else goes on.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from optimlab.baselines import BASELINES
from optimlab.constrained.named import NamedConstraint, add_measure
from optimlab.constrained.named import parse_constraint as parse_named
from optimlab.data import Dataset, load_dataset
from optimlab.data.catalogue import CATALOGUE, SYNTHETIC
from optimlab.errors import OptimlabError
from optimlab.imports import describe, import_object, import_path_of, is_import_path, portable  # noqa: F401
from optimlab.models import MODELS, ModelEntry
from optimlab.optimizers import LOCAL_FLOW, OPTIMIZERS, OptimizerEntry, OptimizerSpec, check_lr
from optimlab.tasks import TASKS, Task

PLUGIN_GROUP = "optimlab.plugins"
OPTIMIZER_TABLE_KEYS = ("name", "class", "lr_linear", "options", "default_lr")


# ---------------------------------------------------------------------------------------- plugins

@dataclass
class Registrar:
    """What a plugin's ``register(registrar)`` adds names to (``source``: its distribution)."""

    source: str = "plugin"
    optimizers: dict[str, OptimizerEntry] = field(default_factory=dict)
    models: dict[str, ModelEntry] = field(default_factory=dict)
    datasets: dict[str, Callable[..., object]] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    measures: dict[str, Callable[[nn.Module], torch.Tensor]] = field(default_factory=dict)

    def optimizer(self, name: str, factory: Callable, *, lr_linear: bool = False, elementwise: bool = False,
                  default_lr: float | None = None, fixed: dict | None = None) -> None:
        """Add an optimizer name (declare ``lr_linear`` / ``elementwise`` only when they hold)."""
        self.optimizers[name] = OptimizerEntry(name, factory, dict(fixed or {}), lr_linear=lr_linear,
                                               elementwise=elementwise, default_lr=default_lr,
                                               source=self.source)

    def model(self, name: str, factory: Callable, *, task: str | None = None) -> None:
        self.models[name] = ModelEntry(name, factory, task, source=self.source)

    def dataset(self, name: str, loader: Callable[..., object]) -> None:
        """Add a data set name: ``loader(**options)`` returns a Dataset or the four tensors."""
        self.datasets[name] = loader

    def measure(self, name: str, measure: Callable[[nn.Module], torch.Tensor]) -> None:
        """Add a constraint measure: ``constraints = ["NAME<=1"]`` is ``measure(model) - 1 <= 0``."""
        self.measures[name] = measure

    def task(self, name: str, loss: Callable, *, kind: str = "classification") -> None:
        self.tasks[name] = Task.from_loss(loss, kind, name=name)


@functools.lru_cache(maxsize=1)
def plugins() -> Registrar:
    """Every name the installed plugins add (loaded once; a failing plugin is a warning)."""
    from importlib.metadata import entry_points

    found = Registrar()
    for ep in entry_points(group=PLUGIN_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value
        mine = Registrar(source=f"plugin {dist}")
        try:
            register = ep.load()
            register(mine)
        except Exception as e:  # a broken plugin must not break optimlab
            warnings.warn(f"optimlab plugin {ep.name!r} of package {dist!r} failed to load "
                          f"({type(e).__name__}: {e}); its names are not available", stacklevel=2)
            continue
        for kind in ("optimizers", "models", "datasets", "tasks", "measures"):
            getattr(found, kind).update(getattr(mine, kind))
    for name, measure in found.measures.items():
        add_measure(name, measure)
    return found


def reload_plugins() -> None:
    """Forget the plugins loaded so far (after installing one in a running process)."""
    from optimlab.constrained import named

    named.ADDED.clear()
    plugins.cache_clear()


# ------------------------------------------------------------------------------------- optimizers

def optimizer_entries() -> dict[str, OptimizerEntry]:
    """Every optimizer name: torch.optim's, the baselines' (:mod:`optimlab.baselines`), then the
    plugins' (built-in names win)."""
    return {**plugins().optimizers, **OPTIMIZERS, **BASELINES}


def optimizer_names() -> list[str]:
    return list(optimizer_entries()) + list(LOCAL_FLOW)


@dataclass(frozen=True)
class ResolvedOptimizer:
    """An optimizer reference made concrete: its entry, its options, its label in records."""

    entry: OptimizerEntry
    options: dict
    label: str

    def build(self, params, lr: float | None = None, **overrides) -> torch.optim.Optimizer:
        return self.entry.build(params, lr=lr, label=self.label, **{**self.options, **overrides})

    def default_lr(self) -> float:
        return self.entry.lr()

    def why_not_stacked(self) -> str | None:
        return self.entry.why_not_stacked(self.label)


def resolve_optimizer(ref: object) -> ResolvedOptimizer:
    """The entry behind any optimizer reference (see the module docstring); local-flow names are
    not entries (the training loop builds them) and are refused here."""
    if isinstance(ref, OptimizerEntry):
        return ResolvedOptimizer(_probed(ref), {}, ref.name)
    if isinstance(ref, dict):
        return _from_table(ref)
    if isinstance(ref, str | OptimizerSpec):
        spec = ref if isinstance(ref, OptimizerSpec) else OptimizerSpec.parse(ref)
        if spec.name in LOCAL_FLOW:
            raise OptimlabError(
                f"{spec.name} is an optimizer of the local problem: it needs the model and the "
                "batch, and is built by the training loop, not from parameters alone")
        if spec.is_import_path:
            entry = _entry_of_object(import_object(spec.name, "optimizer"), spec.name)
        else:
            entries = optimizer_entries()
            if spec.name not in entries:
                raise OptimlabError(
                    f"unknown optimizer {spec.name!r}; valid: {', '.join(optimizer_names())}, "
                    "or an import path package.module:Class")
            entry = entries[spec.name]
        entry.check_options(spec.options, str(spec))
        return ResolvedOptimizer(_probed(entry, spec.options), dict(spec.options), str(spec))
    if callable(ref):
        path = import_path_of(ref)
        return ResolvedOptimizer(_entry_of_object(ref, path or describe(ref)), {}, path or describe(ref))
    raise OptimlabError(f"an optimizer is a name like 'adam', an import path package.module:Class, a table "
                        f"with name and class, or a torch.optim.Optimizer class or factory; got {ref!r}")


def _entry_of_object(obj: object, label: str) -> OptimizerEntry:
    """A class or factory of the user's: the built-in entry when it is one of those classes as is."""
    if not callable(obj):
        raise OptimlabError(f"optimizer {label!r} is {type(obj).__name__}, not a class or a factory")
    for entry in OPTIMIZERS.values():
        if entry.factory is obj and not entry.fixed:
            return entry
    if inspect.isclass(obj) and not issubclass(obj, torch.optim.Optimizer):
        raise OptimlabError(f"optimizer {label!r} is the class {obj.__name__}, not a torch.optim.Optimizer")
    return OptimizerEntry(label, obj, source="user")


def _from_table(table: dict) -> ResolvedOptimizer:
    unknown = sorted(set(table) - set(OPTIMIZER_TABLE_KEYS))
    if unknown or "name" not in table:
        raise OptimlabError(
            f"an optimizer table takes {', '.join(OPTIMIZER_TABLE_KEYS)} (name required); got "
            f"{sorted(table)}")
    name, options = table["name"], table.get("options", {})
    if not isinstance(name, str) or not name.strip():
        raise OptimlabError(f"an optimizer table's name must be a non-empty string; got {name!r}")
    if not isinstance(options, dict):
        raise OptimlabError(
            f"optimizer {name!r}: options must be a table of hyperparameters; got {options!r}")
    lr_linear = table.get("lr_linear", False)
    if not isinstance(lr_linear, bool):
        raise OptimlabError(f"optimizer {name!r}: lr_linear must be true or false; got {lr_linear!r}")
    default = table.get("default_lr")
    if default is not None:
        default = check_lr(default)
    if "class" not in table:  # a built-in or plugin name under a label of the user's
        if lr_linear or default is not None:
            raise OptimlabError(
                f"optimizer {name!r}: lr_linear and default_lr describe a class; give class too")
        inner = resolve_optimizer(name)
        inner.entry.check_options(options, name)
        merged = {**inner.options, **options}
        return ResolvedOptimizer(_probed(inner.entry, merged), merged, name)
    path = table["class"]
    if isinstance(path, str):
        if not is_import_path(path):
            raise OptimlabError(f"optimizer {name!r}: class must be an import path package.module:Class; "
                                f"got {path!r}")
        base = _entry_of_object(import_object(path, f"optimizer {name!r}: class"), path)
    else:  # in Python: the class or factory itself
        base = _entry_of_object(path, import_path_of(path) or describe(path))
        path = base.name
    entry = OptimizerEntry(name, base.factory, dict(base.fixed), lr_linear=lr_linear or base.lr_linear,
                           elementwise=lr_linear or base.elementwise,
                           default_lr=default if default is not None else base.default_lr, source=path)
    entry.check_options(options, name)
    return ResolvedOptimizer(_probed(entry, options), dict(options), name)


def _probed(entry: OptimizerEntry, options: dict | None = None) -> OptimizerEntry:
    """A user's entry that declares lr-linearity, checked by :func:`probe_stacking`."""
    if any(entry is e for e in OPTIMIZERS.values()) or not entry.stackable:
        return entry
    problem = _probe_once(entry, options or {})
    if problem and entry is BASELINES.get(entry.name):
        # a baseline's declaration holds at its defaults; some options break it (Lion's decoupled
        # weight decay divides by the initial lr): those runs are trained one by one
        return dataclasses.replace(entry, lr_linear=False, elementwise=False)
    if problem and entry.source.startswith("plugin"):  # not the user's declaration: the plugin's to fix
        raise OptimlabError(
            f"optimizer {entry.name!r} is declared lr_linear by {entry.source}, but {problem}; the "
            "plugin must not declare it (meanwhile, name its class in an optimizer table without "
            "lr_linear: its runs are then trained one by one)")
    if problem:
        raise OptimlabError(f"optimizer {entry.name!r} is declared lr_linear, but {problem}; remove "
                            "lr_linear = true (its runs are then trained one by one)")
    return entry


_PROBED: dict[tuple, str | None] = {}  # (factory, fixed and options) -> the probe's verdict


def _probe_once(entry: OptimizerEntry, options: dict) -> str | None:
    """:func:`probe_stacking`, once a process for each factory and options (a study resolves the
    same optimizer for every run, the planner and every build)."""
    key = (entry.factory, repr(sorted({**entry.fixed, **options}.items())))  # the object: no id reuse
    try:
        hash(key)
    except TypeError:  # an unhashable factory: probed every time
        return probe_stacking(entry, options)
    if key not in _PROBED:
        _PROBED[key] = probe_stacking(entry, options)
    return _PROBED[key]


def probe_stacking(entry: OptimizerEntry, options: dict, steps: int = 2) -> str | None:
    """Check cheaply what the vectorized engine assumes of ``entry``; None when it holds, else what
    was measured.

    On a tiny float64 problem (a 4x3 matrix and a 3-vector), with the same gradients for all:
    lr-linearity -- from the same point and state, each step at lr 0.1, 1e-7 and 3 moves by lr times
    the same u (relative difference <= 1e-6), the state left as at lr 0.1 -- and entry-by-entry
    action -- one tensor stacked from two parameters steps as the two do alone.
    """
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (3,)]
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(steps)]
    lrs = (0.1, 1e-7, 3.0)  # 1e-7 meets Rprop's lower clamp, 3 ASGD's and Adafactor's nonlinearity
    try:
        runs = []
        for lr in lrs:
            params = [nn.Parameter(p.clone()) for p in start]
            runs.append((params, entry.factory(params, lr=lr, **{**entry.fixed, **options})))
        for g in grads:
            point = [p.detach().clone() for p in runs[0][0]]
            moves = []
            for lr, (params, opt) in zip(lrs, runs, strict=True):
                with torch.no_grad():
                    for p, q in zip(params, point, strict=True):
                        p.copy_(q)  # every run steps from the same point
                for p, gi in zip(params, g, strict=True):
                    p.grad = gi.clone()
                opt.step()
                moves.append([(p.detach() - q) / lr for p, q in zip(params, point, strict=True)])
            for lr, move in zip(lrs[1:], moves[1:], strict=True):
                scale = max(float(m.abs().max()) for m in moves[0]) or 1.0
                worst = max(float((a - b).abs().max()) for a, b in zip(move, moves[0], strict=True)) / scale
                if worst > 1e-6:  # rounding: ~1e-16 / 1e-7 relative at lr 1e-7
                    return (f"its step at lr {lr:g} is not {lr:g}/{lrs[0]:g} times its step at lr {lrs[0]:g} "
                            f"(relative difference {worst:.3g})")
        # entry by entry: a (2, 4, 3) stack against its two slices alone
        pair = [nn.Parameter(torch.randn(4, 3, generator=gen, dtype=torch.float64)) for _ in range(2)]
        stack = nn.Parameter(torch.stack([p.detach() for p in pair]))
        alone = [entry.factory([p], lr=0.1, **{**entry.fixed, **options}) for p in pair]
        together = entry.factory([stack], lr=0.1, **{**entry.fixed, **options})
        for _ in range(steps):
            g = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
            for i, (p, opt) in enumerate(zip(pair, alone, strict=True)):
                p.grad = g[i].clone()
                opt.step()
            stack.grad = g.clone()
            together.step()
        worst = max(float((stack.detach()[i] - p.detach()).abs().max()) for i, p in enumerate(pair))
        if worst > 1e-12:
            return (f"a tensor stacked from two parameters does not step as the two alone (largest "
                    f"difference {worst:.3g}): it does not act entry by entry")
    except Exception as e:
        return f"the probe could not step it ({type(e).__name__}: {e})"
    return None


def build_optimizer(ref: object, params, lr: float | None = None, **overrides) -> torch.optim.Optimizer:
    """Any optimizer reference, built over ``params`` at ``lr`` (None: its default)."""
    return resolve_optimizer(ref).build(params, lr=lr, **overrides)


def optimizer_record(ref: object) -> object:
    """What a run's settings hold for ``ref``: a normalized spec string, a table, or (no import
    path) the object itself, which only this process can use."""
    if isinstance(ref, str):
        spec = OptimizerSpec.parse(ref)
        if spec.name not in LOCAL_FLOW:
            defaults = resolve_optimizer(spec).entry.hyperparameters()
            # adam(betas=(0.9, 0.999)) is adam: options at their defaults are left out
            spec = OptimizerSpec(spec.name, {k: v for k, v in spec.options.items()
                                             if k not in defaults or _as_tuple(defaults[k]) != _as_tuple(v)})
        return str(spec)
    if isinstance(ref, OptimizerSpec):
        return optimizer_record(str(ref))
    if isinstance(ref, dict):
        resolved = _from_table(ref)
        table = {k: ref[k] for k in OPTIMIZER_TABLE_KEYS if k in ref} | {"name": resolved.label}
        if "class" in table and not isinstance(table["class"], str):  # an object: by its path if it has one
            table["class"] = import_path_of(table["class"]) or table["class"]
        return table
    if isinstance(ref, OptimizerEntry):
        path = import_path_of(ref.factory)
        if path is None:
            return ref
        table = {"name": ref.name, "class": path, "lr_linear": ref.lr_linear}
        if ref.fixed:
            table["options"] = dict(ref.fixed)
        if ref.default_lr is not None:
            table["default_lr"] = ref.default_lr
        return optimizer_record(table)
    resolved = resolve_optimizer(ref)
    if resolved.entry.name in OPTIMIZERS and resolved.entry is OPTIMIZERS[resolved.entry.name]:
        return resolved.entry.name  # torch.optim.Adam -> "adam"
    path = import_path_of(ref)
    return path if path is not None else ref


def _as_tuple(value: object) -> object:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def optimizer_label(ref: object) -> str:
    """How an optimizer is named in records, lines and reports."""
    if isinstance(ref, str):
        return str(OptimizerSpec.parse(ref))
    if isinstance(ref, dict):
        return str(ref.get("name"))
    if isinstance(ref, OptimizerEntry):
        return ref.name
    return import_path_of(ref) or describe(ref)


# ----------------------------------------------------------------------------------------- models

def model_names() -> list[str]:
    return list({**plugins().models, **MODELS})


def resolve_model(ref: object) -> ModelEntry:
    """The entry behind a model reference: a name, an import path, a class or factory, a module."""
    if isinstance(ref, ModelEntry):
        return ref
    if isinstance(ref, str):
        if is_import_path(ref):
            return resolve_model_object(import_object(ref, "model"), ref.strip())
        models = {**plugins().models, **MODELS}
        if ref not in models:
            raise OptimlabError(f"unknown model {ref!r}; valid: {', '.join(models)}, or an import path "
                                "package.module:Class")
        return models[ref]
    return resolve_model_object(ref, import_path_of(ref) or describe(ref))


def resolve_model_object(obj: object, label: str) -> ModelEntry:
    if isinstance(obj, nn.Module):
        template = copy.deepcopy(obj)

        def copy_of(**_ignored) -> nn.Module:  # an instance: every run starts from its parameters
            return copy.deepcopy(template)

        return ModelEntry(label, copy_of, source="user")
    if not callable(obj):
        raise OptimlabError(
            f"model {label!r} is {type(obj).__name__}, not an nn.Module, a class or a factory")
    return ModelEntry(label, obj, source="user")


def model_record(ref: object) -> object:
    """What a run's settings hold for a model: its name or import path, else the object itself."""
    if isinstance(ref, str):
        resolve_model(ref)
        return ref.strip()
    if not isinstance(ref, nn.Module):  # a class, factory or entry, else refused here (not at train)
        resolve_model(ref)
    return import_path_of(ref) or ref


def build_model(ref: object, input_shape: tuple[int, ...], num_classes: int = 0,
                task: str = "classification", **options) -> nn.Module:
    """A fresh model from any model reference (from the global RNG: seed first)."""
    if isinstance(ref, str) and ref in MODELS:
        from optimlab.models import build_model as built_in

        return built_in(ref, input_shape, num_classes, task, **options)
    return resolve_model(ref).build(input_shape, num_classes, task, **options)


# --------------------------------------------------------------------------------------- datasets

def is_dataset_path(ref: object) -> bool:
    """An import path, not a catalogue name with options (``mnist-10k:0,1``, ``lls:n=100``)."""
    return is_import_path(ref) and ref.partition(":")[0] not in {*CATALOGUE, *SYNTHETIC}


def load_data(ref: object, options: dict | None = None, device: str | torch.device = "cpu",
              normalize: bool = True, data_dir: str | None = None) -> Dataset:
    """A data set from a catalogue or plugin name, a loader's import path (called with ``options``),
    a loader, a :class:`Dataset` or the four tensors ``(x_train, y_train, x_test, y_test)``."""
    options = dict(options or {})
    if isinstance(ref, str):
        loaders = plugins().datasets
        if is_dataset_path(ref):
            return _call_loader(import_object(ref, "dataset"), ref.strip(), options, device)
        if ref in loaders:
            return _call_loader(loaders[ref], ref, options, device)
        if options:
            raise OptimlabError(f"dataset_options are for a loader of your own; {ref!r} is a catalogue name "
                                "(options go after a colon, e.g. mnist-10k:0,1)")
        return load_dataset(ref, data_dir=data_dir, device=device, normalize=normalize)
    if isinstance(ref, Dataset | tuple | list):
        if options:
            raise OptimlabError("dataset_options are for a loader; the data were given as objects")
        return as_dataset(ref, "tensors").to(device)
    if callable(ref):
        return _call_loader(ref, import_path_of(ref) or describe(ref), options, device)
    raise OptimlabError(f"a data set is a name, an import path of a loader, a Dataset or the four tensors "
                        f"(x_train, y_train, x_test, y_test); got {type(ref).__name__}")


def _call_loader(loader: Callable, label: str, options: dict, device) -> Dataset:
    if not callable(loader):
        raise OptimlabError(f"dataset {label!r} is {type(loader).__name__}, not a loader function")
    try:
        inspect.signature(loader).bind(**options)
    except TypeError as e:
        raise OptimlabError(f"dataset {label!r}: its loader does not take these options "
                            f"({', '.join(options) or 'none'}): {e}") from None
    except ValueError:
        pass  # no signature to check: let the call say
    try:
        out = loader(**options)
    except OptimlabError:
        raise
    except Exception as e:
        raise OptimlabError(f"dataset {label!r}: its loader raised {type(e).__name__}: {e}") from None
    return as_dataset(out, label).to(device)


def as_dataset(obj: object, name: str) -> Dataset:
    """A :class:`Dataset` from one, or from ``(x_train, y_train, x_test, y_test)`` (tensors or arrays):
    int64 labels make a classification set with classes 0..max, float targets a regression set."""
    if isinstance(obj, Dataset):
        return obj
    if not isinstance(obj, tuple | list) or len(obj) != 4:
        raise OptimlabError(
            f"dataset {name!r}: a loader returns a Dataset or the four tensors (x_train, y_train, "
            f"x_test, y_test); got {type(obj).__name__}"
                            + (f" of {len(obj)}" if isinstance(obj, tuple | list) else ""))
    try:
        xtr, ytr, xte, yte = (torch.as_tensor(t) for t in obj)
    except (TypeError, ValueError, RuntimeError) as e:
        raise OptimlabError(f"dataset {name!r}: the four values must be tensors or arrays ({e})") from None
    for label, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        if x.shape[0] != y.shape[0] or y.dim() != 1:
            raise OptimlabError(
                f"dataset {name!r}: x_{label} has {x.shape[0]} samples but y_{label} has shape "
                f"{tuple(y.shape)}; y must be one value per sample")
    if xtr.shape[1:] != xte.shape[1:]:
        raise OptimlabError(f"dataset {name!r}: x_train samples have shape {tuple(xtr.shape[1:])}, x_test "
                            f"samples {tuple(xte.shape[1:])}")
    if not (xtr.is_floating_point() and xte.is_floating_point()):
        raise OptimlabError(
            f"dataset {name!r}: x_train and x_test must be floating point; got {xtr.dtype} and "
            f"{xte.dtype}")
    if ytr.dtype != yte.dtype:
        raise OptimlabError(f"dataset {name!r}: y_train is {ytr.dtype} but y_test is {yte.dtype}")
    if ytr.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        ytr, yte = ytr.long(), yte.long()
        if min(int(ytr.min()), int(yte.min())) < 0:
            raise OptimlabError(f"dataset {name!r}: class labels must be >= 0")
        classes = tuple(str(c) for c in range(int(max(ytr.max(), yte.max())) + 1))
        task = "classification"
    elif ytr.is_floating_point():
        classes, task = (), "regression"
        ytr, yte = ytr.float(), yte.float()
    else:
        raise OptimlabError(
            f"dataset {name!r}: y must be integer class labels or float targets; got {ytr.dtype}")
    return Dataset(name=name, x_train=xtr.float(), y_train=ytr, x_test=xte.float(), y_test=yte, task=task,
                   classes=classes, source=name)


def dataset_record(ref: object) -> object:
    if isinstance(ref, str):
        return ref.strip()
    return import_path_of(ref) or ref


# ------------------------------------------------------------------------------------ constraints

def parse_constraint(text: str) -> NamedConstraint:
    """``"l2norm<=1"``, ``"mypkg.measures:spectral<=1"`` or a plugin's measure (loaded first)."""
    plugins()
    return parse_named(text)


# ------------------------------------------------------------------------------------------ tasks

def resolve_task(ref: object, data_kind: str) -> Task:
    """The task of a run on data of ``data_kind``: None (the data's own: classification or
    regression), a task name, or a loss (an import path or a callable)."""
    if ref is None:
        return TASKS[data_kind]
    if isinstance(ref, Task):
        return ref
    if isinstance(ref, str):
        tasks = {**plugins().tasks, **TASKS}
        if ref in tasks:
            task = tasks[ref]
        elif is_import_path(ref):
            loss = import_object(ref, "loss")
            if not callable(loss):
                raise OptimlabError(f"loss {ref.strip()!r} is {type(loss).__name__}, not a function "
                                    "loss(output, y) returning the batch mean")
            task = Task.from_loss(loss, data_kind, name=ref.strip())
        else:
            raise OptimlabError(f"unknown loss {ref!r}; valid: {', '.join(tasks)}, or an import path "
                                "package.module:function of a loss(output, y)")
    elif callable(ref):
        task = Task.from_loss(ref, data_kind, name=import_path_of(ref) or describe(ref))
    else:
        raise OptimlabError(
            f"a loss is a task name, an import path or a callable loss(output, y); got {ref!r}")
    if task.kind != data_kind:
        raise OptimlabError(
            f"loss {task.name!r} is for {task.kind}, but the data set is a {data_kind} problem")
    return task


def task_record(ref: object) -> object:
    if ref is None or isinstance(ref, str):
        return ref
    if not callable(ref) and not isinstance(ref, Task):
        resolve_task(ref, "classification")  # refuses it: not a loss
    return import_path_of(ref) or ref
