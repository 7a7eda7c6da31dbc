"""The report as files: ``report.html`` (self-contained: figures inlined, opens offline; with the
interactive figures, Plotly inlined, where it is installed), ``report.md`` (figures beside it as PNG)
and the PNGs."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from optimlab.report.summaries import Summary


def _num(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _fixed(v: float) -> str:
    """Four decimals, or four significant digits in scientific notation for small numbers."""
    return f"{v:.4f}" if v == 0 or abs(v) >= 1e-3 else f"{v:.3e}"


def _pm(mean, std) -> str:
    if mean is None or pd.isna(mean):
        return "-"
    return f"{_fixed(mean)} ± {_fixed(std)}" if pd.notna(std) else _fixed(mean)


def _interval(mean, low, high) -> str:
    """A mean with its 95 % interval, e.g. ``0.9012 [0.8990, 0.9031]``."""
    if mean is None or pd.isna(mean):
        return "-"
    return f"{_fixed(mean)} [{_fixed(low)}, {_fixed(high)}]" if pd.notna(low) else _fixed(mean)


def ranking_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    rob = summary.robustness
    accuracy = "best_final_test_accuracy" in rob and rob.best_final_test_accuracy.notna().any()
    constrained = bool(summary.constraints)
    on_val = summary.split == "val" and accuracy
    head = ["rank", "optimizer", "tied with the best", "best lr"]
    split_loss = f"best_final_{summary.split}_loss"
    by_loss = not accuracy and split_loss in rob and rob[split_loss].notna().any()
    if accuracy:
        head += ["final validation accuracy (chosen on) [95 % interval]", "final test accuracy (at it)"] \
            if on_val else ["final test accuracy [95 % interval]"]
    elif by_loss:
        head += ["final validation loss (chosen on)", "final test loss (at it)"] if summary.split == "val" \
            else ["final test loss"]
    else:
        head += ["final training loss"]
    head += ["epochs to target", "width (accuracy), decades", "width (loss), decades", "diverged runs"]
    head += ["final violation"] if constrained else []
    rows = []
    for r in rob.itertuples():
        chosen = f"best_final_{summary.split}_accuracy"
        if accuracy:
            picked = _interval(getattr(r, chosen), getattr(r, f"{chosen}_low", None),
                               getattr(r, f"{chosen}_high", None))
            best = [picked, _pm(r.best_final_test_accuracy, r.best_final_test_accuracy_std)] if on_val \
                else [picked]
        elif by_loss:
            best = [_fixed(getattr(r, split_loss))] if pd.notna(getattr(r, split_loss)) else ["-"]
            if summary.split == "val":
                best.append(_pm(r.best_final_test_loss, r.best_final_test_loss_std))
        else:
            best = [_num(getattr(r, "best_final_train_loss", None))]
        tie = "yes" if getattr(r, "tied_with_best", False) and r.rank > 1 else ""
        edge = " (grid edge)" if getattr(r, "best_at_edge", False) is True else ""
        row = [str(r.rank), r.optimizer, tie, _num(r.best_lr) + edge, *best,
               _num(getattr(r, "epochs_to_target", None), 3),
               _num(r.width_accuracy_decades, 3), _num(r.width_loss_decades, 3), str(r.diverged_runs)]
        rows.append(row + ([_num(getattr(r, "final_violation", None))] if constrained else []))
    return head, rows


def cell_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    on_val = summary.split == "val"
    head = ["optimizer", "lr", "seeds", "diverged", "final train loss",
            *(["final validation accuracy"] if on_val else []), "final test accuracy",
            "best test accuracy", "reached target", "epochs to target",
            "seconds to target (a vectorized group's own clock)"]
    keys = list(summary.constraints)
    if keys:
        head += ["final violation", "feasible seeds"] + [f"multiplier ({k})" for k in keys]
    rows = []
    for c in summary.cells.itertuples():
        row = [c.optimizer, _num(c.lr), str(c.seeds), str(c.diverged),
               _pm(c.final_train_loss_mean, c.final_train_loss_std),
               *([_pm(c.final_val_accuracy_mean, c.final_val_accuracy_std)] if on_val else []),
               _pm(c.final_test_accuracy_mean, c.final_test_accuracy_std),
               _pm(c.best_test_accuracy_mean, c.best_test_accuracy_std),
               f"{c.reached_target}/{c.seeds}", _num(c.epochs_to_target_mean, 3),
               _num(c.seconds_to_target_mean, 3)]
        if keys:
            row += [_pm(c.final_violation_mean, c.final_violation_std), f"{c.feasible}/{c.seeds}"]
            row += [_num(getattr(c, f"final_multiplier_{k}_mean")) for k in keys]
        rows.append(row)
    return head, rows


def tuning_rows(t: pd.DataFrame, value: str = "expected_best", count: str = "runs",
                count_head: str = "runs in the grid") -> tuple[list[str], list[list[str]]]:
    """A tuning-budget view (a frame of ``optimizer, k, value, count``) at k = 1, 2, 4, ... and the
    largest k."""
    if t.empty:
        return [], []
    top = int(t.k.max())
    ks = sorted({2 ** i for i in range(top.bit_length()) if 2 ** i <= top} | {top})
    head = ["optimizer", count_head] + [f"best of {k}" for k in ks]
    rows = []
    for opt, g in t.groupby("optimizer", sort=False):
        by_k = dict(zip(g.k, g[value], strict=True))
        rows.append([opt, str(int(g[count].iloc[0]))] + [_num(by_k.get(k)) for k in ks])
    return head, rows


def missing_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    head = ["run", "optimizer", "lr", "seed", "status", "error"]
    rows = [[str(m.run_id), m.optimizer, _num(m.lr), str(m.seed), m.status,
             (m.error or "").strip().splitlines()[-1] if m.error else ""]
            for m in summary.missing.itertuples()]
    return head, rows


CAPTIONS = {
    "sensitivity": "Final accuracy (on the split the settings are chosen on) and training loss against "
                   "the learning rate.",
    "relative_sensitivity": "Each optimizer's final accuracy at each learning rate relative to its best "
                            "(DeepOBS's sensitivity plot).",
    "learning_curves": "Learning curves at each optimizer's best learning rate.",
    "convergence": "Steps to the target accuracy at each optimizer's best learning rate.",
    "heatmap": "Mean final metric of every optimizer and learning rate.",
    "tuning": "Tuning budget: the expected best final accuracy (lowest loss, without accuracy) after k runs "
              "drawn at random from each optimizer's grid (from the runs made; Dodge et al. 2019).",
    "profiles": "Performance profiles across the tasks (Dolan and Moré; AlgoPerf's score is their mean over "
                "tau in [1, r_max]).",
    "tuning_across": "Tuning budget across tasks: the expected best final metric of k random runs of each "
                     "optimizer's grid, relative to the task's best run, the mean over the tasks.",
    "constrained": "Training loss, batch accuracy, multipliers and violations against the step: the lowest "
                   "seed of each optimizer and dual learning rate, at its best learning rate.",
}


def _held_out(validation) -> str:
    if isinstance(validation, float):
        return f"{validation:.0%}"
    return f"{validation} examples"


def _html_table(head, rows) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(head, rows) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:nth-child(-n+2) { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; } figure { margin: 1.5em 0; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 1em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 0.5em; }
.figure { min-height: 360px; border: 1px solid #eee; }
"""
INTERACTIVE = ("Every run's learning curves and the sensitivity curves (final metric against the learning "
               "rate, each run and the mean over seeds), drawn with Plotly inlined in this page, which stays "
               "offline: hover a point for its run, click a legend entry to hide or show an optimizer. "
               "`optimlab dashboard` draws the same figures live while a study runs.")


def _interactive(level: int, block: str | None) -> tuple[list[str], list[str]]:
    """The interactive figures' section (``block``: :func:`optimlab.report.live.interactive_figures`;
    None: none, plotly not installed), and its line in the markdown."""
    if not block:
        return [], []
    h = f"h{level}"
    section = (f"<{h}>Interactive figures <span id='task-choice'></span></{h}>"
               f"<p>{html.escape(INTERACTIVE)}</p>{block}")
    return [section], ["Interactive figures (learning curves of every run, sensitivity): in report.html.\n"]


def _figure(key: str, path: Path, out: Path) -> tuple[str, str]:
    """A figure inlined in the page, and its line in the markdown (a path relative to ``out``)."""
    caption = CAPTIONS.get(key, key)
    data = base64.b64encode(path.read_bytes()).decode()
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>",
            f"![{caption}]({path.relative_to(out).as_posix()})\n")


def _chosen(summary: Summary, validation) -> str:
    target = ""
    if summary.target_accuracy is not None:
        target = f" Convergence target: {summary.split_label} accuracy {summary.target_accuracy:.4f}."
    where = (f"{_held_out(validation)} of the training set, the same examples for every run" if validation
             else "the data set's own")
    held = (f"Best settings are chosen on the validation set ({where}); test numbers are reported at them."
            if summary.split == "val" else "Best settings are chosen on the test set (no validation set).")
    return held + target


def _summary_blocks(summary: Summary, figures: dict[str, Path], out: Path, level: int,
                    lead: str = "", interactive: str | None = None) -> tuple[list[str], list[str]]:
    """The notes, tables and figures of one task's summary, headed at ``level`` (2: h2); the
    interactive figures after the PNGs."""
    h, hashes = f"h{level}", "#" * level
    sections = [("Ranking", ranking_rows(summary)), ("Every optimizer and learning rate", cell_rows(summary))]
    if not summary.tuning.empty:
        heading = (f"Tuning budget (expected best final {summary.split_label} {summary.metric} of k random "
                   "runs)")
        sections.append((heading, tuning_rows(summary.tuning)))
    if len(summary.missing):
        sections.append(("Runs not finished", missing_rows(summary)))
    parts = [f"<p>{html.escape(lead)}</p>"] if lead else []
    md = [lead, ""] if lead else []
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in summary.notes]
    md += [f"> {n}\n" for n in summary.notes]
    for i, (name, (head, rows)) in enumerate(sections):
        parts.append(f"<{h}>{html.escape(name)}</{h}>{_html_table(head, rows)}")
        md += [f"{hashes} {name}", "", _md_table(head, rows), ""]
        if i == 0 and figures:
            parts.append(f"<{h}>Figures</{h}>")
            md += [f"{hashes} Figures", ""]
            for key, path in figures.items():
                block, line = _figure(key, path, out)
                parts.append(block)
                md.append(line)
        if i == 0:
            more, lines = _interactive(level, interactive)
            parts += more
            md += lines
    return parts, md


def _about(meta: dict) -> str:
    env = meta.get("environment", {})
    return (f"{meta.get('runs', 0)} runs; optimlab {env.get('optimlab', '?')}, "
            f"torch {env.get('torch', '?')}, on {env.get('cuda') or 'CPU'} ({env.get('host', '?')}).")


def _write(out: Path, title: str, parts: list[str], md: list[str], meta: dict) -> tuple[Path, Path]:
    head = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if meta.get("study_file"):
        parts = parts + [f"<h2>Study file</h2><pre>{html.escape(meta['study_file'])}</pre>"]
        md = md + ["## Study file", "", "```toml", meta["study_file"].strip(), "```", ""]
    page, notes = out / "report.html", out / "report.md"
    page.write_text("\n".join([*head, *parts, "</body></html>"]), encoding="utf-8")
    notes.write_text("\n".join([f"# {title}", "", *md]), encoding="utf-8")
    return page, notes


def write_pages(summary: Summary, figures: dict[str, Path], out: Path, title: str,
                meta: dict, interactive: str | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` of a study of one task into ``out``; returns their paths.
    ``interactive``: the interactive figures' block (:func:`optimlab.report.live.interactive_figures`)."""
    validation = meta.get("definition", {}).get("shared", {}).get("validation")
    about = f"{_about(meta)} {_chosen(summary, validation)}"
    parts, md = _summary_blocks(summary, figures, out, 2, interactive=interactive)
    return _write(out, title, [f"<p>{html.escape(about)}</p>", *parts], [about, "", *md], meta)


def _plural(n, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def task_rows(tasks: dict[str, dict], summaries: dict[str, Summary], targets: dict) -> tuple[list, list]:
    """One row per task: what it is (data, model, batch, budget, validation), its target, and how a
    task of the suite was scaled."""
    head = ["task", "data set", "model", "batch size", "budget", "evaluated every", "validation",
            "target", "DeepOBS's task, scaled"]
    rows = []
    for name, t in tasks.items():
        st, summary = t.get("settings", {}), summaries[name]
        budget = _plural(st["epochs"], "epoch") if st.get("epochs") else _plural(st.get("iterations"), "step")
        metric = f"{summary.split_label} {summary.metric}"
        target = targets.get(name)
        scaled = ""
        if "suite" in t:
            changed = ", ".join(f"{k} = {v}" for k, v in t.get("scaled", {}).items() if v is not None)
            changed = changed or "as defined"
            scaled = f"{t['suite']}: {changed}"
        rows.append([name, str(st.get("dataset", "?")), str(st.get("model", "?")),
                     str(st.get("batch_size", "axis")), budget,
                     f"{st['eval_every']} steps" if st.get("eval_every") else "epoch",
                     _held_out(st["validation"]) if st.get("validation") else "own set" if
                     summary.split == "val" else "none",
                     f"{metric} {_num(target)}" + (" (given)" if t.get("target") is not None else "")
                     if target is not None else "-", scaled])
    return head, rows


def score_rows(across) -> tuple[list, list]:
    head = ["rank", "optimizer", f"score (steps), r_max = {across.r_max:g}", "score (seconds)",
            "tasks reached", "mean rank on the tasks"]
    rows = [[str(i + 1), r.optimizer, f"{r.score_steps:.3f}", f"{r.score_seconds:.3f}",
             f"{r.tasks_reached}/{r.tasks}", f"{r.mean_rank:.2f}"]
            for i, r in enumerate(across.scores.itertuples())]
    return head, rows


def per_task_rows(across, summaries: dict[str, Summary]) -> tuple[list, list]:
    """Per task and optimizer: its best setting's final metric on the selection split and on the
    test set, and its time to the target."""
    head = ["task", "optimizer", "best lr", "final metric there (on the split it was chosen on)",
            "final test metric", "fastest lr to target", "steps to target", "seconds to target",
            "ratio (steps)", "rank on the task"]
    rows = []
    for r in across.times.itertuples():
        rob = summaries[r.task].robustness
        mine = rob[rob.optimizer == r.optimizer]
        split = summaries[r.task].split
        if len(mine):
            b = mine.iloc[0]
            if summaries[r.task].has_accuracy:
                picked = _pm(b.get(f"best_final_{split}_accuracy"), None)
                test = _pm(b.best_final_test_accuracy, b.best_final_test_accuracy_std)
            else:
                picked = _pm(b.get(f"best_final_{split}_loss"), None)
                test = _pm(b.get("best_final_test_loss"), b.get("best_final_test_loss_std"))
            best = _num(b.best_lr)
        else:
            picked = test = best = "-"
        steps = "missed" if not math.isfinite(r.steps) else _num(r.steps, 6)
        rows.append([r.task, r.optimizer, best, picked, test, _num(r.lr), steps,
                     "missed" if not math.isfinite(r.seconds) else _num(r.seconds, 3),
                     "inf" if not math.isfinite(r.ratio_steps) else f"{r.ratio_steps:.2f}", f"{r.rank:g}"])
    return head, rows


ACROSS = ("Across tasks. A task's time to target: the step (and wall time) at which a run's metric on "
          "the selection split first reached the task's target; a setting's time is the median over its "
          "seeds (a miss or a divergence counts as infinite), an optimizer's its fastest setting's. Ratio: "
          "to the fastest optimizer on the task. Performance profile rho(tau): the fraction of tasks within "
          "tau times the fastest; score: its mean over tau in [1, r_max] (AlgoPerf; 1: fastest everywhere). "
          "Steps are what the score ranks by; seconds are the runs' wall time, which in a vectorized group "
          "is the group's.")


def write_study_pages(summaries: dict[str, Summary], figures: dict[str, dict[str, Path]], across,
                      across_figures: dict[str, Path], tasks: dict[str, dict], targets: dict, out: Path,
                      title: str, meta: dict, interactive: str | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` of a study of several tasks: the tasks, the ranking
    across them (scores, performance profiles, a table per task and optimizer), the interactive
    figures (a task to choose), then each task's own report."""
    about = f"{_about(meta)} {len(summaries)} tasks."
    parts, md = [f"<p>{html.escape(about)}</p>"], [about, ""]
    head, rows = task_rows(tasks, summaries, targets)
    parts.append(f"<h2>Tasks</h2>{_html_table(head, rows)}")
    md += ["## Tasks", "", _md_table(head, rows), ""]
    parts.append(f"<h2>Ranking across tasks</h2><p>{html.escape(ACROSS)}</p>")
    md += ["## Ranking across tasks", "", ACROSS, ""]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in across.notes]
    md += [f"> {n}\n" for n in across.notes]
    tables = [("Scores", score_rows(across)), ("Each task and optimizer", per_task_rows(across, summaries))]
    if not across.tuning.empty:
        tables.append(("Tuning budget across tasks (the expected best final metric of k random runs, "
                       "relative to the task's best run, the mean over tasks)",
                       tuning_rows(across.tuning, "relative", "tasks", "tasks")))
    for name, (head, rows) in tables:
        parts.append(f"<h3>{html.escape(name)}</h3>{_html_table(head, rows)}")
        md += [f"### {name}", "", _md_table(head, rows), ""]
    for key, path in across_figures.items():
        block, line = _figure(key, path, out)
        parts.append(block)
        md.append(line)
    more, lines = _interactive(2, interactive)
    parts += more
    md += lines
    for name, summary in summaries.items():
        validation = tasks.get(name, {}).get("settings", {}).get("validation")
        lead = _chosen(summary, validation)
        blocks, lines = _summary_blocks(summary, figures.get(name, {}), out, 3, lead)
        parts += [f"<h2>Task {html.escape(name)}</h2>", *blocks]
        md += [f"## Task {name}", "", *lines]
    return _write(out, title, parts, md, meta)
