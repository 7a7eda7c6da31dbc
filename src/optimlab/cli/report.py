"""``optimlab report``: a study's tables, figures and page."""

from __future__ import annotations

import argparse

from optimlab.cli.arguments import path_arg, store_path
from optimlab.cli.study import STORE_HELP


def add_to(sub) -> None:
    rp = sub.add_parser("report", help="a study's report: tables, figures, report.html",
                        description="Summarize a study store: final metrics, convergence speed, "
                        "robustness to the learning rate, a ranking; figures; report.html and report.md. "
                        "Works on a study that is still running or was interrupted.")
    rp.add_argument("db", type=path_arg, help=STORE_HELP)
    rp.add_argument("--out", type=path_arg, default=None,
                    help="folder for the report (default: report/ beside the store)")
    rp.add_argument("--target-fraction", type=float, default=0.95,
                    help="convergence target: this fraction of the best mean final validation accuracy "
                    "(test accuracy in a study without a validation set)")
    rp.add_argument("--target-accuracy", type=float, default=None,
                    help="convergence target as an absolute accuracy on the same split (overrides the "
                    "fraction)")
    rp.add_argument("--feasibility-tolerance", type=float, default=None,
                    help="constrained studies: a run ends feasible when its largest final violation is "
                    "at most this (default 1e-3)")
    rp.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from optimlab.report import make_report

    report = make_report(store_path(args.db), args.out, target_fraction=args.target_fraction,
                         target_accuracy=args.target_accuracy,
                         **({} if args.feasibility_tolerance is None else
                            {"feasibility_tolerance": args.feasibility_tolerance}))
    summaries = report.tasks or {None: report.summary}
    for task, summary in summaries.items():
        for note in summary.notes:
            print(f"note: {f'{task}: ' if task else ''}{note}")
    if report.across is not None:
        for note in report.across.notes:
            print(f"note: {note}")
        scores = ", ".join(f"{r.optimizer} {r.score_steps:.2f}" for r in report.across.scores.itertuples())
        print(f"ranking across tasks (score in steps to target, r_max = {report.across.r_max:g}): {scores}")
    print(f"report: {report.html}")
    return 0
