"""The numbers of a study report, as pandas DataFrames.

Terms. A run's *final* metrics are those of its last evaluation; a diverged run has none (NaN) and
is counted apart. A *cell* is one (optimizer, learning rate): its numbers are the mean and standard
deviation over the seeds whose runs finished without diverging. The *selection split* is the
validation set where the study has one (else the test set, and the page says so): best learning
rates, ranks, widths and targets are chosen on it; test numbers are reported at the chosen settings.
*Convergence speed*: the first evaluation at which a run's accuracy on the selection split reaches the
target (a fraction of the best mean final accuracy there); runs that never reach it are counted as not
reaching it, never as zero. *Robustness*: the width, in decades, of the range of learning rates
around an optimizer's best one over which its sensitivity curve (mean final accuracy on the selection
split, joined by straight lines in log lr) stays within ``accuracy_tolerance`` (1 point) of the best,
measured to where the curve crosses that threshold, and the same for the final training loss within
``loss_tolerance`` (1 %); a learning rate at which any seed diverged ends the range at the last good
point.

Statistics. Standard deviations are over seeds with ddof = 1 (NaN for one seed). Each cell's mean
final accuracy on the selection split has a 95 % bootstrap interval (the percentile interval of the
mean over 2,000 resamplings of its seeds, drawn from a fixed seed; NaN for one seed). An optimizer
whose best cell's interval overlaps the top-ranked one's is *tied* with it: ranks 1, 2, 3 inside a tie
are not findings. A best learning rate at an end of its grid is a warning: the grid did not bracket
the optimum.

Constrained studies. Each (optimizer, penalty coefficient, dual learning rate) is a *series* of its
own, named like ``adam, dual lr 0.01`` in the ``optimizer`` column of every table. A run's *final
violation* is the largest over its constraints of g (|h| for an equality) at its last evaluation; it
ends *feasible* when that is <= ``feasibility_tolerance``. A series' best learning rate and its
widths count only the learning rates where every seed ended feasible: a solution that breaks its
constraints is no solution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from optimlab.errors import OptimlabError
from optimlab.study.results import StudyResults

CELL = ["optimizer", "lr"]
FEASIBILITY_TOLERANCE = 1e-3
SPLITS = {"val": "validation", "test": "test"}  # a selection split's name in the columns -> in words
BOOTSTRAP = 2000  # resamplings of a cell's seeds for its interval
LEVEL = 0.95


def expected_best(values, k: int) -> float:
    """The expected best of ``k`` draws with replacement from ``values`` (Dodge et al. 2019, "Show
    your work"): with v_(1) <= ... <= v_(n), sum_i v_(i) ((i / n)^k - ((i - 1) / n)^k)."""
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    if n == 0:
        return np.nan
    i = np.arange(1, n + 1)
    return float(np.sum(v * ((i / n) ** k - ((i - 1) / n) ** k)))


def tuning_budget(final: pd.DataFrame, split: str = "test", k_max: int | None = None) -> pd.DataFrame:
    """Per optimizer (series), the expected best final accuracy on ``split`` after k runs drawn at
    random from its grid (each run one draw: a learning rate and a seed; a diverged run, and in a
    constrained study an infeasible one, counts as accuracy 0), for k = 1 .. ``k_max`` (default: the
    size of its grid), computed from the runs made, no new ones. Without accuracies, the expected
    lowest final loss on ``split``, a diverged (or infeasible) run counting as the worst final loss of
    any run. Columns ``optimizer, k, expected_best, runs``; empty without either."""
    accuracy = f"final_{split}_accuracy"
    column = accuracy if final[accuracy].notna().any() else f"final_{split}_loss"
    if final.empty or final[column].isna().all():
        return pd.DataFrame(columns=["optimizer", "k", "expected_best", "runs"])
    higher = column == accuracy
    worst = 0.0 if higher else float(final[column].max())
    sign = 1.0 if higher else -1.0  # the expected lowest loss is minus the expected highest of -loss
    rows = []
    for opt, g in final.groupby("optimizer", sort=False):
        bad = (g.status == "diverged") | (~g.feasible.astype(bool) if "feasible" in g else False)
        values = (sign * g[column].where(~bad, worst).fillna(worst)).tolist()
        top = len(values) if k_max is None else k_max
        if top > len(values):
            raise OptimlabError(f"a tuning budget of {top} draws is more than the {len(values)} runs of "
                                f"{opt}'s grid: the view says what a random search of the grid finds")
        rows += [{"optimizer": opt, "k": k, "expected_best": sign * expected_best(values, k),
                  "runs": len(values)} for k in range(1, top + 1)]
    return pd.DataFrame(rows)


def task_target(cells: pd.DataFrame, split: str, accuracy: bool, fraction: float,
                given: float | None) -> float | None:
    """The target of a task: ``given``, else ``fraction`` of the best mean final accuracy on
    ``split`` (for a loss: best + (1/fraction - 1) |best|); None without any finished cell."""
    if given is not None:
        if accuracy and not 0 < given <= 1:
            raise OptimlabError(f"a target accuracy is a fraction in (0, 1] (0.9 for 90 %): {given} can "
                                "never be reached")
        return float(given)
    column = f"final_{split}_{'accuracy' if accuracy else 'loss'}_mean"
    if cells.empty or column not in cells or cells[column].isna().all():
        return None
    if accuracy:
        return fraction * float(cells[column].max())
    best = float(cells[column].min())
    return best + (1 / fraction - 1) * abs(best)


def bootstrap_interval(values, resamples: int = BOOTSTRAP, level: float = LEVEL,
                       seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``values`` (NaN, NaN for fewer than two)."""
    v = np.asarray([x for x in values if pd.notna(x)], dtype=float)
    if len(v) < 2:
        return np.nan, np.nan
    means = v[np.random.default_rng(seed).integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - level), 100 - 50 * (1 - level)])
    return float(lo), float(hi)


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
    constraints: dict[str, str] = field(default_factory=dict)  # key -> kind; empty: unconstrained
    feasibility_tolerance: float = FEASIBILITY_TOLERANCE
    panels: dict[str, pd.DataFrame] = field(default_factory=dict)  # series -> train_log of one run
    split: str = "test"  # the selection split: "val" (the validation set) or "test"
    colours: dict[str, str] = field(default_factory=dict)  # optimizer (series) -> its colour in every figure
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)  # optimizer, k, expected best (tuning_budget)
    loss_label: str = "training loss"  # or "batch loss" when the training set was not evaluated
    target_loss: float | None = None  # without accuracy: the target on the selection split's loss

    @property
    def has_accuracy(self) -> bool:
        """Whether the runs measured an accuracy on the selection split (else they are compared by loss)."""
        column = f"final_{self.split}_accuracy_mean"
        return column in self.cells and bool(self.cells[column].notna().any())

    @property
    def metric(self) -> str:
        """What the runs are compared by: "accuracy", or "loss" without one."""
        return "accuracy" if self.has_accuracy else "loss"

    @property
    def split_label(self) -> str:
        """The selection split in words: "validation" or "test"."""
        return SPLITS[self.split]


def final_metrics(results: StudyResults, target: float | None = None,
                  feasibility_tolerance: float = FEASIBILITY_TOLERANCE,
                  split: str = "test") -> pd.DataFrame:
    """One row per finished run: final training loss, final validation and test loss and accuracy,
    best validation and test accuracy, and the epoch and wall time at which the accuracy on ``split``
    first reached ``target`` (NaN when it never did, or without a target). A constrained study's
    rows also have ``final_violation`` (the largest), ``feasible``, and ``final_violation_<key>``
    and ``final_multiplier_<key>`` per constraint."""
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
            **{f"final_{s}_{m}": np.nan if diverged or last is None else last[f"{s}_{m}"]
               for s in SPLITS for m in ("loss", "accuracy")},
            **{f"best_{s}_accuracy": ev[f"{s}_accuracy"].max() if len(ev) else np.nan for s in SPLITS},
            "wall_time": run.wall_time,
            **_final_constraints(results.constraints, None if diverged else last, feasibility_tolerance),
        })
    final = pd.DataFrame(rows, columns=[
        "run_id", "optimizer", "lr", "seed", "status", "diverged_at", "final_train_loss",
        "final_val_loss", "final_val_accuracy", "final_test_loss", "final_test_accuracy",
        "best_val_accuracy", "best_test_accuracy", "wall_time",
        *_final_constraints(results.constraints, None, feasibility_tolerance)])
    return with_convergence(final, results.evals, target, split)


def _final_constraints(constraints: dict[str, str], last, tolerance: float) -> dict:
    """The constraint columns of a run's final row (``last``: its last evaluation; None: diverged)."""
    if not constraints:
        return {}
    row, worst = {}, []
    for key, kind in constraints.items():
        v = np.nan if last is None else float(last[f"violation_{key}"])
        row[f"final_violation_{key}"] = v
        multiplier = np.nan if last is None else last.get(f"multiplier_{key}", np.nan)  # none: penalty
        row[f"final_multiplier_{key}"] = float(multiplier)
        worst.append(abs(v) if kind == "==" else v)
    largest = max(worst)  # NaN when diverged
    return {"final_violation": largest, "feasible": bool(largest <= tolerance), **row}


def with_convergence(final: pd.DataFrame, evals: pd.DataFrame, target: float | None,
                     split: str = "test") -> pd.DataFrame:
    """``final`` with ``steps_to_target``, ``epochs_to_target`` and ``seconds_to_target``: the step,
    epoch and wall time of each
    run's first evaluation whose accuracy on ``split`` reached ``target`` (NaN when none did)."""
    hits = (evals[evals[f"{split}_accuracy"] >= target].sort_values("step").groupby("run_id").first()
            if target is not None else evals.iloc[:0].set_index("run_id"))
    final = final.copy()
    final["steps_to_target"] = final.run_id.map(hits.step).astype(float)
    final["epochs_to_target"] = final.run_id.map(hits.epoch).astype(float)
    final["seconds_to_target"] = final.run_id.map(hits.wall_time).astype(float)
    return final


def cell_table(final: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Per (optimizer, lr): seeds, diverged count, mean and std of the final metrics over the seeds
    that did not diverge, the 95 % bootstrap interval (``_low``, ``_high``) of the mean final accuracy
    on ``split``, and how many seeds reached the target with their mean epochs to it; in a
    constrained study also how many seeds ended ``feasible``, the final violation's mean and std and
    each multiplier's mean."""
    metrics = ["final_train_loss", "final_val_loss", "final_val_accuracy", "final_test_loss",
               "final_test_accuracy", "best_val_accuracy", "best_test_accuracy"]
    out = []
    for (opt, lr), g in final.groupby(CELL, sort=True):
        ok = g[g.status != "diverged"]
        row = {"optimizer": opt, "lr": lr, "seeds": len(g), "diverged": int((g.status == "diverged").sum())}
        for m in metrics:
            row[f"{m}_mean"] = ok[m].mean() if len(ok) else np.nan
            row[f"{m}_std"] = ok[m].std(ddof=1) if len(ok) else np.nan
        chosen = f"final_{split}_accuracy"
        for metric in (chosen, f"final_{split}_loss"):  # the loss: what a task without accuracy is chosen by
            row[f"{metric}_low"], row[f"{metric}_high"] = bootstrap_interval(ok[metric])
        if "feasible" in g:
            row["feasible"] = int(g.feasible.sum())
            row["final_violation_mean"] = ok.final_violation.mean() if len(ok) else np.nan
            row["final_violation_std"] = ok.final_violation.std(ddof=1) if len(ok) else np.nan
            for col in (c for c in g if c.startswith("final_multiplier_")):
                row[f"{col}_mean"] = ok[col].mean() if len(ok) else np.nan
        reached = g.epochs_to_target.notna()
        row["reached_target"] = int(reached.sum())
        row["epochs_to_target_mean"] = g.epochs_to_target[reached].mean() if reached.any() else np.nan
        row["steps_to_target_mean"] = g.steps_to_target[reached].mean() if reached.any() else np.nan
        row["seconds_to_target_mean"] = g.seconds_to_target[reached].mean() if reached.any() else np.nan
        out.append(row)
    return pd.DataFrame(out)


def _width(lrs: list[float], values: list[float], usable: list[bool], best: int, threshold: float,
           higher: bool) -> float:
    """Decades of learning rate around ``best`` over which the sensitivity curve (``values`` joined
    by straight lines in log lr) stays on the good side of ``threshold`` (above it when ``higher``):
    from each last good point, to where the line towards the next point crosses the threshold; a
    point not ``usable`` (a seed diverged, infeasible) ends the range at the last good point, and so
    does the end of the grid (the width is then a lower bound)."""
    logs = [math.log10(lr) for lr in lrs]

    def good(i: int) -> bool:
        return usable[i] and not math.isnan(values[i]) and (
            values[i] >= threshold if higher else values[i] <= threshold)

    def edge(step: int) -> float:
        i = best
        while 0 <= i + step < len(lrs) and good(i + step):
            i += step
        j = i + step
        if not 0 <= j < len(lrs) or not usable[j] or math.isnan(values[j]):
            return logs[i]
        t = (values[i] - threshold) / (values[i] - values[j])  # where the line crosses, in (0, 1]
        return logs[i] + t * (logs[j] - logs[i])

    return edge(1) - edge(-1)


def robustness_table(cells: pd.DataFrame, accuracy_tolerance: float = 0.01,
                     loss_tolerance: float = 0.01, split: str = "test",
                     chosen_lrs: dict[str, float] | None = None) -> pd.DataFrame:
    """Per optimizer: its best learning rate (highest mean final accuracy on ``split`` among the
    learning rates where no seed diverged -- and, in a constrained study, every seed ended feasible;
    without accuracy the lowest final loss on ``split``, else the lowest final training loss), the
    mean final accuracy there on ``split``
    (``best_final_<split>_accuracy``) and on the test set (``best_final_test_accuracy``, with its
    std), the widths in decades of the accuracy and loss ranges, diverged runs, and a rank (best
    accuracy on ``split`` first, then width). ``chosen_lrs``: optimizer -> a best learning rate chosen
    already (by the second stage of ``[rerun_best]``, on the grid's seeds), taken as it is."""
    rows = []
    chosen = f"final_{split}_accuracy"
    for opt, g in cells.groupby("optimizer", sort=False):
        g = g.sort_values("lr").reset_index(drop=True)
        usable = (g.diverged == 0) & (g[f"{chosen}_mean"].notna() | g.final_train_loss_mean.notna())
        if "feasible" in g:  # a constrained study: only where every seed ended feasible
            usable &= g.feasible == g.seeds
        lrs = g.lr.tolist()
        row = {"optimizer": opt, "learning_rates": len(g), "diverged_runs": int(g.diverged.sum())}
        if not usable.any():
            rows.append({**row, "best_lr": np.nan, f"best_{chosen}": np.nan,
                         "best_final_test_accuracy": np.nan, "best_final_test_accuracy_std": np.nan,
                         "best_final_train_loss": np.nan, f"best_final_{split}_loss": np.nan,
                         "best_final_test_loss": np.nan, "best_final_test_loss_std": np.nan,
                         "epochs_to_target": np.nan, "steps_to_target": np.nan,
                         "width_accuracy_decades": np.nan,
                         "width_loss_decades": np.nan})
            continue
        has_acc = g[f"{chosen}_mean"][usable].notna().any()
        split_loss = g[f"final_{split}_loss_mean"]
        by_split_loss = split_loss[usable].notna().any()  # no accuracy: the split's loss, else training loss
        score = g[f"{chosen}_mean"] if has_acc else -split_loss if by_split_loss else -g.final_train_loss_mean
        best = lrs.index(chosen_lrs[opt]) if opt in (chosen_lrs or {}) else int(score.where(usable).idxmax())
        loss = g.final_train_loss_mean
        has_loss = loss.where(usable).notna().any()  # none: no training loss evaluated or logged
        loss_best = loss.where(usable).min()
        best_loss_i = int(loss.where(usable).idxmin()) if has_loss else None
        row.update({
            "best_lr": lrs[best],
            "best_at_edge": len(g) > 1 and best in (0, len(g) - 1),
            f"best_{chosen}": g[f"{chosen}_mean"][best],
            f"best_{chosen}_low": g[f"{chosen}_low"][best], f"best_{chosen}_high": g[f"{chosen}_high"][best],
            "best_final_test_accuracy": g.final_test_accuracy_mean[best],
            "best_final_test_accuracy_std": g.final_test_accuracy_std[best],
            "best_final_train_loss": loss[best],
            f"best_final_{split}_loss": split_loss[best],
            f"best_final_{split}_loss_low": g[f"final_{split}_loss_low"][best],
            f"best_final_{split}_loss_high": g[f"final_{split}_loss_high"][best],
            "best_final_test_loss": g.final_test_loss_mean[best],
            "best_final_test_loss_std": g.final_test_loss_std[best],
            "epochs_to_target": g.epochs_to_target_mean[best],
            "steps_to_target": g.steps_to_target_mean[best],
            "width_accuracy_decades": np.nan, "width_loss_decades": np.nan,
        })
        if "feasible" in g:
            row["final_violation"] = g.final_violation_mean[best]
        if len(g) > 1:
            if has_acc:
                acc = g[f"{chosen}_mean"]
                row["width_accuracy_decades"] = _width(lrs, acc.tolist(), usable.tolist(), best,
                                                       acc[best] - accuracy_tolerance, higher=True)
            if has_loss:
                row["width_loss_decades"] = _width(lrs, loss.tolist(), usable.tolist(), best_loss_i,
                                                   loss_best * (1 + loss_tolerance), higher=False)
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        if table[f"best_{chosen}"].notna().any():
            by, ascending = [f"best_{chosen}", "width_accuracy_decades"], [False, False]
        elif table[f"best_final_{split}_loss"].notna().any():
            by, ascending = [f"best_final_{split}_loss", "width_loss_decades"], [True, False]
        else:
            by, ascending = ["best_final_train_loss", "width_loss_decades"], [True, False]
        table = table.sort_values(by, ascending=ascending, na_position="last").reset_index(drop=True)
        table.insert(0, "rank", range(1, len(table) + 1))
        table["tied_with_best"] = _ties(table, by[0], higher=not ascending[0])
    return table


def _ties(table: pd.DataFrame, column: str, higher: bool) -> list[bool]:
    """Whether each row's interval of ``column`` overlaps the first row's (the first: True), the
    first being the best (the highest when ``higher``, else the lowest)."""
    if f"{column}_low" not in table or table[column].isna().all():
        return [i == 0 for i in range(len(table))]
    top = table[f"{column}_low" if higher else f"{column}_high"].iloc[0]
    near = table[f"{column}_high" if higher else f"{column}_low"]
    return [i == 0 or bool(pd.notna(v) and pd.notna(top) and (v >= top if higher else v <= top))
            for i, v in enumerate(near)]


def learning_curves(results: StudyResults, final: pd.DataFrame, best_lr: dict,
                    split: str = "test") -> pd.DataFrame:
    """Mean and std over seeds, by step, of the accuracy on ``split`` (as ``accuracy_*``) and the
    training loss at each optimizer's best lr."""
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
            "accuracy_mean": g[f"{split}_accuracy"].mean(),
            "accuracy_std": g[f"{split}_accuracy"].std(ddof=1),
            "train_loss_mean": g[loss_col].mean(), "train_loss_std": g[loss_col].std(ddof=1),
            "wall_time_mean": g.wall_time.mean(),
        }).reset_index(drop=True))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def by_series(results: StudyResults) -> StudyResults:
    """``results`` with each run's optimizer renamed to its series where the study has more axes than
    optimizer, lr and seed: its schedule where the study has more than one (``adam,
    cosine(warmup=0.05)``; ``constant`` beside the others), its batch size where it has more than one
    (``adam, batch 64``) and, constrained, its formulation and dual lr (``adam, dual lr 0.01``,
    ``adam, augmented_lagrangian c=10, dual lr 0.01``). Unchanged otherwise."""
    runs = results.runs
    # an axis of one value names no series (the study file on the page says which it was)
    scheduled = "schedule" in runs and runs.schedule.nunique(dropna=False) > 1
    batched = "batch_size" in runs and runs.batch_size.nunique(dropna=False) > 1
    if not results.constrained and not scheduled and not batched:
        return results
    form = "" if results.formulation == "lagrangian" else f"{results.formulation} "

    def label(o: str, s: str | None, b, d: float, c: float) -> str:
        parts = [o] + ([s if isinstance(s, str) else "constant"] if scheduled else [])
        parts += [f"batch {int(b)}"] if batched and pd.notna(b) else []
        if results.constrained:
            parts += [f"{form}c={c:g}"] if pd.notna(c) else [form.strip()] if form else []
            parts += [f"dual lr {d:g}"] if pd.notna(d) else []
        return ", ".join(parts)

    def rename(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        none = [None] * len(frame)
        frame["optimizer"] = [label(o, s, b, d, c) for o, s, b, d, c in zip(
            frame.optimizer, frame.schedule if scheduled else none, frame.batch_size if batched else none,
            frame.dual_lr if results.constrained else none, frame.penalty if results.constrained else none,
            strict=True)]
        return frame

    return replace(results, runs=rename(results.runs), evals=rename(results.evals),
                   train_log=rename(results.train_log))


def summarize(results: StudyResults, target_fraction: float = 0.95, target_accuracy: float | None = None,
              accuracy_tolerance: float = 0.01, loss_tolerance: float = 0.01,
              feasibility_tolerance: float = FEASIBILITY_TOLERANCE,
              target_loss: float | None = None) -> Summary:
    """All the tables of a report, chosen on the validation set where the study has one (else on the
    test set). The convergence target is ``target_accuracy`` when given, else ``target_fraction`` of
    the best mean final accuracy of any cell on that split; without accuracy, ``target_loss`` is a
    target on that split's loss (default: the best mean final loss / ``target_fraction``,
    :func:`task_target`), which the ranking across tasks measures."""
    notes = []
    results = by_series(results)
    split = "val" if results.has_validation else "test"
    if split == "test":
        notes.append("This study has no validation set: best learning rates, ranks and targets are chosen "
                     "on the test set, which flatters the chosen settings. A study holds one out by default "
                     "(validation = 0.1).")
    missing = results.runs[~results.runs.status.isin(["completed", "diverged"])]
    if len(missing):
        notes.append(f"{len(missing)} of {len(results.runs)} runs are not finished "
                     f"({', '.join(f'{n} {s}' for s, n in missing.status.value_counts().items())}); "
                     "the tables use the finished ones only.")
    final = final_metrics(results, feasibility_tolerance=feasibility_tolerance, split=split)
    if target_accuracy is None and final[f"final_{split}_accuracy"].notna().any():
        # the best mean final accuracy of a cell (over the seeds that did not diverge)
        best = final.groupby(CELL)[f"final_{split}_accuracy"].mean().max()
        target_accuracy = target_fraction * float(best)
    if target_accuracy is not None:
        final = with_convergence(final, results.evals, target_accuracy, split)
    cells = cell_table(final, split)
    if target_accuracy is None:
        target_loss = task_target(cells, split, False, target_fraction, target_loss)
        notes.append("No accuracy in this study (a regression task?): no convergence target on accuracy"
                     + ("." if target_loss is None else f"; the time to a target on the {SPLITS[split]} loss "
                        f"({target_loss:.4g}) is measured in the ranking of a study of several tasks."))
    chosen_lrs, drawn = second_stage_choices(results, final)
    if chosen_lrs:
        seeds = results.meta["definition"]["rerun_best"]["seeds"]
        notes.append("DeepOBS's second stage: each optimizer's best learning rate, chosen on the grid's "
                     f"seeds, was run with the seeds {seeds} too; its numbers are over all of them, the "
                     "other learning rates' over the grid's seeds.")
    robust = robustness_table(cells, accuracy_tolerance, loss_tolerance, split, chosen_lrs)
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
    for r in robust.itertuples():
        if getattr(r, "best_at_edge", False) is True:
            lrs = cells[cells.optimizer == r.optimizer].lr
            end = "largest" if r.best_lr == lrs.max() else "smallest"
            notes.append(f"{r.optimizer}: its best learning rate {r.best_lr:g} is the {end} of its grid: the "
                         "grid did not bracket the optimum, and a better one may lie beyond it.")
    tied = robust[robust.tied_with_best].optimizer.tolist() if "tied_with_best" in robust else []
    if len(tied) > 1:
        notes.append(f"Tied with the best (their 95 % intervals over seeds overlap the top one's): "
                     f"{', '.join(tied)}. Their order among themselves is noise, not a finding.")
    curves = learning_curves(results, final, best_lr, split)
    panels = {}
    if results.constrained:
        notes.append(f"A run ends feasible when its largest final violation is <= {feasibility_tolerance:g} "
                     "(|h| for an equality). Best learning rates and widths count only the learning rates "
                     "where every seed ended feasible.")
        never = sorted(set(cells.optimizer) - set(best_lr))
        if never:
            notes.append(f"No learning rate of {'; '.join(never)} ended feasible on every seed: no best "
                         "learning rate; its panels show the learning rate of the smallest final violation.")
        panels = constrained_runs(results, final, cells, best_lr)
    loss_label = "training loss" if results.evals.train_loss.notna().any() else "batch loss"
    tuning = tuning_budget(drawn, split)  # the grid's runs: a random search draws from them alone
    return Summary(final, cells, robust, curves, target_accuracy,
                   missing[["run_id", "optimizer", "lr", "seed", "status", "error"]], notes,
                   dict(results.constraints), feasibility_tolerance, panels, split,
                   colours(list(dict.fromkeys(results.runs.optimizer))), tuning, loss_label, target_loss)


def second_stage_choices(results: StudyResults,
                         final: pd.DataFrame) -> tuple[dict[str, float], pd.DataFrame]:
    """In a study with ``[rerun_best]``: optimizer (series) -> the learning rate its second stage
    chose (where runs of seeds outside the grid's were made), and ``final``'s rows of the grid's
    seeds; else ({}, ``final``)."""
    definition = results.meta.get("definition", {})
    if "rerun_best" not in definition:
        return {}, final
    grid_seeds = {point[2] for point in definition.get("grid", [])}
    rerun = final[~final.seed.isin(grid_seeds)]
    return rerun.groupby("optimizer", sort=False).lr.first().to_dict(), final[final.seed.isin(grid_seeds)]


def colours(optimizers: list[str]) -> dict[str, str]:
    """One colour per optimizer, in the study's order (tab10, then tab20's other shades, then repeats)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    palette = [colormaps["tab10"](i) for i in range(10)] + [colormaps["tab20"](2 * i + 1) for i in range(10)]
    return {o: to_hex(palette[i % len(palette)]) for i, o in enumerate(optimizers)}


def constrained_runs(results: StudyResults, final: pd.DataFrame, cells: pd.DataFrame,
                     best_lr: dict) -> dict[str, pd.DataFrame]:
    """Per series, the train_log of the lowest seed at its best learning rate (else at the learning
    rate of the smallest mean final violation): the runs that the four panels show."""
    chosen = {}
    for opt, g in cells.groupby("optimizer", sort=False):
        lr = best_lr.get(opt)
        if lr is None:
            if g.final_violation_mean.isna().all():
                continue  # every seed diverged everywhere
            lr = g.lr[g.final_violation_mean.idxmin()]
        runs = final[(final.optimizer == opt) & (final.lr == lr) & (final.status != "diverged")]
        if len(runs):
            run_id = runs.sort_values("seed").run_id.iloc[0]
            chosen[f"{opt}, lr {lr:g}, seed {runs.seed.min()}"] = \
                results.train_log[results.train_log.run_id == run_id].sort_values("step")
    return chosen
