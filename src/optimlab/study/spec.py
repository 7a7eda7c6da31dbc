"""The study file: a TOML description of tasks x optimizers x learning rates x seeds, validated.

    name = "optimizers-mlp"
    dataset = "mnist-10k"
    model = "mlp"
    batch_size = 100
    iterations = 3000            # or: epochs = 20
    eval_every = 500             # optional; default: every epoch
    optimizers = ["sgd", "momentum", { name = "adam", learning_rates = [1e-3] }]
    learning_rates = [0.1]       # or: { from = 1e-5, to = 1e-1, count = 5 } (log-spaced)
    seeds = [0, 1, 2]
    constraints = ["l2norm<=1"]  # optional: a constrained study (a Lagrangian per run)
    dual_optimizer = "sgd"       # the multipliers' optimizer (default sgd)
    dual_learning_rates = [1e-3, 1e-2]  # a grid axis beside the primal lr (default [1e-3])
    formulation = "augmented_lagrangian"  # or lagrangian (default), quadratic_penalty
    penalty_coefficients = [1, 10]        # penalty formulations: a grid axis (default [1])

    [model_options]
    hidden = 100

Several tasks: ``[[tasks]]`` tables, each a ``name``, its task fields (:data:`TASK_SETTINGS`: data set,
model, batch size, budget, evaluation cadence, ...) and an optional ``target``; the study's own task
fields are every task's defaults, and ``suite = "fmnist_mlp"`` starts from a task of
:mod:`optimlab.study.suite` (the table's fields scale it; the store records what changed).

    [[tasks]]
    suite = "fmnist_mlp"
    iterations = 300

The user's own code: ``model = "mypkg.nets:SmallCNN"`` (with ``[model_options]``), ``dataset =
"mypkg.data:load"`` (a loader returning a Dataset or the four tensors, with ``[dataset_options]``),
``loss = "mypkg.losses:focal"``, an optimizer table ``{ name = "prodigy", class =
"prodigyopt:Prodigy", learning_rates = [1.0], lr_linear = false, options = { d_coef = 0.5 } }``, and
``python_path = ["src"]`` (folders relative to the study file, put on the Python path of this
process and of every worker and Ray task).

    [executor]
    kind = "vectorized"          # sequential | vectorized | processes | ray
    workers = 2                  # processes / ray (default: all CPUs of the machine / cluster)
    units = "groups"             # what one unit is: "groups" (vectorized and processes) or "runs"
    address = "auto"             # ray: a cluster address; default: a local Ray
    max_attempts = 2             # tries per unit when a worker dies
    stack = "auto"               # "always": stack what is exact even where measured slower (CNNs on a CPU)

Every error names the field, what was wrong and what is valid; a malformed file gives the line.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from optimlab.calls import format_call
from optimlab.engine.config import FORMULATIONS, TrainConfig
from optimlab.errors import OptimlabError
from optimlab.optimizers import LOCAL_FLOW, OptimizerEntry, OptimizerSpec, check_lr
from optimlab.registry import (
    OPTIMIZER_TABLE_KEYS,
    describe,
    is_import_path,
    optimizer_record,
)
from optimlab.schedules import Schedule
from optimlab.study import axes
from optimlab.study.suite import suite_task

EXECUTORS = ("sequential", "vectorized", "processes", "ray")
_NAME = re.compile(r"[A-Za-z0-9._ -]{1,100}")
UNITS = ("runs", "groups")
# fields of the study file -> what they are
FIELDS = {
    "name": "the study's name",
    "dataset": "a data set name (optimlab data list)",
    "model": "a model name (logreg, mlp, cnn, linear) or an import path package.module:Class",
    "model_options": "a table of model options, e.g. hidden = 100",
    "dataset_options": "a table of keyword arguments for a dataset loader of your own",
    "loss": "classification, regression, or an import path package.module:function of a loss(output, y)",
    "python_path": "folders (relative to the study file) holding your own code, e.g. ['src']",
    "batch_size": "an integer >= 1",
    "batch_sizes": "batch sizes as a grid axis, a list of integers >= 1 (instead of batch_size)",
    "epochs": "the budget in epochs",
    "iterations": "the budget in iterations",
    "eval_every": "evaluate every N iterations (default: every epoch)",
    "log_every": "record the training loss every K iterations (default 10)",
    "drop_last": "true or false",
    "normalize": "true or false",
    "eval_train": "true or false",
    "validation": "the validation set held out of the training set: a fraction in (0, 1) or a count "
                  "(default 0.1; 0 for none); best settings are chosen on it, test numbers reported",
    "device": "auto, cpu, cuda, cuda:N",
    "precision": "fp32 (default), bf16 or fp16: mixed precision of the forward passes, fp32 master weights",
    "compile": "true or false (default): torch.compile the model of runs trained one by one",
    "memory_format": "auto (default: measured), contiguous or channels_last: the layout of a convolutional "
                     "network's images in runs trained one by one (not part of the study's definition)",
    "optimizers": "a list of names, name(hyperparameters), import paths or {name, class, learning_rates, "
                  "options, lr_linear, default_lr} tables",
    "learning_rates": "a list of numbers > 0, or {from, to, count}",
    "hyperparameters": "optimizer hyperparameters as grid axes, a table of lists, e.g. { momentum = [0.9, "
                       "0.99] } (every optimizer must take each; an optimizer table may carry its own)",
    "schedules": "learning-rate schedules, a grid axis: a list like ['constant', 'cosine(warmup=0.05)', "
                 "'linear(warmup=100)', 'step(milestones=[0.5, 0.75], gamma=0.1)'] (default constant)",
    "seeds": "a list of integers >= 0",
    "constraints": "a list of constraints such as ['l2norm<=1'] (optimlab train --help)",
    "dual_optimizer": "the optimizer of the multipliers (default sgd); needs constraints",
    "dual_learning_rates": "the multipliers' learning rates, a list or {from, to, count} (default "
                           "[1e-3]); needs constraints",
    "formulation": "lagrangian (default), augmented_lagrangian or quadratic_penalty; needs constraints",
    "penalty_coefficients": "the penalty coefficients c, a list or {from, to, count} (default [1]); "
                            "needs a penalty formulation",
    "executor": "a table: kind, workers, units, address, max_attempts, stack",
    "target": "the convergence target on the validation set: an accuracy in (0, 1], or for a task "
              "without accuracy a loss (default: 95 % of the best mean final accuracy; a loss 1/0.95 times "
              "the best)",
    "rerun_best": "DeepOBS's second stage, a table { seeds = [1, 2, ...] }: once the grid is finished, "
                  "each optimizer's best learning rate (on validation, over the grid's seeds) is run with "
                  "these seeds too, and the report gives the chosen setting over all of them",
    "tasks": "[[tasks]] tables, each a task of the grid: name, suite (a task of optimlab's suite), target "
             "and the task fields (dataset, model, batch_size, epochs, ...); the study's own task fields "
             "are every task's defaults",
}
# what a [[tasks]] table takes
TASK_SETTINGS = ("dataset", "dataset_options", "model", "model_options", "loss", "batch_size", "epochs",
                 "iterations", "eval_every", "log_every", "drop_last", "normalize", "eval_train",
                 "validation")
TASK_FIELDS = ("name", "suite", "target", *TASK_SETTINGS)
_TASK_NAME = re.compile(r"[A-Za-z0-9._-]{1,60}")
# shared settings that stores written before them lack, with the value that means "not used"
LATER_SETTINGS = {"dataset_options": {}, "loss": None, "validation": None, "precision": "fp32",
                  "compile": False}
# shared settings that do not make another study (as the device does not): left out of its definition
HOW_NOT_WHAT = ("memory_format",)
# what a study takes where its file says nothing (a run of `optimlab train` takes the TrainConfig default)
STUDY_DEFAULTS = {"validation": 0.1}
# the fields that are the user's own code, by import path
CODE_FIELDS = ("model", "dataset", "loss")
EXECUTOR_FIELDS = ("kind", "workers", "units", "address", "max_attempts", "stack", "final_checkpoints")
STACK = ("auto", "always")
# settings shared by every run of the study (the rest of a run is optimizer, lr, seed, dual lr)
SHARED = ("dataset", "dataset_options", "model", "model_options", "loss", "batch_size", "epochs",
          "iterations", "eval_every", "log_every", "drop_last", "normalize", "eval_train", "constraints",
          "dual_optimizer", "formulation", "validation", "precision", "compile", "memory_format")
DEFAULT_DUAL_LR = TrainConfig.dual_lr


@dataclass(frozen=True)
class ExecutorSpec:
    kind: str = "vectorized"
    workers: int | None = None  # None: this machine's CPUs (processes), the cluster's (ray)
    units: str | None = None  # None: "groups" for vectorized and processes, "runs" otherwise
    address: str | None = None
    max_attempts: int = 2
    stack: str = "auto"  # vectorized: "always" stacks what is exact even where measured slower
    final_checkpoints: bool = True  # keep each finished unit's, for a larger budget to continue from

    @property
    def unit_kind(self) -> str:
        return self.units or ("groups" if self.kind in ("vectorized", "processes") else "runs")


@dataclass(frozen=True)
class StudySpec:
    """A validated study. ``grid``: its points (:mod:`optimlab.study.axes`: optimizer, lr, seed,
    dual_lr, penalty, schedule, batch_size, task), in file order (``optimizer``: a spec string, a
    table or an object); ``dual_lr`` is None without multipliers (no constraints, or the quadratic
    penalty), ``penalty`` None without a penalty formulation or coefficients. ``python_path``:
    absolute folders of the user's code.

    ``shared``: the settings every run has. A study of several tasks (``[[tasks]]``) has ``tasks``,
    task name -> that task's settings (data, model, budget, ...; the rest is ``shared``), and its
    points name their task; a study of one task has none (its points' task is None). ``targets``:
    task name (None: the one task) -> its convergence target, where one was given."""

    def as_written_before(self, old_shared: dict) -> tuple[StudySpec, list[str]]:
        """This study as a store written before some of its defaulted settings existed holds it:
        each setting the file leaves to its default and the store's definition lacks takes the value
        that means "not used" (the store's runs had none). Returns the spec and the settings so
        kept."""
        kept = [k for k in self.defaulted if k not in old_shared and self.shared[k] != LATER_SETTINGS[k]]
        if not kept:
            return self, []
        shared = {**self.shared, **{k: LATER_SETTINGS[k] for k in kept}}
        return dataclasses.replace(self, shared=shared), kept

    name: str
    shared: dict
    grid: tuple[axes.Point, ...]
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    device: str = "auto"
    text: str = ""
    python_path: tuple[str, ...] = ()
    defaulted: tuple[str, ...] = ()  # the STUDY_DEFAULTS the file did not set
    tasks: dict[str, dict] = field(default_factory=dict)
    targets: dict[str | None, float] = field(default_factory=dict)
    scaled: dict[str, dict] = field(default_factory=dict)  # suite task -> the fields the study changed
    rerun_seeds: tuple[int, ...] = ()  # [rerun_best] seeds: the best settings' second stage

    def settings(self, p: axes.Point) -> dict:
        """The settings of a run at point ``p`` besides its axes: ``shared``, and its task's."""
        return {**self.shared, **self.tasks[p["task"]]} if p.get("task") is not None else self.shared

    def config(self, p: axes.Point) -> TrainConfig:
        """The :class:`TrainConfig` of the run at point ``p`` (of the grid, or of its second stage)."""
        return TrainConfig(**self.settings(p), **axes.settings(p), device=self.device)

    def configs(self) -> list[TrainConfig]:
        """One :class:`TrainConfig` per run of the grid."""
        return [self.config(p) for p in self.grid]

    def definition(self) -> str:
        """What makes two study files the same study (not the executor, not the device). Runs are
        written without their trailing Nones: (optimizer, lr, seed) without constraints, as in
        stores of schema 1. A study of several tasks adds ``tasks``: name -> settings, target and,
        for a task of the suite scaled down, ``suite`` and ``scaled`` (the fields it changed); a
        study of one task with a target adds ``target``; one with ``[rerun_best]``, ``rerun_best``."""
        grid = [axes.serialized(p) for p in self.grid]
        # settings added after 0.1.0 are left out at their defaults: older stores keep their study
        shared = {k: v for k, v in self.shared.items() if k not in HOW_NOT_WHAT
                  and not (k in LATER_SETTINGS and v == LATER_SETTINGS[k])}
        out = {"name": self.name, "shared": shared, "grid": grid}
        if self.tasks:
            out["tasks"] = {name: {"settings": settings, "target": self.targets.get(name),
                                   **self.scaled.get(name, {})} for name, settings in self.tasks.items()}
        elif self.targets.get(None) is not None:
            out["target"] = self.targets[None]
        if self.rerun_seeds:
            out["rerun_best"] = {"seeds": list(self.rerun_seeds)}
        return json.dumps(out, sort_keys=True, default=describe)

    def import_paths(self) -> list[str]:
        """The user's code this study names, as import paths (model, dataset, loss, optimizer classes)."""
        paths = [v for settings in (self.shared, *self.tasks.values()) for k in CODE_FIELDS
                 if isinstance(v := settings.get(k), str) and is_import_path(v)]
        for o in (p["optimizer"] for p in self.grid):
            if isinstance(o, dict) and isinstance(o.get("class"), str):
                paths.append(o["class"])
            elif isinstance(o, str) and ":" in OptimizerSpec.parse(o).name:
                paths.append(OptimizerSpec.parse(o).name)
        return list(dict.fromkeys(paths))


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> StudySpec:
    """Read and validate a study file, with ``overrides`` (``key=value``, :mod:`optimlab.study.overrides`)
    set over its fields."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise OptimlabError(f"cannot read the study file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise OptimlabError(f"{path} is not a study file: not UTF-8 text (byte {e.start}); a study file is "
                            "TOML") from None
    return parse_study(text, str(path), base=path.resolve().parent, overrides=overrides)


def parse_study(text: str, source: str = "<study>", base: str | Path | None = None,
                overrides: Sequence[str] = ()) -> StudySpec:
    """Validate a study file's text, with ``overrides`` set over its fields; ``base``: the folder
    ``python_path`` is relative to (default: the working directory)."""
    from optimlab.study.overrides import apply_overrides, recorded

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise OptimlabError(f"{source}: malformed TOML: {e}") from None
    if overrides:
        doc = apply_overrides(doc, overrides, list(FIELDS), source)
    return _from_fields(doc, source, base, recorded(text, overrides))


def build_study(**fields) -> StudySpec:
    """A study from Python: the study file's fields as keyword arguments, where ``model``,
    ``dataset``, ``loss`` and each optimizer may also be objects (a class or factory, an
    ``nn.Module``, a loader, a Dataset or the four tensors, a loss callable, an optimizer class,
    factory or :class:`~optimlab.optimizers.OptimizerEntry`). Objects without an import path
    (lambdas, closures, instances, ``__main__``'s) run on the sequential and vectorized executors only.

        spec = build_study(name="mine", model=SmallCNN, dataset=(x_train, y_train, x_test, y_test),
                           optimizers=["sgd", torch.optim.Adam], learning_rates=[0.1, 0.01],
                           seeds=[0, 1], batch_size=64, epochs=2)
        run_study(spec, executor="vectorized")
    """
    executor = fields.get("executor", {})
    if isinstance(executor, ExecutorSpec):
        fields = {**fields, "executor": {k: v for k, v in vars(executor).items()
                                         if v != getattr(ExecutorSpec(), k)}}
    return _from_fields(fields, "build_study", None, "")


def _from_fields(doc: dict, source: str, base: str | Path | None, text: str) -> StudySpec:
    def fail(message: str) -> OptimlabError:
        return OptimlabError(f"{source}: {message}")

    python_path = _python_path(doc.get("python_path", []), Path(base or "."), fail)
    add_to_python_path(python_path)

    unknown = sorted(set(doc) - set(FIELDS))
    if unknown:
        raise fail(f"unknown field {', '.join(map(repr, unknown))}; valid fields: {', '.join(FIELDS)}")
    for required in ("name", "dataset", "model", "optimizers", "learning_rates", "seeds"):
        if required in ("dataset", "model") and "tasks" in doc:
            continue  # each task's, checked with the tasks
        if required not in doc:
            raise fail(f"missing field {required!r} ({FIELDS[required]})")
    name = doc["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name.strip()) or name.strip() in (".", ".."):
        raise fail(f"name must be 1 to 100 letters, digits, '.', '_', '-' or spaces (it names the folder "
                   f"runs/NAME), not '.' or '..'; got {name!r}")
    default_lrs = _learning_rates(doc["learning_rates"], "learning_rates", fail)
    seeds = doc["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds
    ):
        raise fail(f"seeds must be a non-empty list of integers >= 0; got {seeds!r}")
    optimizers = doc["optimizers"]
    if not isinstance(optimizers, list) or not optimizers:
        raise fail(f"optimizers must be a non-empty list ({FIELDS['optimizers']}); got {optimizers!r}")
    dual_lrs, penalties = _constraint_axes(doc, fail)
    schedules = _schedules(doc.get("schedules", ["constant"]), fail)
    batch_sizes = _batch_sizes(doc, fail)
    tasks = _tasks(doc, batch_sizes != [None], fail) if "tasks" in doc else None
    shared_axes = _hyperparameter_axes(doc.get("hyperparameters", {}), "hyperparameters", fail)
    entries = []  # (optimizer, its learning rates)
    for i, entry in enumerate(_with_hyperparameters(optimizers, shared_axes, fail)):
        where = f"optimizers[{i}]"
        lrs = default_lrs
        if isinstance(entry, dict):
            extra = sorted(set(entry) - {"learning_rates", *OPTIMIZER_TABLE_KEYS})
            if extra or "name" not in entry:
                raise fail(f"{where}: a table takes name, learning_rates, class, options, lr_linear, "
                           f"default_lr and hyperparameters; got {sorted(entry)}")
            if "learning_rates" in entry:
                lrs = _learning_rates(entry["learning_rates"], f"{where}.learning_rates", fail)
            entry = {k: v for k, v in entry.items() if k != "learning_rates"}
            if set(entry) == {"name"}:
                entry = entry["name"]
        if not isinstance(entry, str | dict) and not (
                source == "build_study" and (callable(entry) or isinstance(entry, OptimizerEntry))):
            raise fail(f"{where}: expected a name like 'adam' or 'adam(betas=(0.9, 0.99))'; got {entry!r}")
        try:
            spec = optimizer_record(entry) if not (isinstance(entry, str) and _is_local_flow(entry)) \
                else str(OptimizerSpec.parse(entry))
        except OptimlabError as e:
            raise fail(f"{where}: {e}") from None
        entries.append((spec, lrs))
    grid = [axes.point(optimizer=spec, lr=lr, seed=seed, dual_lr=d, penalty=c, schedule=sch, batch_size=b,
                       task=task)
            for task in (tasks or [None]) for spec, lrs in entries
            for b in batch_sizes for sch in schedules for lr in lrs for d in dual_lrs for c in penalties
            for seed in seeds]
    seen, duplicates = set(), []
    for p in grid:
        if axes.key(p) in seen:
            duplicates.append(p)
        seen.add(axes.key(p))
    if duplicates:
        shown = "; ".join(axes.label(p) for p in duplicates[:5])
        raise fail(f"duplicate configurations ({len(duplicates)}): {shown}. Each optimizer, learning "
                   "rate, dual learning rate, penalty coefficient, schedule, batch size and seed may appear "
                   "once")

    device = doc.get("device", "auto")
    # each distinct optimizer once (its first entry), to check every task's settings with
    optimizer_specs = list({axes.key(p)[0]: p["optimizer"] for p in reversed(grid)}.values())
    target = _target(doc["target"], "target", fail) if "target" in doc else None
    executor = _executor(doc.get("executor", {}), fail)
    rerun_seeds = _rerun_seeds(doc["rerun_best"], seeds, bool(doc.get("constraints")), fail) \
        if "rerun_best" in doc else ()
    if tasks is None:
        fields = {k: doc[k] for k in SHARED if k in doc}
        defaulted = tuple(k for k in STUDY_DEFAULTS if k not in doc)
        fields.update({k: STUDY_DEFAULTS[k] for k in defaulted})
        shared = _checked_settings(fields, optimizer_specs, grid[0]["lr"], device, batch_sizes != [None],
                                   fail)
        return StudySpec(name=name.strip(), shared=shared, grid=tuple(grid), executor=executor,
                         device=device, text=text, python_path=tuple(python_path), defaulted=defaulted,
                         targets={} if target is None else {None: target}, rerun_seeds=rerun_seeds)
    study_fields = {k: doc[k] for k in SHARED if k in doc and k not in TASK_SETTINGS}
    settings, targets = {}, {}
    for task_name, task in tasks.items():
        checked = _checked_settings({**study_fields, **task["fields"]}, optimizer_specs, grid[0]["lr"],
                                    device, batch_sizes != [None], lambda m, n=task_name: fail(
                                        f"task {n!r}: {m}"))
        settings[task_name] = {k: v for k, v in checked.items() if k in TASK_SETTINGS}
        shared = {k: v for k, v in checked.items() if k not in TASK_SETTINGS}
        if (t := task.get("target", target)) is not None:
            targets[task_name] = t
    scaled = {n: {"suite": t["suite"], "scaled": t["scaled"]} for n, t in tasks.items() if "suite" in t}
    return StudySpec(name=name.strip(), shared=shared, grid=tuple(grid), executor=executor, device=device,
                     text=text, python_path=tuple(python_path), tasks=settings, targets=targets,
                     scaled=scaled, rerun_seeds=rerun_seeds)


def _checked_settings(fields: dict, optimizers: list, lr: float, device: str, batch_axis: bool,
                      fail) -> dict:
    """A task's settings (``fields``: study file fields) checked by the one place that knows them,
    with each of the grid's ``optimizers``; returns every TrainConfig field but the axes, names
    normalized, objects kept."""
    fields = dict(fields)
    for key in ("model_options", "dataset_options"):
        fields.setdefault(key, {})
        if not isinstance(fields[key], dict):
            raise fail(f"{key} must be a table, e.g. [{key}] hidden = 100; got {fields[key]!r}")
    try:
        for optimizer in optimizers:
            TrainConfig(**fields, optimizer=optimizer, lr=lr, device=device)
    except (OptimlabError, TypeError) as e:
        raise fail(str(e)) from None
    checked = TrainConfig(**fields, optimizer="sgd", lr=1.0)
    out = {f.name: getattr(checked, f.name) for f in dataclasses.fields(TrainConfig)}
    for k in ("optimizer", "lr", "seed", "device", "dual_lr", "penalty", "schedule"):  # the axes
        out.pop(k)
    if batch_axis:  # an axis: each run's own
        out.pop("batch_size")
    return out


def _rerun_seeds(table, seeds: list[int], constrained: bool, fail) -> tuple[int, ...]:
    """The seeds of ``[rerun_best]``: integers >= 0, some of them not the grid's."""
    if not isinstance(table, dict) or set(table) != {"seeds"}:
        raise fail(f"rerun_best is a table with seeds, e.g. [rerun_best] seeds = [1, 2, 3]; got {table!r}")
    value = table["seeds"]
    if not isinstance(value, list) or not value or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise fail(f"rerun_best.seeds must be a non-empty list of integers >= 0; got {value!r}")
    if set(value) <= set(seeds):
        raise fail(f"rerun_best.seeds {value} are all seeds of the grid already ({seeds}): rerunning the "
                   "best settings needs other seeds")
    if constrained:
        raise fail("rerun_best chooses by the validation metric alone; a constrained study needs feasibility "
                   "too, which it does not take into account: run the best settings with more seeds in a "
                   "study of their own")
    return tuple(dict.fromkeys(value))


def _target(value, where: str, fail) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise fail(f"{where} must be a finite number (an accuracy in (0, 1], or a loss); got {value!r}")
    return float(value)


def _tasks(doc: dict, batch_axis: bool, fail) -> dict[str, dict]:
    """The ``[[tasks]]`` of a study file, by name: ``fields`` (the task's settings as a study file
    writes them: its own over the study's over its suite task's), ``target`` where it has one, and
    for a task of the suite ``suite`` and ``scaled`` (the fields of its definition that differ, a
    budget in iterations instead of epochs included, and None for those dropped)."""
    value = doc["tasks"]
    if not isinstance(value, list) or not value or not all(isinstance(t, dict) for t in value):
        raise fail("tasks are [[tasks]] tables, each with a name and its data, model and budget (or "
                   f"suite = 'fmnist_mlp'); got {value!r}")
    defaults = {k: doc[k] for k in TASK_SETTINGS if k in doc}
    out: dict[str, dict] = {}
    for i, table in enumerate(value):
        where = f"tasks[{i}]"
        unknown = sorted(set(table) - set(TASK_FIELDS))
        if unknown:
            raise fail(f"{where}: unknown task field {', '.join(map(repr, unknown))}; valid: "
                       f"{', '.join(TASK_FIELDS)} (optimizers, learning rates, seeds and schedules are the "
                       "study's)")
        base = suite_task(table["suite"], f"{where}.suite") if "suite" in table else {}
        name = table.get("name", table.get("suite"))
        if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
            raise fail(f"{where}: a task needs a name of 1 to 60 letters, digits, '.', '_' or '-'; got "
                       f"{name!r}")
        if name in out:
            raise fail(f"{where}: the task name {name!r} is given twice; each task needs its own name")
        own = {k: table[k] for k in TASK_SETTINGS if k in table}
        if batch_axis and "batch_size" in own:
            raise fail(f"{where}: batch_size is the study's batch_sizes axis; a task cannot set its own")
        fields = {}
        for layer in (base, defaults, own):  # later layers win; a budget is epochs or iterations, whole
            if "epochs" in layer or "iterations" in layer:
                fields.pop("epochs", None)
                fields.pop("iterations", None)
            fields.update(layer)
        if batch_axis:
            fields.pop("batch_size", None)
        entry = {}
        if "suite" in table:
            entry["suite"] = table["suite"]
            entry["scaled"] = {k: v for k, v in fields.items()  # DeepOBS's fields changed, and the budget
                               if base.get(k, v) != v or (k not in base and k in ("epochs", "iterations"))}
            entry["scaled"].update({k: None for k in base if k not in fields})
        fields = {**STUDY_DEFAULTS, **fields}
        for required in ("dataset", "model"):
            if required not in fields:
                raise fail(f"{where} ({name}): missing field {required!r} ({FIELDS[required]}), in the task "
                           "or the study (or a suite task: suite = 'fmnist_mlp')")
        entry["fields"] = fields
        if "target" in table:
            entry["target"] = _target(table["target"], f"{where}.target", fail)
        out[name] = entry
    return out


def _is_local_flow(text: str) -> bool:
    return OptimizerSpec.parse(text).name in LOCAL_FLOW


def _python_path(value, base: Path, fail) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise fail(f"python_path must be a list of folders such as ['src']; got {value!r}")
    out = []
    for v in value:
        folder = (base / v).resolve()
        if not folder.is_dir():
            raise fail(f"python_path: {v!r} is not a folder (looked for {folder})")
        out.append(str(folder))
    return out


def add_to_python_path(folders) -> None:
    """Put the user's code folders first on ``sys.path`` (once each), and drop stale imports of
    nothing: a folder added later is searched by the next import."""
    import importlib
    import sys

    for folder in reversed(list(folders)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    importlib.invalidate_caches()


def _hyperparameter_axes(value, where: str, fail) -> dict[str, list]:
    """A table of hyperparameter -> its values (a non-empty list of literals; lists become tuples,
    as betas are written)."""
    if not isinstance(value, dict):
        raise fail(f"{where} is a table of lists, e.g. {{ momentum = [0.9, 0.99] }}; got {value!r}")
    out = {}
    for key, values in value.items():
        if key == "lr":
            raise fail(f"{where}: the learning rate is the learning_rates axis, not a hyperparameter")
        if not isinstance(values, list) or not values:
            raise fail(f"{where}.{key} is a non-empty list of values, e.g. [0.9, 0.99]; got {values!r}")
        out[key] = [tuple(v) if isinstance(v, list) else v for v in values]
    return out


def _with_hyperparameters(optimizers: list, shared: dict[str, list], fail) -> list:
    """The optimizer entries with their hyperparameter axes expanded: one entry per combination,
    its values among the entry's options (``sgd`` x momentum [0.9, 0.99] -> ``sgd(momentum=0.9)``,
    ``sgd(momentum=0.99)``). Whether each optimizer takes them is checked with the entry."""
    out = []
    for i, entry in enumerate(optimizers):
        own = {}
        if isinstance(entry, dict) and "hyperparameters" in entry:
            entry = dict(entry)
            own = _hyperparameter_axes(entry.pop("hyperparameters"), f"optimizers[{i}].hyperparameters", fail)
        axes_here = {**shared, **own}
        if not axes_here:
            out.append(entry)
            continue
        if isinstance(entry, str):
            spec = OptimizerSpec.parse(entry)
            name, given = spec.name, spec.options
        elif isinstance(entry, dict):
            name, given = entry.get("name"), dict(entry.get("options", {}))
        else:
            raise fail(f"optimizers[{i}]: hyperparameter axes need the optimizer by name or as a table; got "
                       f"{entry!r}")
        twice = sorted(set(given) & set(axes_here))
        if twice:
            raise fail(f"optimizers[{i}]: {', '.join(twice)} is both set and an axis; give it one way")
        for combo in itertools.product(*axes_here.values()):
            varied = dict(zip(axes_here, combo, strict=True))
            options = {**given, **varied}
            if isinstance(entry, str):
                out.append(str(OptimizerSpec(name, options)))
            elif "class" not in entry:  # a built-in name with its own learning rates: the name says all
                out.append({**{k: v for k, v in entry.items() if k != "options"},
                            "name": str(OptimizerSpec(name, options))})
            else:  # a class of the user's: its name tells the combinations apart
                out.append({**entry, "name": format_call(name, varied), "options": options})
    return out


def _batch_sizes(doc: dict, fail) -> list[int | None]:
    """The batch sizes of the grid ([None]: the study's one ``batch_size``, not an axis)."""
    if "batch_sizes" not in doc:
        return [None]
    if "batch_size" in doc:
        raise fail("give batch_size (one for every run) or batch_sizes (an axis), not both")
    value = doc["batch_sizes"]
    if not isinstance(value, list) or not value or not all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in value):
        raise fail(f"batch_sizes must be a non-empty list of integers >= 1, e.g. [64, 128]; got {value!r}")
    return list(value)


def _schedules(value, fail) -> list[str | None]:
    """The schedules of the grid, canonical (None: constant)."""
    if not isinstance(value, list) or not value:
        raise fail(f"schedules must be a non-empty list like ['constant', 'cosine(warmup=0.05)']; "
                   f"got {value!r}")
    out = []
    for i, text in enumerate(value):
        try:
            canonical = str(Schedule.parse(text))
        except OptimlabError as e:
            raise fail(f"schedules[{i}]: {e}") from None
        out.append(None if canonical == "constant" else canonical)
    return out


def _constraint_axes(doc: dict, fail) -> tuple[list, list]:
    """The dual learning rates and the penalty coefficients of the grid ([None]: not an axis)."""
    constrained = bool(doc.get("constraints"))
    for key in ("dual_optimizer", "dual_learning_rates", "formulation", "penalty_coefficients"):
        if key in doc and not constrained:
            raise fail(f"{key} needs constraints (e.g. constraints = ['l2norm<=1']); this study has none")
    formulation = doc.get("formulation", "lagrangian")
    if formulation not in FORMULATIONS:
        raise fail(f"formulation {formulation!r} is unknown; valid: {', '.join(FORMULATIONS)}")
    if formulation == "quadratic_penalty":
        for key in ("dual_optimizer", "dual_learning_rates"):
            if key in doc:
                raise fail(f"{key}: the quadratic penalty has no multipliers (use augmented_lagrangian)")
    if "penalty_coefficients" in doc and formulation == "lagrangian":
        raise fail("penalty_coefficients need formulation = 'augmented_lagrangian' or 'quadratic_penalty'")
    dual_lrs = [None]
    if constrained and formulation != "quadratic_penalty":
        dual_lrs = _learning_rates(doc.get("dual_learning_rates", [DEFAULT_DUAL_LR]), "dual_learning_rates",
                                   fail)
    penalties = [None]
    if "penalty_coefficients" in doc:
        penalties = _learning_rates(doc["penalty_coefficients"], "penalty_coefficients", fail,
                                    noun="penalty coefficient")
    return dual_lrs, penalties


def _learning_rates(value, where: str, fail, noun: str = "learning rate") -> list[float]:
    if isinstance(value, dict):
        if set(value) != {"from", "to", "count"}:
            raise fail(f"{where}: a log range is {{from = 1e-5, to = 1e-1, count = 5}}; got {value!r}")
        lo, hi = (_rate(value[k], f"{where}.{k}", fail, noun) for k in ("from", "to"))
        count = value["count"]
        if isinstance(count, bool) or not (isinstance(count, int) and count >= 1) or (
                count == 1 and lo != hi) or lo > hi:
            raise fail(f"{where}: need from <= to and an integer count >= 1 (1 only when from = to)")
        if count == 1:
            return [lo]
        step = (math.log10(hi) - math.log10(lo)) / (count - 1)
        return [float(f"{10 ** (math.log10(lo) + i * step):.12g}") for i in range(count)]
    if not isinstance(value, list) or not value:
        raise fail(f"{where} must be a non-empty list of numbers > 0 or {{from, to, count}}; got {value!r}")
    return [_rate(lr, where, fail, noun) for lr in value]


def _rate(lr, where: str, fail, noun: str) -> float:
    if isinstance(lr, str | bool):  # "0.1" is text in TOML, true a boolean: neither is a number
        raise fail(f"{where}: {noun} {lr!r} is not a number; write it without quotes, e.g. 0.1")
    try:
        return check_lr(lr)
    except OptimlabError as e:
        raise fail(f"{where}: {str(e).replace('learning rate', noun)}") from None


def _executor(table, fail) -> ExecutorSpec:
    if not isinstance(table, dict):
        raise fail(f"executor must be a table ([executor] kind = ...); got {table!r}")
    unknown = sorted(set(table) - set(EXECUTOR_FIELDS))
    if unknown:
        raise fail(f"executor: unknown field {', '.join(map(repr, unknown))}; valid: "
                   f"{', '.join(EXECUTOR_FIELDS)}")
    spec = ExecutorSpec(**table)
    return check_executor(spec, fail)


def check_executor(spec: ExecutorSpec, fail=OptimlabError) -> ExecutorSpec:
    if spec.kind not in EXECUTORS:
        raise fail(f"executor kind {spec.kind!r} is unknown; valid: {', '.join(EXECUTORS)}")
    if spec.units is not None and spec.units not in UNITS:
        raise fail(f"executor units {spec.units!r} is unknown; valid: {', '.join(UNITS)}")
    if spec.stack not in STACK:
        raise fail(f"executor stack {spec.stack!r} is unknown; valid: auto (stack what is exact where it "
                   "pays off), always (wherever it is exact)")
    for name in ("workers", "max_attempts"):
        value = getattr(spec, name)
        if name == "workers" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail(f"executor {name} must be an integer >= 1; got {value!r}")
    if spec.address is not None and not isinstance(spec.address, str):
        raise fail("executor address must be a string such as 'auto' or 'ray://host:10001'")
    if not isinstance(spec.final_checkpoints, bool):
        raise fail("executor final_checkpoints must be true (keep each finished unit's checkpoint, for a "
                   f"larger budget to continue from) or false; got {spec.final_checkpoints!r}")
    return spec
