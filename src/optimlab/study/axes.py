"""The axes of a study's grid. A point of the grid is a mapping axis name -> value; a run's settings,
its columns in the store, its identity, its label in lines and the order of the grid derive from the
axes listed here, so that a new axis is added in one place (and a store column in the schema).

An optional axis is None in a study that does not vary it (``dual_lr`` without multipliers,
``penalty`` without a penalty formulation, ``schedule`` where the learning rate is constant,
``batch_size`` where every run has the study's one, ``task`` in a study of one task, without
``[[tasks]]``); its store column is then NULL. A point's :func:`key` is also its values in the store's
columns. ``task`` is the one axis that is not a run setting: it names the task (data, model, budget,
...) whose settings the study holds (:class:`optimlab.study.spec.StudySpec`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from optimlab.registry import optimizer_label


@dataclass(frozen=True)
class Axis:
    """``name``: the run setting it sets (a TrainConfig field) and its column in the store's runs
    table, of SQL type ``sql``; ``show``: how a line writes its value; ``optional``: whether a study may
    leave it out (NULL in the store); ``setting``: whether it is a field of the run's TrainConfig."""

    name: str
    show: Callable[[object], str]
    sql: str = "REAL"
    optional: bool = False
    setting: bool = True


# in the order points are listed, written in a study's definition (trailing Nones dropped: stores of
# schema 1 wrote [optimizer, lr, seed]) and shown in lines
AXES: tuple[Axis, ...] = (
    Axis("optimizer", lambda v: _optimizer_key(v), sql="TEXT"),
    Axis("lr", lambda v: f"lr={v:g}"),
    Axis("seed", lambda v: f"seed={v}", sql="INTEGER"),
    Axis("dual_lr", lambda v: f"dual_lr={v:g}", optional=True),
    Axis("penalty", lambda v: f"penalty={v:g}", optional=True),
    Axis("schedule", lambda v: f"schedule={v}", sql="TEXT", optional=True),  # None: constant
    Axis("batch_size", lambda v: f"batch={v}", sql="INTEGER", optional=True),  # None: the shared one
    Axis("task", lambda v: f"{v}:", sql="TEXT", optional=True, setting=False),  # None: the one task
)
TEXT_AXES = ("optimizer", "schedule", "task")
NAMES = tuple(a.name for a in AXES)

Point = dict


def point(**values) -> Point:
    """A point with every axis, in the axes' order (optional ones default to None)."""
    unknown = sorted(set(values) - set(NAMES))
    if unknown:
        raise ValueError(f"unknown grid axes {unknown}; axes: {', '.join(NAMES)}")
    return {a.name: values.get(a.name) for a in AXES}


def key(p: Point) -> tuple:
    """What tells two points apart, hashable: optimizers by their label, numbers as floats."""
    out = []
    for a in AXES:
        v = p.get(a.name)
        out.append(_optimizer_key(v) if a.name == "optimizer" else None if v is None else
                   str(v) if a.name in TEXT_AXES else int(v) if a.name in ("seed", "batch_size")
                   else float(v))
    return tuple(out)


def _optimizer_key(v: object) -> str:
    # an object without an import path is recorded as "<python: NAME>": its own key
    return v if isinstance(v, str) and v.startswith("<python: ") else optimizer_label(v)


def label(p: Point, axes: tuple[str, ...] = NAMES) -> str:
    """``fmnist_mlp: sgd lr=0.1 dual_lr=0.001 seed=0``: the axes that have a value (the task first,
    the seed last)."""
    shown = [a for a in AXES if a.name in axes and p.get(a.name) is not None]
    shown.sort(key=lambda a: (a.name != "task") + (a.name == "seed"))
    return " ".join(a.show(p[a.name]) for a in shown)


def serialized(p: Point) -> list:
    """The point as a study's definition writes it: values in the axes' order, trailing Nones dropped."""
    values = [p.get(n) for n in NAMES]
    while values and values[-1] is None:
        values.pop()
    return values


def settings(p: Point) -> dict:
    """The run settings a point sets (an optional axis left out where it is None: its default; the
    task is not a setting but names the settings of :meth:`optimlab.study.spec.StudySpec.settings`)."""
    return {a.name: p.get(a.name) for a in AXES
            if a.setting and (p.get(a.name) is not None or a.name == "penalty")}


def of_row(row: dict) -> Point:
    """The point of a run of the store (a row of its runs table)."""
    return point(**{n: row.get(n) for n in NAMES})
