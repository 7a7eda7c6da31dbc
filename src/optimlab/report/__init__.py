"""Study reports: summaries as DataFrames (final metrics, convergence speed, robustness to the
learning rate, ranking), figures (PNG) and a page that opens in a browser (``report.html``, with the
live dashboard's interactive figures where ``plotly`` is installed); the live dashboard itself
(``live``: its data; ``serve``: its server)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from optimlab.errors import OptimlabError
from optimlab.report.across import Across, across_tasks
from optimlab.report.summaries import FEASIBILITY_TOLERANCE, Summary, by_series, colours, summarize
from optimlab.study.results import load_results

__all__ = ["Across", "Report", "Summary", "make_report", "summarize", "summarize_tasks"]


@dataclass
class Report:
    """The files written and the numbers behind them. A study of several tasks has ``tasks`` (task
    -> its Summary; ``summary`` is the first's) and ``across`` (:class:`~optimlab.report.across.Across`);
    its figures are named ``task/figure``, ``profiles`` and ``tuning_across``."""

    html: Path
    markdown: Path
    figures: dict[str, Path]
    summary: Summary
    tasks: dict[str, Summary] = field(default_factory=dict)
    across: Across | None = None


def make_report(db: str | Path, out: str | Path | None = None, target_fraction: float = 0.95,
                target_accuracy: float | None = None,
                feasibility_tolerance: float = FEASIBILITY_TOLERANCE) -> Report:
    """Summarize the study store ``db`` and write ``report.html``, ``report.md`` and the figures into
    ``out`` (default: ``report/`` beside the store). Works on a study still running or interrupted.
    ``feasibility_tolerance``: a constrained run ends feasible when its largest final violation is
    at most this."""
    from optimlab.report.figures import across_figures, all_figures
    from optimlab.report.page import write_pages, write_study_pages

    if not 0 < target_fraction <= 1:
        raise OptimlabError(f"target fraction must be in (0, 1]; got {target_fraction}")
    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise OptimlabError(f"target accuracy is a fraction in (0, 1] (0.9 for 90 %); got {target_accuracy}")
    if not (math.isfinite(feasibility_tolerance) and feasibility_tolerance >= 0):
        raise OptimlabError("feasibility tolerance must be a finite number >= 0; "
                            f"got {feasibility_tolerance}")
    results = load_results(db)
    if results.runs.empty:
        raise OptimlabError(f"{db} holds no runs: nothing to report")
    if not results.runs.status.isin(["completed", "diverged"]).any():
        raise OptimlabError(f"{db}: none of its {len(results.runs)} runs has finished yet; "
                            "run the study (optimlab study run FILE) before reporting")
    out = Path(out) if out is not None else Path(db).resolve().parent / "report"
    meta = dict(results.meta, runs=len(results.runs))
    title = f"Study {results.meta.get('name')}"
    if results.tasks == [None]:
        given = results.task_definition(None).get("target")
        summary = summarize(results, target_fraction=target_fraction,
                            target_accuracy=target_accuracy if target_accuracy is not None else given,
                            feasibility_tolerance=feasibility_tolerance)
        _folder(out)
        figures = all_figures(summary, out)
        page, notes = write_pages(summary, figures, out, title, meta, _interactive(db))
        return Report(page, notes, figures, summary)
    summaries, targets, across = summarize_tasks(results, target_fraction, target_accuracy,
                                                 feasibility_tolerance)
    _folder(out)
    figures = {task: all_figures(s, out / task) for task, s in summaries.items()}
    first = next(iter(summaries.values()))
    overall = across_figures(across, first.colours, out)
    tasks = {t: results.task_definition(t) for t in summaries}
    page, notes = write_study_pages(summaries, figures, across, overall, tasks, targets, out, title, meta,
                                    _interactive(db))
    flat = {**overall, **{f"{t}/{k}": p for t, f in figures.items() for k, p in f.items()}}
    return Report(page, notes, flat, first, summaries, across)


def summarize_tasks(results, target_fraction: float = 0.95, target_accuracy: float | None = None,
                    feasibility_tolerance: float = FEASIBILITY_TOLERANCE):
    """Per task of a study of ``[[tasks]]``: its :class:`Summary` (its target accuracy the command's,
    else the task's, else ``target_fraction`` of its best), every task's target (an accuracy, or a
    loss for a task without accuracy) and the tables across them (:func:`across_tasks`).
    One colour per optimizer series in every task's figures."""
    summaries, evals, targets = {}, {}, {}
    for task in results.tasks:
        part = results.of_task(task)
        if not part.runs.status.isin(["completed", "diverged"]).any():
            continue  # nothing finished on this task yet: said in the notes across tasks
        given = results.task_definition(task).get("target")  # an accuracy, or a loss without one
        if bool(part.evals.test_accuracy.notna().any()):
            wanted = target_accuracy if target_accuracy is not None else given
            summary = summarize(part, target_fraction, wanted, feasibility_tolerance=feasibility_tolerance)
        else:
            summary = summarize(part, target_fraction, feasibility_tolerance=feasibility_tolerance,
                                target_loss=given)
        summaries[task], evals[task] = summary, part.evals
        targets[task] = summary.target_accuracy if summary.has_accuracy else summary.target_loss
    series = list(dict.fromkeys(by_series(results).runs.optimizer))
    for summary in summaries.values():
        summary.colours = colours(series)
    across = across_tasks(summaries, evals, targets)
    unfinished = [str(t) for t in results.tasks if t not in summaries]
    if unfinished:
        across.notes = (*across.notes, f"No run of {', '.join(unfinished)} has finished yet: left out.")
    return summaries, targets, across


def _interactive(db) -> str | None:
    """The report's interactive figures (the live dashboard's, of the store as it is now), where the
    ``plotly`` package is installed (``optimlab[dashboard]``); else None: the PNGs only."""
    from importlib.util import find_spec

    if find_spec("plotly") is None:
        return None
    from optimlab.report.live import interactive_figures, study_state

    return interactive_figures(study_state(db))


def _folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OptimlabError(f"cannot write the report to {out}: {e.strerror or e}; choose a folder you can "
                            "write to with --out") from None
