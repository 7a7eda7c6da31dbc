"""A study store as TensorBoard runs: ``optimlab study export DB --format tensorboard OUT``.

One TensorBoard run (a folder of event files) per configuration, named ``NNNN-LABEL`` (the run's id
and its grid point). Scalars, each at its step:

* ``train/batch_loss`` and ``train/lr``: every logged training step (the train log);
* ``eval/<split>_loss``, ``eval/<split>_accuracy`` (train, val, test, where recorded) and ``eval/lr``:
  every evaluation;
* a constrained study's ``violation_<key>`` and ``multiplier_<key>``, under ``train/`` (each logged
  step's, with ``train/batch_accuracy``) and under ``eval/`` (at the parameters of each evaluation).

The HParams plugin gets each run's grid point (optimizer, lr, seed and the axes the study varies) and
its final metrics, so TensorBoard's table and parallel coordinates compare the configurations. Written
with ``torch.utils.tensorboard`` (it needs the ``tensorboard`` package: ``optimlab[tensorboard]``);
TensorBoard stores scalars as float32.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from optimlab.errors import OptimlabError

SPLITS = ("train", "val", "test")
AXES = ("optimizer", "lr", "seed", "task", "schedule", "batch_size", "dual_lr", "penalty")


def run_folder(run: dict) -> str:
    """``NNNN-optimizer-lr...-seed...``: the run's id and grid point, in characters any file system takes."""
    parts = [f"{run['run_id']:04d}"]
    for axis in AXES:
        value = run.get(axis)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(text if axis in ("optimizer", "task", "schedule") else f"{axis}{text}")
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", "-".join(parts))[:200]


def export_tensorboard(path: str | Path, out: str | Path) -> list[Path]:
    """Write one TensorBoard run per configuration of the store at ``path`` into ``out`` (a new or
    empty folder); returns the run folders."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise OptimlabError("the TensorBoard export needs the tensorboard package: pip install "
                            "'optimlab[tensorboard]'") from None
    from optimlab.study.results import load_results
    from optimlab.study.store import StudyStore

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OptimlabError(f"{out} is not an empty folder: TensorBoard would mix these runs with what is "
                            "there; give a new folder")
    results = load_results(path)
    store = StudyStore.open(path, readonly=True)
    try:
        log_lr = dict(store.conn.execute("SELECT run_id || ':' || step, lr FROM train_log").fetchall())
        eval_lr = dict(store.conn.execute("SELECT run_id || ':' || step, lr FROM evals").fetchall())
    finally:
        store.close()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OptimlabError(f"cannot write to {out}: {e.strerror or e}") from None
    extra_log = [c for c in results.train_log if c.startswith(("violation_", "multiplier_", "accuracy"))]
    extra_eval = [c for c in results.evals if c.startswith(("violation_", "multiplier_"))]
    folders = []
    for run in results.runs.to_dict("records"):
        folder = out / run_folder(run)
        log = results.train_log[results.train_log.run_id == run["run_id"]]
        evals = results.evals[results.evals.run_id == run["run_id"]]
        writer = SummaryWriter(log_dir=str(folder))
        try:
            for row in log.to_dict("records"):
                step = int(row["step"])
                _scalar(writer, "train/batch_loss", row["loss"], step)
                _scalar(writer, "train/lr", log_lr.get(f"{run['run_id']}:{step}"), step)
                for c in extra_log:
                    _scalar(writer, f"train/{c}" if c != "accuracy" else "train/batch_accuracy", row[c], step)
            for row in evals.to_dict("records"):
                step = int(row["step"])
                for split in SPLITS:
                    for metric in ("loss", "accuracy"):
                        _scalar(writer, f"eval/{split}_{metric}", row.get(f"{split}_{metric}"), step)
                _scalar(writer, "eval/lr", eval_lr.get(f"{run['run_id']}:{step}"), step)
                for c in extra_eval:
                    _scalar(writer, f"eval/{c}", row[c], step)
            writer.add_hparams(_hparams(run), _final(run, evals), run_name=".")
        finally:
            writer.close()
        folders.append(folder)
    return folders


def _scalar(writer, tag: str, value, step: int) -> None:
    if value is not None and not (isinstance(value, float) and math.isnan(value)):
        writer.add_scalar(tag, float(value), step)


def _hparams(run: dict) -> dict:
    """The run's grid point as TensorBoard's hyperparameters (numbers, strings)."""
    point = {}
    for axis in AXES:
        value = run.get(axis)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        point[axis] = value if isinstance(value, int | float | str) else str(value)
    point["status"] = run["status"]
    return point


def _final(run: dict, evals) -> dict:
    """The final metrics of a run (its last evaluation; a diverged run's are NaN), for HParams."""
    last = evals.sort_values("step").iloc[-1].to_dict() if len(evals) else {}
    final = {"hparam/steps": float(run["steps"])}
    for split in SPLITS:
        for metric in ("loss", "accuracy"):
            value = last.get(f"{split}_{metric}")
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                diverged = run["status"] == "diverged"
                final[f"hparam/final_{split}_{metric}"] = math.nan if diverged else float(value)
    return final
