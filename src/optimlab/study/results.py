"""A study's results as pandas DataFrames, and their export to CSV or Parquet files."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from optimlab.constrained.named import parse_constraint
from optimlab.errors import OptimlabError
from optimlab.study.store import StudyStore

RUN_KEYS = ["run_id", "optimizer", "lr", "seed"]


@dataclass
class StudyResults:
    """``runs``: one row per run (id, optimizer, lr, seed, status, steps, diverged_at, wall_time,
    attempts, error, engine, wall_time_of); ``wall_time`` is the seconds of what trained the run:
    of the run alone, or, where the vectorized engine stacked it with others (``engine``:
    ``"vectorized: a group of N runs"``), of the whole group, which ``wall_time_of`` says (``"run"``
    or ``"group of N runs"``); ``evals`` and ``train_log``: one row per record, with the run's optimizer, lr
    and seed beside ``run_id``; ``meta``: the study's name, file, definition and environment. The
    evaluation rows' ``val_loss`` and ``val_accuracy`` are NaN in a study without a validation set.

    A study with a ``schedules`` or ``batch_sizes`` axis has a ``schedule`` (None: constant) or
    ``batch_size`` column in all three, and a study of ``[[tasks]]`` a ``task`` column
    (:meth:`tasks`, :meth:`of_task`). A constrained study also has ``dual_lr`` and ``penalty``
    (after ``lr``; NaN where the ``formulation`` has no multipliers or no coefficient) in all three,
    and its records have a ``violation_<constraint>`` and (with multipliers) a
    ``multiplier_<constraint>`` column per constraint (its train_log also the batch ``accuracy``);
    ``constraints`` maps each constraint's key to its kind, ``"<="`` (satisfied when its violation is
    <= 0) or ``"=="`` (when it is 0)."""

    runs: object  # pandas.DataFrame
    evals: object
    train_log: object
    meta: dict
    constraints: dict[str, str] = field(default_factory=dict)
    formulation: str = "lagrangian"

    @property
    def constrained(self) -> bool:
        return bool(self.constraints)

    @property
    def tasks(self) -> list[str | None]:
        """The study's tasks in the order of its runs ([None]: a study of one task)."""
        return list(dict.fromkeys(self.runs.task)) if "task" in self.runs else [None]

    def task_definition(self, task: str | None) -> dict:
        """A task's settings, target and (a suite task) ``suite`` and ``scaled``, as the store holds
        them; a study of one task: its shared settings and target."""
        definition = self.meta.get("definition", {})
        if task is None:
            return {"settings": definition.get("shared", {}), "target": definition.get("target")}
        return definition.get("tasks", {}).get(task, {"settings": {}, "target": None})

    def of_task(self, task: str | None) -> StudyResults:
        """The results of one task's runs (all of them for None in a study of one task)."""
        if task is None or "task" not in self.runs:
            return self
        def keep(frame):
            return frame[frame.task == task].drop(columns="task").reset_index(drop=True)

        return replace(self, runs=keep(self.runs), evals=keep(self.evals), train_log=keep(self.train_log))

    @property
    def has_validation(self) -> bool:
        """Whether the study's runs evaluated a validation set."""
        return bool(len(self.evals)) and bool(self.evals.val_loss.notna().any())


def load_results(path: str | Path) -> StudyResults:
    """Read a study store (it may still be running or have been interrupted)."""
    store = StudyStore.open(path, readonly=True)
    try:
        return read_results(store)
    finally:
        store.close()


def read_results(store: StudyStore, train_log: bool = True) -> StudyResults:
    """The results of a store open already (:func:`load_results` opens and closes it); without
    ``train_log``, its rows are left unread (an empty frame)."""
    import pandas as pd

    conn = store.conn
    definition = json.loads(store.meta("definition") or "{}")
    named = [parse_constraint(c) for c in definition.get("shared", {}).get("constraints", [])]
    constraints = {c.key: c.kind for c in named}
    formulation = definition.get("shared", {}).get("formulation", "lagrangian")
    dual, run_dual = ("dual_lr, penalty, ", "r.dual_lr, r.penalty, ") if constraints else ("", "")
    for axis in ("schedule", "batch_size", "task"):  # where the study varies them
        if conn.execute(f"SELECT COUNT(*) FROM runs WHERE {axis} IS NOT NULL").fetchone()[0]:
            dual, run_dual = dual + f"{axis}, ", run_dual + f"r.{axis}, "
    runs = pd.read_sql_query(
        f"SELECT id AS run_id, optimizer, lr, {dual}seed, status, steps, diverged_at, wall_time, "
        "attempts, error, engine FROM runs ORDER BY id", conn)
    runs["wall_time_of"] = [_timed(e) for e in runs.engine]
    evals = _with_extras(pd.read_sql_query(
        f"SELECT r.id AS run_id, r.optimizer, r.lr, {run_dual}r.seed, e.step, "
        "e.epoch, e.batch_loss, e.train_loss, e.train_accuracy, e.val_loss, e.val_accuracy, "
        "e.test_loss, e.test_accuracy, "
        "e.wall_time, e.extras FROM evals e JOIN runs r ON r.id = e.run_id ORDER BY r.id, e.step",
        conn))
    for column in ("val_loss", "val_accuracy"):  # NULL in every row without a validation set
        evals[column] = evals[column].astype(float)
    log = _with_extras(pd.read_sql_query(
        f"SELECT r.id AS run_id, r.optimizer, r.lr, {run_dual}r.seed, t.step, "
        "t.epoch, t.loss, t.extras FROM train_log t JOIN runs r ON r.id = t.run_id "
        f"{'' if train_log else 'WHERE 0 '}ORDER BY r.id, t.step", conn))
    meta = {k: store.meta(k) for k in ("name", "study_file", "schema_version")}
    meta["environment"] = json.loads(store.meta("environment") or "{}")
    meta["definition"] = definition
    return StudyResults(runs, evals, log, meta, constraints, formulation)


def _timed(engine: object) -> str:
    """What a run's wall time measures: the run, or the vectorized group it was trained in (a run
    not trained yet, or stored before the store recorded engines: "run")."""
    found = re.search(r"a group of (\d+) runs", engine) if isinstance(engine, str) else None
    return f"group of {found.group(1)} runs" if found else "run"


def _with_extras(frame):
    """``frame`` with its JSON ``extras`` column spread into one column per key (in first-seen order)."""
    import pandas as pd

    extras = frame.pop("extras")
    if extras.notna().any():
        spread = pd.DataFrame([json.loads(e) if isinstance(e, str) else {} for e in extras],
                              index=frame.index)
        frame = pd.concat([frame, spread.astype(float)], axis=1)
    return frame


def export_results(path: str | Path, out: str | Path, fmt: str = "csv") -> list[Path]:
    """Write runs, evals and train_log as ``fmt`` files (csv or parquet) into ``out``."""
    if fmt not in ("csv", "parquet"):
        raise OptimlabError(f"unknown export format {fmt!r}; valid: csv, parquet")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise OptimlabError("Parquet export needs pyarrow: pip install 'optimlab[parquet]'") from None
    results = load_results(path)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OptimlabError(f"cannot write to {out}: {e.strerror or e}") from None
    written = []
    for name in ("runs", "evals", "train_log"):
        frame = getattr(results, name)
        target = out / f"{name}.{fmt}"
        try:
            frame.to_csv(target, index=False) if fmt == "csv" else frame.to_parquet(target, index=False)
        except OSError as e:
            raise OptimlabError(f"cannot write {target}: {e.strerror or e}") from None
        written.append(target)
    return written
