"""The figures of a study report (matplotlib, PNG): learning-rate sensitivity, learning curves at
each optimizer's best learning rate, convergence speed, and an optimizer x learning-rate heatmap."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from optimlab.report.summaries import Summary


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, rect: tuple = (0, 0, 1, 1)) -> Path:
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _metric_panels(has_accuracy: bool, accuracy: tuple[str, str], loss: tuple[str, str], *more):
    """A figure with the accuracy panel (when the study has accuracies), the loss panel and ``more``
    side by side; returns it and the (axes, (column, label)) pairs."""
    panels = ([accuracy] if has_accuracy else []) + [loss, *more]
    fig, axes = _plt().subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    return fig, list(zip(axes[0], panels, strict=True))


def _band(ax, x, mean, std, label: str, **style) -> str:
    """A mean line with the +- std band shaded in its colour; returns the colour."""
    (line,) = ax.plot(x, mean, label=label, **style)
    std = std.fillna(0)
    ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=line.get_color())
    return line.get_color()


def _log_y(ax, values, x=None) -> None:
    """A log y axis for a loss; a loss never recorded (no training-set evaluation, no logged batch
    loss) is said so in the panel instead (``x``: the panel's x values, for its limits)."""
    if (values > 0).any():
        ax.set_yscale("log")
    else:
        if x is not None and ax.get_xscale() == "log":  # nothing drawn: a log axis needs its limits
            ax.set_xlim(float(x.min()) / 1.5, float(x.max()) * 1.5)
        ax.text(0.5, 0.5, "not recorded\n(eval_train = false and no logged loss)", ha="center",
                va="center", transform=ax.transAxes, color="grey")


def sensitivity(summary: Summary, path: Path) -> Path | None:
    """Final accuracy on the selection split and final training loss against the learning rate (log
    axis), one line per optimizer, the spread over seeds shaded (mean +- std); diverged cells marked
    with x."""
    cells = summary.cells
    if cells.empty or cells.groupby("optimizer").lr.nunique().max() < 2:
        return None  # one learning rate each: no curve to draw
    violation = [("final_violation", "final violation (largest)")] if summary.constraints else []
    chosen = f"final_{summary.split}_accuracy"
    fig, panels = _metric_panels(cells[f"{chosen}_mean"].notna().any(),
                                 (chosen, f"final {summary.split_label} accuracy"),
                                 ("final_train_loss", f"final {summary.loss_label}"), *violation)
    for ax, (col, label) in panels:
        for opt, g in cells.groupby("optimizer", sort=False):
            g = g.sort_values("lr")
            mean = g[f"{col}_mean"]
            color = _band(ax, g.lr, mean, g[f"{col}_std"], opt, marker="o", color=summary.colours.get(opt))
            bad = g[g.diverged > 0]
            # at the edge of its own curve; an optimizer diverged everywhere: of the panel's
            at = mean if mean.notna().any() else cells[f"{col}_mean"]
            if len(bad) and at.notna().any():
                y = np.nanmin(at) if col.endswith("accuracy") else np.nanmax(at)
                ax.scatter(bad.lr, [y] * len(bad), marker="x", color=color)
        ax.set_xscale("log")
        if col == "final_train_loss":
            _log_y(ax, cells[f"{col}_mean"], cells.lr)
        if col == "final_violation":
            ax.axhline(summary.feasibility_tolerance, color="grey", ls="--", lw=1, label="feasible below")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    panels[0][0].legend(fontsize=8)
    fig.suptitle("Sensitivity to the learning rate (mean +- std over seeds; x: a seed diverged)")
    return _save(fig, path)


def learning_curves(summary: Summary, path: Path) -> Path | None:
    """Accuracy on the selection split and training loss against the epoch at each optimizer's best
    learning rate."""
    curves = summary.curves
    if curves.empty:
        return None
    fig, panels = _metric_panels(curves.accuracy_mean.notna().any(),
                                 ("accuracy", f"{summary.split_label} accuracy"),
                                 ("train_loss", summary.loss_label))
    for ax, (col, label) in panels:
        for (opt, lr), g in curves.groupby(["optimizer", "lr"], sort=False):
            _band(ax, g.epoch, g[f"{col}_mean"], g[f"{col}_std"], f"{opt} (lr {lr:g})",
                  color=summary.colours.get(opt))
        if col == "train_loss":
            _log_y(ax, curves[f"{col}_mean"])
        if col == "accuracy" and summary.target_accuracy is not None:
            ax.axhline(summary.target_accuracy, color="grey", ls="--", lw=1, label="target")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    panels[0][0].legend(fontsize=8)
    fig.suptitle("Learning curves at each optimizer's best learning rate (mean +- std over seeds)")
    return _save(fig, path)


def convergence(summary: Summary, path: Path) -> Path | None:
    """Steps to reach the target accuracy at each optimizer's best learning rate (bars), with how
    many seeds reached it; the axis says the evaluation cadence (the resolution of these numbers)."""
    rob = summary.robustness
    if summary.target_accuracy is None or rob.empty or "steps_to_target" not in rob:
        return None
    plt = _plt()
    cells = summary.cells.set_index(["optimizer", "lr"])
    longest = max((len(f"{r.optimizer} (lr {r.best_lr:g})") for r in rob.itertuples()), default=0)
    fig, ax = plt.subplots(figsize=(max(7.0, 4.0 + 0.075 * longest), 0.45 * len(rob) + 1.5))
    names, values, labels, colors = [], [], [], []
    for r in rob.itertuples():
        if pd.isna(r.best_lr):
            continue
        cell = cells.loc[(r.optimizer, r.best_lr)]
        colors.append(summary.colours.get(r.optimizer, "tab:blue"))
        names.append(f"{r.optimizer} (lr {r.best_lr:g})")
        values.append(r.steps_to_target if pd.notna(r.steps_to_target) else 0.0)
        labels.append(f"{int(cell.reached_target)}/{int(cell.seeds)} seeds"
                      if cell.reached_target else "never")
    bars = ax.barh(names[::-1], values[::-1], color=colors[::-1])
    for bar, text in zip(bars, labels[::-1], strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {text}", va="center", fontsize=8)
    steps = np.unique(summary.curves.step) if len(summary.curves) else np.array([])
    cadence = f", evaluated every {int(np.diff(steps).min())} steps" if len(steps) > 1 else ""
    ax.set_xlabel(f"steps to reach {summary.split_label} accuracy {summary.target_accuracy:.3f}\n"
                  f"(mean over the seeds that did{cadence})")
    ax.margins(x=0.2)  # room for the seed counts right of the bars
    fig.suptitle("Convergence speed at each optimizer's best learning rate")
    return _save(fig, path)


def heatmap(summary: Summary, path: Path) -> Path | None:
    """Mean final test accuracy (or training loss) of every optimizer x learning rate."""
    cells = summary.cells
    if cells.empty:
        return None
    plt = _plt()
    chosen = f"final_{summary.split}_accuracy_mean"
    has_acc = cells[chosen].notna().any()
    col = chosen if has_acc else "final_train_loss_mean"
    grid = cells.pivot(index="optimizer", columns="lr", values=col)
    order = [o for o in summary.robustness.optimizer if o in grid.index]
    grid = grid.loc[order + [o for o in grid.index if o not in order]]
    longest = max((len(str(o)) for o in grid.index), default=0)
    fig, ax = plt.subplots(figsize=(1.1 * grid.shape[1] + 2.5 + 0.075 * longest, 0.5 * grid.shape[0] + 1.5))
    image = ax.imshow(grid.values.astype(float), aspect="auto", cmap="viridis" if has_acc else "viridis_r")
    ax.set_xticks(range(grid.shape[1]), [f"{lr:g}" for lr in grid.columns])
    ax.set_yticks(range(grid.shape[0]), grid.index)
    diverged = cells.pivot(index="optimizer", columns="lr", values="diverged").reindex_like(grid)
    infeasible = (cells.assign(bad=cells.feasible < cells.seeds).pivot(index="optimizer", columns="lr",
                                                                       values="bad").reindex_like(grid)
                  if "feasible" in cells else None)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v, d = grid.values[i, j], diverged.values[i, j]
            text = "div." if pd.notna(d) and d > 0 and pd.isna(v) else ("" if pd.isna(v) else f"{v:.3g}")
            bad = infeasible.values[i, j] if infeasible is not None else None
            if bad is not None and pd.notna(bad) and bool(bad) and text:
                text += "\ninfeasible"  # a seed ended with a violation above the tolerance
            shade = image.norm(v) if has_acc else 1 - image.norm(v)  # where v sits in the colour map
            light = pd.notna(v) and shade > 0.6  # viridis is light at its top
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="black" if light else "white")
    ax.set_xlabel("learning rate")
    fig.colorbar(image, ax=ax, label=f"mean final {summary.split_label} accuracy" if has_acc
                 else f"mean final {summary.loss_label}")
    ax.set_title("Optimizer x learning rate")
    return _save(fig, path)


def relative_sensitivity(summary: Summary, path: Path) -> Path | None:
    """DeepOBS's learning-rate sensitivity plot: each optimizer's mean final accuracy on the selection
    split at each learning rate relative to its best (1 at its best lr, 0 where a seed diverged),
    against the learning rate (log axis): how much of its best each lr keeps."""
    cells = summary.cells
    chosen = f"final_{summary.split}_accuracy_mean"
    if cells.empty or cells[chosen].isna().all() or cells.groupby("optimizer").lr.nunique().max() < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for opt, g in cells.groupby("optimizer", sort=False):
        g = g.sort_values("lr")
        value = g[chosen].where(g.diverged == 0, 0.0).fillna(0.0)
        best = value.max()
        if best > 0:
            ax.plot(g.lr, value / best, marker="o", ms=3, label=opt, color=summary.colours.get(opt))
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.05)
    return _one_panel(fig, ax, path, "learning rate",
                      f"final {summary.split_label} accuracy / the optimizer's best",
                      "Relative sensitivity to the learning rate (DeepOBS; 0: a seed diverged)")


def tuning(summary: Summary, path: Path) -> Path | None:
    """The tuning-budget view: the expected best final accuracy (lowest loss, without accuracy) on the
    selection split after k runs drawn at random from each optimizer's grid, against k."""
    return _tuning_lines(summary.tuning, "expected_best", summary.colours, path,
                         f"expected best final {summary.split_label} {summary.metric}",
                         "Tuning budget: what a random search of k runs of each grid finds")


def _tuning_lines(t, column: str, colours: dict[str, str], path: Path, ylabel: str,
                  title: str) -> Path | None:
    """``column`` of a tuning table against k (log 2), a line per optimizer; None below k = 2."""
    if t.empty or t.k.max() < 2:
        return None
    fig, ax = _plt().subplots(figsize=(6.5, 4))
    for opt, g in t.groupby("optimizer", sort=False):
        ax.plot(g.k, g[column], marker="o", ms=3, label=opt, color=colours.get(opt))
    ax.set_xscale("log", base=2)
    return _one_panel(fig, ax, path, "runs drawn at random from the grid (k)", ylabel, title)


def _one_panel(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Label, grid and legend a one-panel figure of a line per optimizer, and save it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def all_figures(summary: Summary, folder: Path) -> dict[str, Path]:
    """Write every figure that the study's data allows into ``folder``; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, draw in (("sensitivity", sensitivity), ("learning_curves", learning_curves),
                       ("relative_sensitivity", relative_sensitivity), ("convergence", convergence),
                       ("heatmap", heatmap), ("tuning", tuning)):
        path = draw(summary, folder / f"{name}.png")
        if path is not None:
            made[name] = path
    if summary.panels:
        made["constrained"] = constrained_panels(summary.panels, folder / "constrained.png")
    return made


def constrained_panels(rows: list[dict] | dict[str, pd.DataFrame], path: Path,
                       title: str = "") -> Path | None:
    """Seed 000's four panels against the step: training loss, training accuracy (of the batch),
    multiplier and violation of each constraint. ``rows``: train_log rows of a constrained run
    (``step``, ``loss``, ``accuracy``, ``violation_<key>``, ``multiplier_<key>``), or several runs'
    rows by label (one line each)."""
    runs = {k: pd.DataFrame(v) for k, v in rows.items() if len(v)} if isinstance(rows, dict) else (
        {"": pd.DataFrame(rows)} if rows else {})
    if not runs:
        return None
    plt = _plt()
    columns = list(dict.fromkeys(c for frame in runs.values() for c in frame.columns))
    keys = [c[len("violation_"):] for c in columns if c.startswith("violation_")]
    panels = [("loss", "training loss"), ("accuracy", "training accuracy (batch)")]
    panels += [(f"multiplier_{k}", f"multiplier ({k})") for k in keys]
    panels += [(f"violation_{k}", f"violation ({k})") for k in keys]
    panels = [(c, label) for c, label in panels if c in columns]
    height = 3.3 + (0.3 * math.ceil(len(runs) / 2) if len(runs) > 1 else 0)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), height), squeeze=False)
    for ax, (col, label) in zip(axes[0], panels, strict=True):
        for name, frame in runs.items():
            if col in frame:
                ax.plot(frame.step, frame[col], label=name or None, lw=1)
        if col.startswith("violation_"):
            ax.axhline(0.0, color="grey", ls="--", lw=1)
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=10)
        ax.grid(True, alpha=0.3)
    legend_rows = math.ceil(len(runs) / 2) if len(runs) > 1 else 0
    if legend_rows:
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return _save(fig, path, rect=(0, 0.3 * legend_rows / fig.get_figheight(), 1, 1))


def performance_profiles(across, colours: dict[str, str], path: Path) -> Path | None:
    """rho_a(tau) against tau in [1, r_max], in steps and in seconds to the target: the fraction of
    tasks on which each optimizer reached the target within tau times the fastest optimizer's time."""
    p = across.profiles
    if p.empty:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (column, unit) in zip(axes, (("rho_steps", "steps"), ("rho_seconds", "seconds")), strict=True):
        for opt, g in p.groupby("optimizer", sort=False):
            ax.step(g.tau, g[column], where="post", label=opt, color=colours.get(opt))
        ax.set_xlim(1, across.r_max)
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel("tau (time to target / the fastest optimizer's)")
        ax.set_ylabel("fraction of tasks")
        ax.set_title(f"Performance profiles, in {unit} to the target")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def tuning_across(across, colours: dict[str, str], path: Path) -> Path | None:
    """The tuning budget across tasks: each optimizer's mean relative expected best against k."""
    return _tuning_lines(across.tuning, "relative", colours, path,
                         "expected best / the task's best run (mean over tasks)",
                         "Tuning budget across tasks")


def across_figures(across, colours: dict[str, str], folder: Path) -> dict[str, Path]:
    """The figures across tasks that the data allow: performance profiles, tuning budget."""
    made = {}
    for name, draw in (("profiles", performance_profiles), ("tuning_across", tuning_across)):
        path = draw(across, colours, folder / f"{name}.png")
        if path is not None:
            made[name] = path
    return made

