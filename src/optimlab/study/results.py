"""A study's results as pandas DataFrames, and their export to CSV or Parquet files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from optimlab.errors import OptimlabError
from optimlab.study.store import StudyStore

RUN_KEYS = ["run_id", "optimizer", "lr", "seed"]


@dataclass
class StudyResults:
    """``runs``: one row per run (id, optimizer, lr, seed, status, steps, diverged_at, wall_time,
    attempts, error); ``evals`` and ``train_log``: one row per record, with the run's optimizer, lr
    and seed beside ``run_id``; ``meta``: the study's name, file, and environment."""

    runs: object  # pandas.DataFrame
    evals: object
    train_log: object
    meta: dict


def load_results(path: str | Path) -> StudyResults:
    """Read a study store (it may still be running or have been interrupted)."""
    import pandas as pd

    store = StudyStore.open(path)
    try:
        conn = store.conn
        runs = pd.read_sql_query(
            "SELECT id AS run_id, optimizer, lr, seed, status, steps, diverged_at, wall_time, "
            "attempts, error FROM runs ORDER BY id", conn)
        evals = pd.read_sql_query(
            "SELECT r.id AS run_id, r.optimizer, r.lr, r.seed, e.step, e.epoch, e.batch_loss, "
            "e.train_loss, e.train_accuracy, e.test_loss, e.test_accuracy, e.wall_time "
            "FROM evals e JOIN runs r ON r.id = e.run_id ORDER BY r.id, e.step", conn)
        log = pd.read_sql_query(
            "SELECT r.id AS run_id, r.optimizer, r.lr, r.seed, t.step, t.epoch, t.loss "
            "FROM train_log t JOIN runs r ON r.id = t.run_id ORDER BY r.id, t.step", conn)
        meta = {k: store.meta(k) for k in ("name", "study_file", "schema_version")}
        meta["environment"] = json.loads(store.meta("environment") or "{}")
    finally:
        store.close()
    return StudyResults(runs, evals, log, meta)


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
