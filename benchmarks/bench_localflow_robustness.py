"""Robustness to the learning rate of SGD, the curvature scheduler, the exact flow and Adam.

The claim under test: the local flow (``localflow-sgd``, ``exact-flow``) widens SGD's usable range of
learning rates (flow times h) by at least 2 decades without a worse best result. Four tasks (``TASKS``),
each a study of optimizers x h (log grid 1e-4 .. 1e2, 13 points) x seeds run through ``optimlab.study``
(sgd and adam trained together by the vectorized executor, the local-flow optimizers run by run) into
``OUT/<task>/study.db``; a study already in its store is not run again (delete the folder to redo it).

Per task and optimizer it prints the best h and its mean final training loss and test accuracy, and
three widths in decades, each the contiguous run of grid points around the optimizer's own best one:

* strict (``optimlab.report.summarize``): final training loss within 1 % of the optimizer's own best
  (loss), mean final test accuracy within 1 point of its own best (acc);
* usable: no seed diverged and, for least squares, the mean final training loss at most
  ``--loss-factor`` (2) times the best mean of any optimizer on the task; for classifiers, the mean test
  accuracy at most ``--acc-points`` (2) points below the best mean of any optimizer on the task and the
  mean final training loss below the loss at initialization;
* stable: no seed diverged and the mean final training loss below the loss at initialization;

and the number of diverged runs (non-finite loss; they stop the run). Figures: final training loss and
test accuracy against h, one line per optimizer (mean over seeds, band min..max, x where a seed diverged).

Run: python benchmarks/bench_localflow_robustness.py [--tasks lls mnist01 fashion mlp] [--quick]
                                                     [--out DIR] [--figures docs/figures]
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from optimlab.report import summarize
from optimlab.study import ExecutorSpec, load_results, parse_study, run_study

ALL = ["sgd", "localflow-sgd", "exact-flow", "adam"]
# task -> study settings; budgets chosen so that the full benchmark takes ~20 min on one CPU thread
TASKS = {
    "lls": dict(dataset="lls:n=1000,p=50,cond=1000,noise=0.1,seed=0", model="linear", batch_size=50,
                epochs=5, optimizers=ALL),
    "mnist01": dict(dataset="mnist-10k:0,1", model="logreg", batch_size=64, epochs=3, optimizers=ALL),
    "fashion": dict(dataset="fashion-mnist", model="logreg", batch_size=128, epochs=2, optimizers=ALL),
    "mlp": dict(dataset="fashion-mnist", model="mlp", batch_size=128, epochs=3,
                optimizers=["sgd", "localflow-sgd", "adam"]),
}


def study_text(task: str, settings: dict, points: int, seeds: list[int]) -> str:
    s = settings
    return (f'name = "localflow-{task}"\ndataset = "{s["dataset"]}"\nmodel = "{s["model"]}"\n'
            f'batch_size = {s["batch_size"]}\nepochs = {s["epochs"]}\ndevice = "cpu"\n'
            'validation = 0\n'  # the whole training set, as in docs/LOCAL_FLOW_EXPERIMENTS.md
            f'optimizers = {s["optimizers"]}\n'
            f'learning_rates = {{ from = 1e-4, to = 1e2, count = {points} }}\n'
            f'seeds = {seeds}\n\n[executor]\nkind = "vectorized"\n')


def span(good: list[bool], best: int) -> tuple[int, int]:
    """The first and last index of the contiguous run of ``good`` points that contains ``best``."""
    lo = hi = best
    while lo > 0 and good[lo - 1]:
        lo -= 1
    while hi < len(good) - 1 and good[hi + 1]:
        hi += 1
    return lo, hi


def ranges(cells: pd.DataFrame, initial_loss: float, classify: bool, loss_factor: float,
           acc_points: float) -> pd.DataFrame:
    """Per optimizer: the usable and stable ranges of h and their widths in decades (module docstring)."""
    cells = cells.sort_values(["optimizer", "lr"]).reset_index(drop=True)
    ok = cells.diverged == 0
    loss, acc = cells.final_train_loss_mean, cells.final_test_accuracy_mean
    cells["stable"] = ok & (loss < initial_loss)
    if classify:
        cells["usable"] = cells.stable & (acc >= acc[ok].max() - acc_points / 100)
    else:
        cells["usable"] = ok & (loss <= loss_factor * loss[ok].min())
    cells["score"] = acc if classify else -loss
    rows = []
    for opt, g in cells.groupby("optimizer", sort=False):
        g = g.reset_index(drop=True)
        row = {"optimizer": opt}
        for kind in ("usable", "stable"):
            if not g[kind].any():
                row.update({f"{kind}_decades": np.nan, f"{kind}_range": "none"})
                continue
            lo, hi = span(g[kind].tolist(), int(g.score.where(g[kind]).idxmax()))
            row.update({f"{kind}_decades": math.log10(g.lr[hi] / g.lr[lo]),
                        f"{kind}_range": f"{g.lr[lo]:.3g}..{g.lr[hi]:.3g}"})
        rows.append(row)
    return pd.DataFrame(rows)


def best(cells: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer: the h of the lowest mean final training loss and that loss; the h of the highest
    mean test accuracy (ties: the lower loss) and that accuracy; over the cells where no seed diverged."""
    rows = []
    for opt, g in cells[cells.diverged == 0].groupby("optimizer"):
        i = g.final_train_loss_mean.idxmin()
        row = {"optimizer": opt, "h_loss": g.lr[i], "loss": g.final_train_loss_mean[i]}
        if g.final_test_accuracy_mean.notna().any():
            j = g.sort_values(["final_test_accuracy_mean", "final_train_loss_mean"],
                              ascending=[False, True]).index[0]
            row.update({"h_acc": g.lr[j], "acc": g.final_test_accuracy_mean[j]})
        rows.append(row)
    return pd.DataFrame(rows)


def report(task: str, db: Path, args) -> pd.DataFrame:
    """The table of one task (printed), from its study store."""
    results = load_results(db)
    summary = summarize(results)
    cells = summary.cells
    classify = cells.final_test_accuracy_mean.notna().any()
    initial = float(results.evals[results.evals.step == 0].train_loss.mean())
    strict = summary.robustness[["optimizer", "width_loss_decades", "width_accuracy_decades",
                                 "diverged_runs"]]
    table = best(cells).merge(strict, on="optimizer").merge(
        ranges(cells, initial, classify, args.loss_factor, args.acc_points), on="optimizer")
    table.insert(0, "task", task)
    table = table.sort_values("optimizer", key=lambda c: c.map(ALL.index)).reset_index(drop=True)
    t = TASKS[task]
    print(f"\n== {task}: {t['dataset']}, {t['model']}, batch {t['batch_size']}, {t['epochs']} epochs; "
          f"mean loss at initialization {initial:.4g}; widths in decades")
    print(f"{'optimizer':<14}{'h(loss)':>8}{'min loss':>10}{'h(acc)':>8}{'acc %':>7}{'strict':>7}"
          f"{'strict':>7}{'usable':>7}  {'usable h':<18}{'stable':>7}  {'stable h':<18}{'diverged':>9}"
          f"\n{'':<47}{'loss':>7}{'acc':>7}")
    for r in table.itertuples():
        acc = f"{r.h_acc:>8.3g}{100 * r.acc:>7.2f}" if classify else f"{'-':>8}{'-':>7}"
        print(f"{r.optimizer:<14}{r.h_loss:>8.3g}{r.loss:>10.4g}{acc}{r.width_loss_decades:>7.2f}"
              f"{r.width_accuracy_decades:>7.2f}{r.usable_decades:>7.2f}  {r.usable_range:<18}"
              f"{r.stable_decades:>7.2f}  {r.stable_range:<18}{r.diverged_runs:>9d}")
    cells.to_csv(db.parent / "cells.csv", index=False)
    plot(task, cells, results, classify, db.parent / f"localflow_robustness_{task}.png")
    return table


def plot(task: str, cells: pd.DataFrame, results, classify: bool, path: Path) -> None:
    """Final training loss (and test accuracy) against h: mean over seeds, band min..max, x: diverged."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    final = summarize(results).final
    panels = [("final_train_loss", "final training loss")]
    if classify:
        panels.append(("final_test_accuracy", "final test accuracy"))
    fig = Figure(figsize=(4.2 * len(panels), 3.2), dpi=72)
    axes = [fig.add_subplot(1, len(panels), i + 1) for i in range(len(panels))]
    for opt in [o for o in ALL if o in set(cells.optimizer)]:
        g = final[final.optimizer == opt].groupby("lr")
        for ax, (col, label) in zip(axes, panels, strict=True):
            mean = g[col].mean()
            line, = ax.plot(mean.index, mean.values, "o-", ms=3, label=opt)
            ax.fill_between(mean.index, g[col].min().values, g[col].max().values, alpha=0.2,
                            color=line.get_color())
            bad = g.status.apply(lambda s: (s == "diverged").any())
            if bad.any():
                top = ax.get_ylim()[1] if col.endswith("accuracy") else np.nanmax(final[col]) * 3
                ax.plot(bad.index[bad], [top] * int(bad.sum()), "x", color=line.get_color(), ms=6)
            ax.set_xscale("log")
            ax.set_xlabel("h (learning rate / flow time)")
            ax.set_ylabel(label)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{task}: {TASKS[task]['dataset'].split(',')[0]} {TASKS[task]['model']} "
                 f"(x: a seed diverged)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    from PIL import Image  # a 64-colour palette: a few tens of KB

    Image.open(path).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(path, optimize=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--quick", action="store_true", help="7 values of h (one per decade), seed 0 only")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--loss-factor", type=float, default=2.0,
                   help="usable (least squares): loss <= this x best")
    p.add_argument("--acc-points", type=float, default=2.0,
                   help="usable (classifiers): accuracy >= best - this")
    p.add_argument("--out", default="runs/bench_localflow_robustness")
    p.add_argument("--figures", default=None, help="also copy the figures into this folder")
    args = p.parse_args()
    torch.set_num_threads(1)
    points, seeds = (7, [0]) if args.quick else (13, args.seeds)
    out = Path(args.out) / ("quick" if args.quick else "full")

    tables = []
    for task in args.tasks:
        start = time.perf_counter()
        spec = parse_study(study_text(task, TASKS[task], points, seeds), source=task)
        outcome = run_study(spec, out=out / task, executor=ExecutorSpec(kind="vectorized"))
        print(f"[{task}: {len(spec.grid)} runs, {time.perf_counter() - start:.0f} s]", flush=True)
        tables.append(report(task, outcome.store, args))
        if args.figures:
            Path(args.figures).mkdir(parents=True, exist_ok=True)
            shutil.copy(out / task / f"localflow_robustness_{task}.png", args.figures)
    pd.concat(tables).to_csv(out / "robustness.csv", index=False)
    print(f"\ntables: {out / 'robustness.csv'}; per-cell means: {out}/<task>/cells.csv")


if __name__ == "__main__":
    main()
