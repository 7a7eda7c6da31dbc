"""Study reports: summaries as DataFrames (final metrics, convergence speed, robustness to the
learning rate, ranking), figures (PNG) and a page that opens in a browser (``report.html``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from optimlab.errors import OptimlabError
from optimlab.report.summaries import FEASIBILITY_TOLERANCE, Summary, summarize
from optimlab.study.results import load_results

__all__ = ["Report", "Summary", "make_report", "summarize"]


@dataclass
class Report:
    html: Path
    markdown: Path
    figures: dict[str, Path]
    summary: Summary


def make_report(db: str | Path, out: str | Path | None = None, target_fraction: float = 0.95,
                target_accuracy: float | None = None,
                feasibility_tolerance: float = FEASIBILITY_TOLERANCE) -> Report:
    """Summarize the study store ``db`` and write ``report.html``, ``report.md`` and the figures into
    ``out`` (default: ``report/`` beside the store). Works on a study still running or interrupted.
    ``feasibility_tolerance``: a constrained run ends feasible when its largest final violation is
    at most this."""
    from optimlab.report.figures import all_figures
    from optimlab.report.page import write_pages

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
    summary = summarize(results, target_fraction=target_fraction, target_accuracy=target_accuracy,
                        feasibility_tolerance=feasibility_tolerance)
    out = Path(out) if out is not None else Path(db).resolve().parent / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OptimlabError(f"cannot write the report to {out}: {e.strerror or e}; choose a folder you can "
                            "write to with --out") from None
    figures = all_figures(summary, out)
    meta = dict(results.meta, runs=len(results.runs))
    page, notes = write_pages(summary, figures, out, f"Study {results.meta.get('name')}", meta)
    return Report(page, notes, figures, summary)
