"""The numbers of a study report, as pandas DataFrames.

Terms. A run's *final* metrics are those of its last evaluation; a diverged run has none (NaN) and
is counted apart. A *cell* is one (optimizer, learning rate): its numbers are the mean and standard
deviation over the seeds whose runs finished without diverging. *Convergence speed*: the first
evaluation at which a run's test accuracy reaches the target (a fraction of the best mean final
accuracy in the study); runs that never reach it are counted as not reaching it, never as zero.
*Robustness*: the width, in decades, of the contiguous range of learning rates around an optimizer's
best one whose mean final test accuracy is within ``accuracy_tolerance`` (1 point) of the best, and
the same for the final training loss within ``loss_tolerance`` (1 %); a learning rate at which any
seed diverged breaks the range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from optimlab.study.results import StudyResults

CELL = ["optimizer", "lr"]


@dataclass
class Summary:
    """Every table of a report. ``notes``: what a reader must know (missing runs, undefined widths)."""

    final: pd.DataFrame  # one row per run: final and best metrics, convergence
    cells: pd.DataFrame  # one row per (optimizer, lr): means and stds over seeds
    robustness: pd.DataFrame  # one row per optimizer: best lr, widths, ranking
    curves: pd.DataFrame  # mean and std over seeds of test accuracy and train loss, by step
    target_accuracy: float | None
    missing: pd.DataFrame  # runs not finished (pending, running, failed)
    notes: list[str]


def final_metrics(results: StudyResults, target: float | None = None) -> pd.DataFrame:
    """One row per finished run: final train/test loss and accuracy, best test accuracy, and the
    epoch and wall time at which test accuracy first reached ``target`` (NaN when it never did, or
    without a target)."""
    runs = results.runs[results.runs.status.isin(["completed", "diverged"])]
    evals = results.evals
    log = results.train_log
    rows = []
    for run in runs.itertuples():
        ev = evals[evals.run_id == run.run_id].sort_values("step")
        diverged = run.status == "diverged"
        last = ev.iloc[-1] if len(ev) else None
        train_loss = np.nan
        if last is not None and not diverged:
            train_loss = last.train_loss
            if pd.isna(train_loss):  # no train-set evaluation: the last logged batch losses
                tail = log[log.run_id == run.run_id].sort_values("step").loss.tail(10)
                train_loss = tail.mean() if len(tail) else np.nan
        rows.append({
            "run_id": run.run_id, "optimizer": run.optimizer, "lr": run.lr, "seed": run.seed,
            "status": run.status, "diverged_at": run.diverged_at,
            "final_train_loss": np.nan if diverged else train_loss,
            "final_test_loss": np.nan if diverged or last is None else last.test_loss,
            "final_test_accuracy": np.nan if diverged or last is None else last.test_accuracy,
            "best_test_accuracy": ev.test_accuracy.max() if len(ev) else np.nan,
            "wall_time": run.wall_time,
        })
    final = pd.DataFrame(rows, columns=[
        "run_id", "optimizer", "lr", "seed", "status", "diverged_at", "final_train_loss",
        "final_test_loss", "final_test_accuracy", "best_test_accuracy", "wall_time"])
    return with_convergence(final, results.evals, target)


def with_convergence(final: pd.DataFrame, evals: pd.DataFrame, target: float | None) -> pd.DataFrame:
    """``final`` with ``epochs_to_target`` and ``seconds_to_target``: the epoch and wall time of each
    run's first evaluation whose test accuracy reached ``target`` (NaN when none did)."""
    hits = (evals[evals.test_accuracy >= target].sort_values("step").groupby("run_id").first()
            if target is not None else evals.iloc[:0].set_index("run_id"))
    final = final.copy()
    final["epochs_to_target"] = final.run_id.map(hits.epoch).astype(float)
    final["seconds_to_target"] = final.run_id.map(hits.wall_time).astype(float)
    return final


def cell_table(final: pd.DataFrame) -> pd.DataFrame:
    """Per (optimizer, lr): seeds, diverged count, mean and std of the final metrics over the seeds
    that did not diverge, and how many seeds reached the target with their mean epochs to it."""
    metrics = ["final_train_loss", "final_test_loss", "final_test_accuracy", "best_test_accuracy"]
    out = []
    for (opt, lr), g in final.groupby(CELL, sort=True):
        ok = g[g.status != "diverged"]
        row = {"optimizer": opt, "lr": lr, "seeds": len(g), "diverged": int((g.status == "diverged").sum())}
        for m in metrics:
            row[f"{m}_mean"] = ok[m].mean() if len(ok) else np.nan
            row[f"{m}_std"] = ok[m].std(ddof=0) if len(ok) else np.nan
        reached = g.epochs_to_target.notna()
        row["reached_target"] = int(reached.sum())
        row["epochs_to_target_mean"] = g.epochs_to_target[reached].mean() if reached.any() else np.nan
        row["seconds_to_target_mean"] = g.seconds_to_target[reached].mean() if reached.any() else np.nan
        out.append(row)
    return pd.DataFrame(out)


def _width(lrs: list[float], good: list[bool], best: int) -> float:
    """Decades spanned by the contiguous run of ``good`` learning rates that contains ``best``."""
    lo = hi = best
    while lo > 0 and good[lo - 1]:
        lo -= 1
    while hi < len(lrs) - 1 and good[hi + 1]:
        hi += 1
    return math.log10(lrs[hi] / lrs[lo])


def robustness_table(cells: pd.DataFrame, accuracy_tolerance: float = 0.01,
                     loss_tolerance: float = 0.01) -> pd.DataFrame:
    """Per optimizer: its best learning rate (highest mean final test accuracy among the learning
    rates where no seed diverged; lowest final training loss for regression), the widths in decades
    of the accuracy and loss ranges, diverged runs, and a rank (best accuracy first, then width)."""
    rows = []
    for opt, g in cells.groupby("optimizer", sort=False):
        g = g.sort_values("lr").reset_index(drop=True)
        usable = (g.diverged == 0) & (g.final_test_accuracy_mean.notna() | g.final_train_loss_mean.notna())
        lrs = g.lr.tolist()
        row = {"optimizer": opt, "learning_rates": len(g), "diverged_runs": int(g.diverged.sum())}
        if not usable.any():
            rows.append({**row, "best_lr": np.nan, "best_final_test_accuracy": np.nan,
                         "width_accuracy_decades": np.nan, "width_loss_decades": np.nan})
            continue
        has_acc = g.final_test_accuracy_mean[usable].notna().any()
        score = g.final_test_accuracy_mean if has_acc else -g.final_train_loss_mean
        best = int(score.where(usable).idxmax())
        loss = g.final_train_loss_mean
        loss_best = loss.where(usable).min()
        good_loss = (usable & (loss <= loss_best * (1 + loss_tolerance))).tolist()
        best_loss_i = int(loss.where(usable).idxmin())
        row.update({
            "best_lr": lrs[best],
            "best_final_test_accuracy": g.final_test_accuracy_mean[best],
            "best_final_test_accuracy_std": g.final_test_accuracy_std[best],
            "best_final_train_loss": loss[best],
            "epochs_to_target": g.epochs_to_target_mean[best],
            "width_accuracy_decades": np.nan, "width_loss_decades": np.nan,
        })
        if len(g) > 1:
            if has_acc:
                acc = g.final_test_accuracy_mean
                good_acc = (usable & (acc >= acc[best] - accuracy_tolerance)).tolist()
                row["width_accuracy_decades"] = _width(lrs, good_acc, best)
            row["width_loss_decades"] = _width(lrs, good_loss, best_loss_i)
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        if table.best_final_test_accuracy.notna().any():
            by, ascending = ["best_final_test_accuracy", "width_accuracy_decades"], [False, False]
        else:
            by, ascending = ["best_final_train_loss", "width_loss_decades"], [True, False]
        table = table.sort_values(by, ascending=ascending, na_position="last").reset_index(drop=True)
        table.insert(0, "rank", range(1, len(table) + 1))
    return table


def learning_curves(results: StudyResults, final: pd.DataFrame, best_lr: dict) -> pd.DataFrame:
    """Mean and std over seeds, by step, of test accuracy and train loss at each optimizer's best lr."""
    parts = []
    for opt, lr in best_lr.items():
        ids = final[(final.optimizer == opt) & (final.lr == lr) & (final.status != "diverged")].run_id
        ev = results.evals[results.evals.run_id.isin(ids)]
        if ev.empty:
            continue
        loss_col = "train_loss" if ev.train_loss.notna().any() else "batch_loss"
        g = ev.groupby("step")
        parts.append(pd.DataFrame({
            "optimizer": opt, "lr": lr, "step": g.step.first(), "epoch": g.epoch.first(),
            "test_accuracy_mean": g.test_accuracy.mean(), "test_accuracy_std": g.test_accuracy.std(ddof=0),
            "train_loss_mean": g[loss_col].mean(), "train_loss_std": g[loss_col].std(ddof=0),
            "wall_time_mean": g.wall_time.mean(),
        }).reset_index(drop=True))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def summarize(results: StudyResults, target_fraction: float = 0.95, target_accuracy: float | None = None,
              accuracy_tolerance: float = 0.01, loss_tolerance: float = 0.01) -> Summary:
    """All the tables of a report. The convergence target is ``target_accuracy`` when given, else
    ``target_fraction`` of the best mean final test accuracy of any cell."""
    notes = []
    missing = results.runs[~results.runs.status.isin(["completed", "diverged"])]
    if len(missing):
        notes.append(f"{len(missing)} of {len(results.runs)} runs are not finished "
                     f"({', '.join(f'{n} {s}' for s, n in missing.status.value_counts().items())}); "
                     "the tables use the finished ones only.")
    final = final_metrics(results)
    if target_accuracy is None and final.final_test_accuracy.notna().any():
        # the best mean final accuracy of a cell (over the seeds that did not diverge)
        best = final.groupby(CELL).final_test_accuracy.mean().max()
        target_accuracy = target_fraction * float(best)
    if target_accuracy is not None:
        final = with_convergence(final, results.evals, target_accuracy)
    cells = cell_table(final)
    if target_accuracy is None:
        notes.append("No test accuracy in this study (a regression task?): no convergence target.")
    robust = robustness_table(cells, accuracy_tolerance, loss_tolerance)
    counts = cells.groupby("optimizer").lr.nunique() if len(cells) else pd.Series(dtype=int)
    single = sorted(counts[counts < 2].index)
    if single:
        notes.append(f"Robustness widths are not defined for {', '.join(single)}: they need at least two "
                     "learning rates, and only one was run.")
    if len(final) and (final.status == "diverged").any():
        n = int((final.status == "diverged").sum())
        notes.append(f"{n} runs diverged (non-finite training loss); they have no final metrics and the "
                     "learning rates where they happened do not count as usable.")
    best_lr = {r.optimizer: r.best_lr for r in robust.itertuples() if pd.notna(r.best_lr)}
    curves = learning_curves(results, final, best_lr)
    return Summary(final, cells, robust, curves, target_accuracy,
                   missing[["run_id", "optimizer", "lr", "seed", "status", "error"]], notes)
