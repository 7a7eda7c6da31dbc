"""The contest of learning-rate selection: what each way of choosing a learning rate gives, and what it
costs, on the offline suite's tasks (docs/LR_SELECTION.md).

Ways, each trained with the same seeds on each task, at a constant rate (the contest is about the rate,
not the schedule; the schedule-free methods take none):

* the grid: SGD and Adam over 11 half-decade rates from 1e-4 to 10; its best rate of each is chosen on
  the validation set (the mean final validation metric over the seeds), then read on the test set;
* the range test (``optimlab.lr_find``, SGD, seed 0 of the task, 100 steps from 1e-6 to 100): SGD
  trained at each of its three suggestions (steepest, valley, minimum/10);
* learning-rate-free, at their defaults: prodigy, dadapt-adam, dadapt-sgd, dog, schedulefree-adamw,
  schedulefree-sgd;
* the local flow: localflow-sgd (guarded) at flow time h = 0.1 (its default) and h = 10 (large: the
  curvature sets the rate), and at h = 10 measuring every step (``every=1``); exact-flow at h = 0.1
  and 10 where the model is linear.

Per task and way: the final test metric (accuracy, or loss for a task without one) as mean and
min..max over the seeds, its gap to the grid's best (the better of SGD's and Adam's, chosen on
validation), the runs diverged, and the compute spent choosing and training: runs x steps (the grid
counts every run of its 11 rates, the range test its sweep's steps) and wall time (a vectorized group's
time shared equally by its runs; the range test timed apart). A mean is over the seeds that did not
diverge. One CPU thread. Stores are kept in ``OUT/<task>/study.db``; a second run trains only what
the store lacks (delete it to redo).

Run: python benchmarks/bench_lr_selection.py [--tasks ...] [--seeds 0 1 2] [--out DIR]
                                             [--figures docs/figures] [--table docs/lr_selection.md]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from optimlab import lr_find
from optimlab.report.summaries import final_metrics
from optimlab.study import load_results, parse_study, run_study
from optimlab.study.suite import SUITE
from optimlab.training import TrainConfig

# the suite's tasks with the budgets of examples/suite.toml (scaled down from DeepOBS's for a 2-core CPU)
TASKS = {
    "quadratic_deep": {},
    "lls": {},
    "mnist10k_logreg": {"epochs": 3},
    "mnist10k_mlp": {"epochs": 3, "eval_every": 27},
    "fmnist_logreg": {"epochs": 2, "eval_every": 130},
    "fmnist_mlp": {"iterations": 300, "eval_every": 100},
}
LINEAR = {"lls", "mnist10k_logreg", "fmnist_logreg"}  # models the exact flow takes
GRID = [float(f"{10 ** (-4 + k / 2):.3g}") for k in range(11)]
FREE = ["prodigy", "dadapt-adam", "dadapt-sgd", "dog", "schedulefree-adamw", "schedulefree-sgd"]
SUGGESTIONS = {"steepest": "sgd-steepest", "valley": "sgd-valley", "minimum/10": "sgd-min10"}
FLOW_TIMES = [0.1, 10.0]
RANGE = {"start": 1e-6, "end": 100.0, "steps": 100}


def task_fields(task: str) -> dict:
    return {**SUITE[task], **TASKS[task]}


def toml_value(v) -> str:
    return json.dumps(v) if not isinstance(v, bool) else str(v).lower()


def range_test(task: str, out: Path) -> dict:
    """The range test of SGD on the task (seed 0), cached in OUT/<task>/lr_find.json."""
    path = out / "lr_find.json"
    if path.exists():
        return json.loads(path.read_text())
    fields = {k: v for k, v in task_fields(task).items() if k not in ("epochs", "iterations", "eval_every")}
    started = time.perf_counter()
    result = lr_find(TrainConfig(**fields, optimizer="sgd", seed=0, device="cpu"), **RANGE)
    seconds = time.perf_counter() - started
    result.save(out)
    saved = json.loads(path.read_text())
    saved["seconds"] = seconds
    path.write_text(json.dumps(saved, indent=1) + "\n")
    return saved


def study_text(task: str, suggestions: dict, seeds: list[int]) -> str:
    optimizers = [f'{{ name = "{name}", learning_rates = {GRID} }}' for name in ("sgd", "adam")]
    for rule, label in SUGGESTIONS.items():
        if suggestions.get(rule):
            optimizers.append(f'{{ name = "{label}", class = "torch.optim:SGD", '
                              f'learning_rates = [{suggestions[rule]:.6g}] }}')
    optimizers += [f'{{ name = "{name}", learning_rates = [{default_lr(name):g}] }}' for name in FREE]
    optimizers.append(f'{{ name = "localflow-sgd", learning_rates = {FLOW_TIMES} }}')
    # measuring (and checking) every step: a rate held over 9 unchecked batches can blow up
    optimizers.append(f'{{ name = "localflow-sgd(every=1)", learning_rates = {FLOW_TIMES[-1:]} }}')
    if task in LINEAR:
        optimizers.append(f'{{ name = "exact-flow", learning_rates = {FLOW_TIMES} }}')
    lines = [f'name = "lr-selection-{task}"', 'device = "cpu"', "eval_train = false",
             f"learning_rates = {GRID}", f"seeds = {seeds}",
             "optimizers = [\n    " + ",\n    ".join(optimizers) + ",\n]", "",
             "[[tasks]]", f'suite = "{task}"']
    lines += [f"{k} = {toml_value(v)}" for k, v in TASKS[task].items()]
    return "\n".join(lines) + '\n\n[executor]\nkind = "vectorized"\n'


def default_lr(name: str) -> float:
    from optimlab.registry import resolve_optimizer

    return resolve_optimizer(name).default_lr()


def way(optimizer: str, lr: float) -> str | None:
    """The way of choosing a rate that a run belongs to (None: a grid run)."""
    if optimizer in ("sgd", "adam"):
        return None
    if optimizer.startswith(("localflow-sgd", "exact-flow")):
        return f"{optimizer} h={lr:g}"
    return optimizer


def contest(task: str, db: Path, sweep: dict) -> pd.DataFrame:
    """One row per way: test metric (mean, min, max), gap to the grid's best, diverged, compute."""
    results = load_results(db)
    final = final_metrics(results)
    runs = results.runs.set_index("run_id")
    # a vectorized group's wall time, shared equally by its runs ("group of N runs")
    size = runs.wall_time_of.str.extract(r"group of (\d+) runs", expand=False).fillna(1).astype(int)
    final["share"] = final.wall_time / final.run_id.map(size)
    final["steps"] = final.run_id.map(runs.steps)
    accuracy = final.final_test_accuracy.notna().any()
    metric = "accuracy" if accuracy else "loss"
    better = max if accuracy else min
    rows = []
    grid_cost = {}
    for opt in ("sgd", "adam"):  # the grid's best rate, chosen on validation
        g = final[final.optimizer == opt]
        means = g.groupby("lr")[f"final_val_{metric}"].mean()
        complete = g.groupby("lr").status.apply(lambda s: (s == "completed").all())
        means = means[complete]
        lr = (means.idxmax() if accuracy else means.idxmin()) if len(means) else math.nan
        rows.append(_row(f"grid: {opt}", g[g.lr == lr], metric, g, lr))
        grid_cost[opt] = rows[-1]
    for name, g in final[final.optimizer.isin(["sgd", "adam"]) == False].groupby(  # noqa: E712
            [final.optimizer, final.lr]):
        label = way(*name)
        row = _row(label, g, metric, g, name[1])
        if label.startswith("sgd-"):  # the range test's sweep is part of the cost
            row["runs_x_steps"] += len(sweep["lr"])
            row["seconds"] += sweep["seconds"]
            row["lr"] = name[1]
        rows.append(row)
    order = ["grid: sgd", "grid: adam", *SUGGESTIONS.values(), *FREE]
    table = pd.DataFrame(rows)
    rank = {w: i for i, w in enumerate(order)}
    table = table.sort_values("way", key=lambda c: c.map(lambda w: f"{rank.get(w, len(order)):02d} {w}"))
    table = table.reset_index(drop=True)
    best = better(table.loc[table.way.str.startswith("grid"), "mean"])
    table["gap"] = (table["mean"] - best) if accuracy else (table["mean"] / best)
    table.insert(0, "task", task)
    table["metric"] = metric
    return table


def _row(label: str, chosen: pd.DataFrame, metric: str, spent: pd.DataFrame, lr: float) -> dict:
    values = chosen[f"final_test_{metric}"]
    return {"way": label, "lr": lr, "mean": values.mean(), "low": values.min(), "high": values.max(),
            "seeds": len(chosen), "diverged": int((chosen.status == "diverged").sum()),
            "runs_x_steps": int(spent.steps.sum()), "seconds": float(spent.share.sum())}


def markdown(table: pd.DataFrame) -> str:
    lines = []
    for task, t in table.groupby("task", sort=False):
        metric = t.metric.iloc[0]
        unit = "test accuracy %" if metric == "accuracy" else "test loss"
        gap = "gap (points)" if metric == "accuracy" else "x grid's best"
        lines += [f"\n**{task}** ({unit}; grid's best = the better of SGD's and Adam's, chosen on "
                  "validation)\n",
                  f"| way | lr | {unit} (min..max) | {gap} | diverged | runs x steps | seconds |",
                  "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
        for r in t.itertuples():
            scale = 100 if metric == "accuracy" else 1
            value = (f"{scale * r.mean:.2f} ({scale * r.low:.2f}..{scale * r.high:.2f})"
                     if metric == "accuracy" else f"{r.mean:.4g} ({r.low:.4g}..{r.high:.4g})")
            g = _gap(r.gap, metric)
            if r.diverged == r.seeds:
                value = "every seed diverged"
            lines.append(f"| {r.way} | {r.lr:.3g} | {value} | {g} | {r.diverged}/{r.seeds} | "
                         f"{r.runs_x_steps:,} | {r.seconds:.1f} |")
    return "\n".join(lines) + "\n"


def _gap(gap: float, metric: str) -> str:
    if not math.isfinite(gap):
        return "-"
    return f"{100 * gap:+.2f}" if metric == "accuracy" else f"{gap:.3f}"


def summary(table: pd.DataFrame) -> str:
    """Way x task: the gap to the grid's best (points of accuracy, or the loss as a multiple of the
    grid's best), with the seeds diverged; then each way's runs x steps and wall time as multiples of
    Prodigy's (one run per seed), the median over the tasks."""
    tasks = list(dict.fromkeys(table.task))
    units = {t: "points" if table[table.task == t].metric.iloc[0] == "accuracy" else "x loss" for t in tasks}
    head = ["| way | " + " | ".join(f"{t} ({units[t]})" for t in tasks) + " | runs x steps | wall time |",
            "| --- |" + " ---: |" * (len(tasks) + 2)]
    rows = []
    for w in dict.fromkeys(table.way):
        cells, cost, seconds = [], [], []
        for t in tasks:
            r = table[(table.task == t) & (table.way == w)]
            if r.empty:
                cells.append("")
                continue
            r = r.iloc[0]
            text = "diverged" if r.diverged == r.seeds else _gap(r.gap, r.metric)
            cells.append(text + (f" ({r.diverged}/{r.seeds} div.)" if 0 < r.diverged < r.seeds else ""))
            one = table[(table.task == t) & (table.way == "prodigy")].iloc[0]
            cost.append(r.runs_x_steps / one.runs_x_steps)
            seconds.append(r.seconds / one.seconds)
        rows.append(f"| {w} | " + " | ".join(cells)
                    + f" | {np.median(cost):.2g}x | {np.median(seconds):.2g}x |")
    return "\n".join(head + rows) + "\n"


def figure(table: pd.DataFrame, path: Path) -> None:
    """One panel per task: each way's test metric (mean, bar: min..max), the grid's best dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(table.task))
    cols = 3
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        t = table[table.task == task].reset_index(drop=True)
        metric = t.metric.iloc[0]
        scale = 100 if metric == "accuracy" else 1
        y = np.arange(len(t))
        colours = ["C0" if w.startswith("grid") else "C1" if w.startswith("sgd-") else
                   "C2" if w.startswith(("localflow", "exact")) else "C3" for w in t.way]
        ax.errorbar(scale * t["mean"], y, xerr=[scale * (t["mean"] - t.low), scale * (t.high - t["mean"])],
                    fmt="none", ecolor="0.6", capsize=2)
        ax.scatter(scale * t["mean"], y, c=colours, zorder=3)
        best = (t.loc[t.way.str.startswith("grid"), "mean"].max() if metric == "accuracy"
                else t.loc[t.way.str.startswith("grid"), "mean"].min())
        ax.axvline(scale * best, color="C0", linestyle="--", linewidth=1)
        ax.set_yticks(y, [f"{w}{' x' if d else ''}" for w, d in zip(t.way, t.diverged, strict=True)],
                      fontsize=7)
        ax.invert_yaxis()
        if metric == "loss":
            ax.set_xscale("log")
        finite = scale * t["mean"][np.isfinite(t["mean"])]
        if metric == "accuracy" and len(finite):
            ax.set_xlim(max(0, min(finite.min(), scale * best - 20)), min(100, finite.max() + 2))
        ax.set_xlabel(f"final test {metric}{' %' if metric == 'accuracy' else ''}")
        ax.set_title(task, fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.suptitle("Choosing a learning rate: each way's final test metric (mean, min..max over seeds; "
                 "dashed: the grid's best; x: a seed diverged)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=80)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/bench_lr_selection")
    p.add_argument("--figures", default=None, help="also write the figures into this folder")
    p.add_argument("--table", default=None, help="also write the markdown tables to this file")
    args = p.parse_args()
    torch.set_num_threads(1)
    tables = []
    for task in args.tasks:
        out = Path(args.out) / task
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        sweep = range_test(task, out)
        spec = parse_study(study_text(task, sweep["suggestions"], args.seeds))
        # a store from an earlier run gains the ways added since (the runs it has are kept)
        outcome = run_study(spec, out=out, executor="vectorized", extend=(out / "study.db").exists())
        if outcome is not None and outcome.failed:
            print(f"note: {task}: {outcome.failed} runs failed")
        table = contest(task, out / "study.db", sweep)
        tables.append(table)
        print(f"[{task}: {time.perf_counter() - started:.0f} s; range test stopped: {sweep['stopped']}; "
              f"suggestions {sweep['suggestions']}]")
        print(markdown(table))
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(Path(args.out) / "contest.csv", index=False)
    print(summary(table))
    if args.table:
        Path(args.table).write_text(summary(table) + markdown(table))
    folder = Path(args.figures) if args.figures else Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    figure(table, folder / "lr_selection.png")
    print(f"figure: {folder / 'lr_selection.png'}")


if __name__ == "__main__":
    main()
