"""DeepOBS's second stage (``[rerun_best] seeds = [...]``): once a study's grid is finished, each
optimizer's best learning rate is run again with more seeds.

A *group* is the grid's points that differ only in learning rate and seed (one task, optimizer,
schedule, batch size, ...). Its best learning rate is the one with the best mean final metric over
the grid's seeds, among the learning rates whose runs all completed (a divergence rules one out): the
accuracy on the validation set where the runs have one (else its loss; without a validation set, the
test set's), the highest accuracy or the lowest loss, the smallest learning rate among equals. This is
the rule of the report's ranking (:func:`optimlab.report.summaries.robustness_table`), which then
reads the choice back from the runs made at it.
"""

from __future__ import annotations

import statistics

from optimlab.study import axes
from optimlab.study.spec import StudySpec
from optimlab.study.store import StudyStore

METRICS = (("val_accuracy", True), ("val_loss", False), ("test_accuracy", True), ("test_loss", False))


def _group(p: axes.Point) -> tuple:
    return tuple(v for a, v in zip(axes.NAMES, axes.key(p), strict=True) if a not in ("lr", "seed"))


def second_stage(spec: StudySpec, store: StudyStore) -> tuple[list[axes.Point], list[str]]:
    """The points of the second stage (each group's best learning rate at every seed of
    ``spec.rerun_seeds``; those of the grid included, the store leaves them as they are), and a note
    for each group that has no usable learning rate."""
    rows = {axes.key(axes.of_row(r)): r for r in store.runs()}
    finals = store.final_evaluations()
    groups: dict[tuple, list[axes.Point]] = {}
    for p in spec.grid:
        groups.setdefault(_group(p), []).append(p)
    points, notes = [], []
    for members in groups.values():
        runs = [rows.get(axes.key(p)) for p in members]
        done = [finals.get(r["id"], {}) for r in runs if r is not None]
        metric, higher = next(((m, h) for m, h in METRICS if any(f.get(m) is not None for f in done)),
                              METRICS[-1])
        scores = {}
        for lr in sorted({p["lr"] for p in members}):
            mine = [r for p, r in zip(members, runs, strict=True) if p["lr"] == lr]
            values = [finals.get(r["id"], {}).get(metric) if r is not None and r["status"] == "completed"
                      else None for r in mine]
            if values and all(v is not None for v in values):
                scores[lr] = statistics.fmean(values)
        if not scores:
            notes.append(f"{axes.label(members[0], ('task', 'optimizer', 'schedule', 'batch_size'))}: no "
                         "learning rate whose runs all completed; nothing to rerun")
            continue
        best = max(scores, key=lambda lr: scores[lr] if higher else -scores[lr])  # the first of equals
        template = next(p for p in members if p["lr"] == best)
        points += [{**template, "seed": seed} for seed in spec.rerun_seeds]
    return points, notes
