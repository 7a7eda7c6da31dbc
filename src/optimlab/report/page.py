"""The report as files: ``report.html`` (self-contained: figures inlined, opens offline), ``report.md``
(figures beside it as PNG) and the PNGs."""

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
    head += ["final validation accuracy (chosen on) [95 % interval]", "final test accuracy (at it)"] \
        if on_val else ["final test accuracy [95 % interval]" if accuracy else "final training loss"]
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
            "best test accuracy", "reached target", "epochs to target", "seconds to target"]
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


def tuning_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """The tuning-budget view at k = 1, 2, 4, ... and the whole grid."""
    t = summary.tuning
    if t.empty:
        return [], []
    top = int(t.k.max())
    ks = sorted({2 ** i for i in range(top.bit_length()) if 2 ** i <= top} | {top})
    head = ["optimizer", "runs in the grid"] + [f"best of {k}" for k in ks]
    rows = []
    for opt, g in t.groupby("optimizer", sort=False):
        by_k = dict(zip(g.k, g.expected_best, strict=True))
        rows.append([opt, str(int(g.runs.iloc[0]))] + [_num(by_k.get(k)) for k in ks])
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
    "tuning": "Tuning budget: the expected best final accuracy after k runs drawn at random from each "
              "optimizer's grid (from the runs made; Dodge et al. 2019).",
    "constrained": "Training loss, batch accuracy, multipliers and violations against the step: the lowest "
                   "seed of each optimizer and dual learning rate, at its best learning rate.",
}


def _held_out(validation) -> str:
    if isinstance(validation, float):
        return f"{validation:.0%}"
    return f"{validation} examples" if validation else "a part"


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
"""


def write_pages(summary: Summary, figures: dict[str, Path], out: Path, title: str,
                meta: dict) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into ``out``; returns their paths."""
    sections = [("Ranking", ranking_rows(summary)), ("Every optimizer and learning rate", cell_rows(summary))]
    if not summary.tuning.empty:
        heading = f"Tuning budget (expected best final {summary.split_label} accuracy of k random runs)"
        sections.append((heading, tuning_rows(summary)))
    if len(summary.missing):
        sections.append(("Runs not finished", missing_rows(summary)))
    target = (f"Convergence target: {summary.split_label} accuracy {summary.target_accuracy:.4f}."
              if summary.target_accuracy is not None else "")
    validation = meta.get("definition", {}).get("shared", {}).get("validation")
    chosen = (f"Best settings are chosen on the validation set ({_held_out(validation)} of the training "
              "set, the same examples for every run); test numbers are reported at them."
              if summary.split == "val" else "Best settings are chosen on the test set (no validation set).")
    env = meta.get("environment", {})
    about = (f"{meta.get('runs', 0)} runs; optimlab {env.get('optimlab', '?')}, "
             f"torch {env.get('torch', '?')}, on {env.get('cuda') or 'CPU'} ({env.get('host', '?')}). "
             f"{chosen} {target}")

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{html.escape(about)}</p>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in summary.notes]
    md = [f"# {title}", "", about, ""] + [f"> {n}\n" for n in summary.notes]
    for i, (name, (head, rows)) in enumerate(sections):
        parts.append(f"<h2>{html.escape(name)}</h2>{_html_table(head, rows)}")
        md += [f"## {name}", "", _md_table(head, rows), ""]
        if i == 0 and figures:
            parts.append("<h2>Figures</h2>")
            md += ["## Figures", ""]
            for key, path in figures.items():
                data = base64.b64encode(path.read_bytes()).decode()
                caption = CAPTIONS.get(key, key)
                parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")
                md += [f"![{caption}]({path.name})", ""]
    if meta.get("study_file"):
        parts.append(f"<h2>Study file</h2><pre>{html.escape(meta['study_file'])}</pre>")
        md += ["## Study file", "", "```toml", meta["study_file"].strip(), "```", ""]
    parts.append("</body></html>")
    page, notes = out / "report.html", out / "report.md"
    page.write_text("\n".join(parts), encoding="utf-8")
    notes.write_text("\n".join(md), encoding="utf-8")
    return page, notes
