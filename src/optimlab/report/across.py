"""Across tasks: time to a target per task, performance profiles and the AlgoPerf-style score.

Terms (Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms"; Dolan and Moré 2002).
A task's *metric* is its accuracy on the selection split (the validation set where the study has
one, else the test set), or for a task without accuracy its loss there. Its *target* is the one the
study gives (``target``), else ``fraction`` of the best mean final accuracy of any (optimizer, lr)
cell, or for a loss the best mean final loss times 1 / ``fraction`` (best + (1/fraction - 1) |best|).

A run's *time to target* is the step (and the wall time) of its first evaluation whose metric reached
the target; a run that never did, or diverged, takes infinitely long. A setting's time is the median
over its seeds; an optimizer's time t(a, w) on task w is its fastest setting's, as AlgoPerf scores
the fastest of an algorithm's trials (tuning is choosing the setting). The *ratio* r(a, w) =
t(a, w) / min_b t(b, w) (infinite where a misses, and for every optimizer where all miss); the
*performance profile* rho_a(tau) = the fraction of tasks with r(a, w) <= tau; the *score* B_a =
1 / (r_max - 1) * integral_1^r_max rho_a(tau) d tau with r_max = 4, which for the step function rho
is the mean over tasks of max(0, r_max - r(a, w)) / (r_max - 1): 1 is fastest everywhere, 0 never
within r_max of the fastest. An optimizer that was not run on a task misses it.

The *tuning budget across tasks*: each task's expected best final metric of k random runs of an
optimizer's grid (:func:`optimlab.report.summaries.tuning_budget`) relative to the best run of any
optimizer on the task (accuracy / best; for a loss best / loss, which needs positive losses), averaged
over the tasks, for k up to the smallest grid: 1 is "as good as the best run, on every task".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from optimlab.errors import OptimlabError
from optimlab.report.summaries import Summary

R_MAX = 4.0


@dataclass
class Across:
    """The tables across tasks. ``times``: one row per (task, optimizer): ``metric``, ``target``,
    ``lr`` (the fastest setting; NaN: none reached), ``steps`` and ``seconds`` to the target,
    ``ratio_steps`` and ``ratio_seconds``, ``rank`` (by steps, within the task; those that missed tie
    last). ``scores``: one row per optimizer: ``score_steps``, ``score_seconds``, ``tasks_reached``,
    ``tasks``, ``mean_rank``, sorted by score. ``profiles``: ``optimizer, tau, rho_steps,
    rho_seconds`` on a grid of tau in [1, r_max]."""

    times: pd.DataFrame
    scores: pd.DataFrame
    profiles: pd.DataFrame
    r_max: float = R_MAX
    notes: tuple[str, ...] = ()
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)  # optimizer, k, relative, tasks


def times_to_target(evals: pd.DataFrame, final: pd.DataFrame, metric: str, target: float,
                    higher: bool) -> pd.DataFrame:
    """Per (optimizer, lr): the median over seeds of the step and the wall time of each run's first
    evaluation whose ``metric`` reached ``target`` (>= when ``higher``, else <=); a run that never
    did or diverged counts as infinite. Columns ``optimizer, lr, steps, seconds, seeds, reached``."""
    reached = evals[evals[metric] >= target] if higher else evals[evals[metric] <= target]
    first = reached.sort_values("step").groupby("run_id").first()
    rows = []
    for (opt, lr), g in final.groupby(["optimizer", "lr"], sort=False):
        ok = g.status != "diverged"
        steps = [float(first.step[i]) if k and i in first.index else math.inf
                 for i, k in zip(g.run_id, ok, strict=True)]
        seconds = [float(first.wall_time[i]) if k and i in first.index else math.inf
                   for i, k in zip(g.run_id, ok, strict=True)]
        rows.append({"optimizer": opt, "lr": lr, "steps": float(np.median(steps)),
                     "seconds": float(np.median(seconds)), "seeds": len(g),
                     "reached": int(sum(math.isfinite(s) for s in steps))})
    return pd.DataFrame(rows, columns=["optimizer", "lr", "steps", "seconds", "seeds", "reached"])


def ratios(times: pd.DataFrame, column: str) -> pd.Series:
    """r(a, w) = t(a, w) / min_b t(b, w) within each task (``times``: task, optimizer, ``column``);
    infinite where a missed, and for every optimizer of a task where all missed."""
    best = times.groupby("task")[column].transform("min")
    return (times[column] / best).where(np.isfinite(best), math.inf).astype(float)


def score(r: pd.Series | list, r_max: float = R_MAX) -> float:
    """B = 1 / (r_max - 1) * integral_1^r_max rho(tau) d tau for the ratios ``r`` of one optimizer on
    every task: the mean of max(0, r_max - r) / (r_max - 1)."""
    r = np.asarray(r, dtype=float)
    if len(r) == 0:
        return np.nan
    return float(np.mean(np.clip(r_max - r, 0.0, None) / (r_max - 1)))


def profile(r: pd.Series | list, taus) -> list[float]:
    """rho(tau): the fraction of tasks with r <= tau, for each tau."""
    r = np.asarray(r, dtype=float)
    return [float(np.mean(r <= t)) if len(r) else np.nan for t in taus]


def across_tasks(summaries: dict[str, Summary], evals: dict[str, pd.DataFrame],
                 targets: dict[str, float | None], r_max: float = R_MAX) -> Across:
    """The tables across ``summaries`` (task -> its Summary), from each task's evaluation rows
    (``evals``, optimizers named as the summaries name their series) and target (None: none could
    be set, every optimizer misses the task)."""
    if not r_max > 1:
        raise OptimlabError(f"r_max must be > 1; got {r_max}")
    optimizers = list(dict.fromkeys(o for s in summaries.values() for o in s.colours))
    rows, notes = [], []
    for task, summary in summaries.items():
        metric = f"{summary.split}_{summary.metric}"
        target = targets.get(task)
        per_setting = times_to_target(evals[task], summary.final, metric, target, summary.has_accuracy) \
            if target is not None else pd.DataFrame(columns=["optimizer", "lr", "steps", "seconds"])
        for opt in optimizers:
            mine = per_setting[per_setting.optimizer == opt]
            if opt not in set(summary.final.optimizer):
                notes.append(f"{opt} was not run on {task}: it counts as missing the target there.")
            fastest = mine.sort_values(["steps", "seconds"]).iloc[0] if len(mine) else None
            found = fastest is not None and math.isfinite(fastest.steps)
            rows.append({"task": task, "optimizer": opt, "metric": metric, "target": target,
                         "lr": fastest.lr if found else np.nan,
                         "steps": fastest.steps if found else math.inf,
                         "seconds": fastest.seconds if found else math.inf})
    times = pd.DataFrame(rows, columns=["task", "optimizer", "metric", "target", "lr", "steps", "seconds"])
    times["ratio_steps"] = ratios(times, "steps") if len(times) else []
    times["ratio_seconds"] = ratios(times, "seconds") if len(times) else []
    times["rank"] = times.groupby("task").steps.rank(method="min") if len(times) else []
    taus = np.linspace(1.0, r_max, 301)
    scores, profiles = [], []
    for opt, g in times.groupby("optimizer", sort=False):
        scores.append({"optimizer": opt, "score_steps": score(g.ratio_steps, r_max),
                       "score_seconds": score(g.ratio_seconds, r_max),
                       "tasks_reached": int(np.isfinite(g.steps).sum()), "tasks": len(g),
                       "mean_rank": float(g["rank"].mean())})
        profiles.append(pd.DataFrame({"optimizer": opt, "tau": taus,
                                      "rho_steps": profile(g.ratio_steps, taus),
                                      "rho_seconds": profile(g.ratio_seconds, taus)}))
    scores = pd.DataFrame(scores, columns=["optimizer", "score_steps", "score_seconds", "tasks_reached",
                                           "tasks", "mean_rank"])
    scores = scores.sort_values(["score_steps", "score_seconds"], ascending=False).reset_index(drop=True)
    profiles = pd.concat(profiles, ignore_index=True) if profiles else pd.DataFrame(
        columns=["optimizer", "tau", "rho_steps", "rho_seconds"])
    tuning, skipped = tuning_across(summaries)
    notes += [f"{task}: left out of the tuning budget across tasks (a loss that is not positive cannot be "
              "taken relative to the best)" for task in skipped]
    return Across(times, scores, profiles, r_max, tuple(dict.fromkeys(notes)), tuning)


def tuning_across(summaries: dict[str, Summary]) -> tuple[pd.DataFrame, list[str]]:
    """Per optimizer and k, the mean over tasks of the expected best of k random runs relative to the
    task's best run (columns ``optimizer, k, relative, tasks``), and the tasks left out (a loss that is
    not positive)."""
    parts, skipped = [], []
    for task, summary in summaries.items():
        t = summary.tuning
        if t.empty:
            continue
        final = summary.final
        runs = final[final.feasible.astype(bool)] if "feasible" in final else final
        values = runs[f"final_{summary.split}_{summary.metric}"]  # NaN where a run diverged
        if summary.has_accuracy:
            best = values.max()
            relative = t.expected_best / best if best > 0 else None
        else:
            best = values.min()
            relative = best / t.expected_best if best > 0 else None
        if relative is None:
            skipped.append(task)
            continue
        parts.append(t.assign(relative=relative, task=task))
    if not parts:
        return pd.DataFrame(columns=["optimizer", "k", "relative", "tasks"]), skipped
    every = pd.concat(parts, ignore_index=True)
    k_max = int(every.groupby(["task", "optimizer"]).k.max().min())  # every task has the draws
    every = every[every.k <= k_max]
    out = every.groupby(["optimizer", "k"], sort=False).agg(relative=("relative", "mean"),
                                                            tasks=("task", "nunique")).reset_index()
    return out, skipped
