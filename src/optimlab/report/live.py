"""A study store as it is now, for the live dashboard (``optimlab dashboard``) and the report's
interactive figures: progress per task and optimizer, every run's learning curve, the sensitivity
curves, the claims and workers, failures and divergences, as one JSON-ready dict; and the page's own
files (``static/``: its HTML and script; Plotly's script from the installed ``plotly`` package).

Read-only: the store is opened as ``status``, ``report`` and ``export`` open it (never written, so
any number of readers follow a study while it runs), in one read transaction, so every number of a
state comes from the same moment of the store.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from optimlab.errors import OptimlabError
from optimlab.report.summaries import SPLITS, by_series, colours
from optimlab.study import axes
from optimlab.study.results import StudyResults, read_results
from optimlab.study.store import StudyStore, claim_is_live

# a run's status as the page counts it: "interrupted" is a run left running by a process that is gone
COUNTED = ("completed", "diverged", "running", "interrupted", "pending", "failed")


@dataclass
class Snapshot:
    """What the store held at one moment: its results (without the training log), its runs table's
    rows, its claims and its claim history."""

    results: StudyResults
    runs: list[dict]
    claims: list[dict]
    history: list[dict]
    where: str


def read_store(path: str | Path) -> Snapshot:
    """Read the store ``path`` in one read transaction; raises
    :class:`~optimlab.errors.OptimlabError` for a path that is not a readable study store."""
    store = StudyStore.open(path, readonly=True)
    try:
        store.conn.execute("BEGIN")  # one snapshot: a writer committing meanwhile is seen whole or not
        try:
            results = read_results(store, train_log=False)
            runs, claims, history = store.runs(), store.claims(), store.claim_history()
        finally:
            store.conn.execute("COMMIT")
    finally:
        store.close()
    return Snapshot(results, runs, claims, history, str(path))


def study_state(path: str | Path) -> dict:
    """What the dashboard shows of the store ``path`` now (see the module's docstring)."""
    return state_of(read_store(path))


def state_of(snapshot: Snapshot, now: float | None = None) -> dict:
    """The state of a snapshot at the time ``now`` (default: now): claims are live while their
    holders renew them and exist, so a snapshot's claims may die with time alone."""
    now = time.time() if now is None else now
    results, runs, history = snapshot.results, snapshot.runs, snapshot.history
    claims = [{**c, "live": claim_is_live(c, now)} for c in snapshot.claims]
    live = {i for c in claims if c["live"] for i in c["runs"]}
    labels = {r["id"]: axes.label(axes.of_row(r)) for r in runs}
    status = {r["id"]: "interrupted" if r["status"] == "running" and r["id"] not in live else r["status"]
              for r in runs}
    named = by_series(results)
    series = list(dict.fromkeys(named.runs.optimizer))
    tasks = [_task(named.of_task(task), task, status) for task in results.tasks]
    totals = {s: sum(v == s for v in status.values()) for s in COUNTED}
    return {
        "name": results.meta.get("name"), "store": snapshot.where, "now": now, "runs": len(runs),
        "totals": totals, "done": totals["completed"] + totals["diverged"],
        "running": any(c["live"] for c in claims),
        "updated": max((r["updated"] or 0 for r in runs), default=None),
        "colours": colours(series), "tasks": tasks,
        "claims": [_claim(c, labels, {r["id"]: r["worker"] for r in runs}, now) for c in claims],
        "workers": _workers(history, claims),
        "problems": _problems(runs, status, labels),
    }


def _task(results: StudyResults, task: str | None, status: dict[int, str]) -> dict:
    """One task's progress per optimizer (series), learning curves and sensitivity curves."""
    runs, evals = results.runs, results.evals
    if len(evals):  # chosen as the report chooses
        split = "val" if results.has_validation else "test"
    else:  # before the first evaluation, from the study's settings
        split = "val" if results.task_definition(task).get("settings", {}).get("validation") else "test"
    accuracy = f"{split}_accuracy"
    metric = accuracy if evals.empty or evals[accuracy].notna().any() else f"{split}_loss"
    loss = "train_loss" if evals.train_loss.notna().any() else "batch_loss"
    progress = []
    for opt, g in runs.groupby("optimizer", sort=False):
        counts = {s: 0 for s in COUNTED}
        for i in g.run_id:
            counts[status[int(i)]] += 1
        progress.append({"optimizer": opt, "total": len(g), **counts,
                         "done": counts["completed"] + counts["diverged"]})
    info = {int(r.run_id): r for r in runs.itertuples()}
    curves, finals = [], []
    for run_id, g in evals.groupby("run_id", sort=True):
        r = info[int(run_id)]
        curves.append({"run": int(run_id), "optimizer": r.optimizer, "lr": float(r.lr), "seed": int(r.seed),
                       "status": status[int(run_id)], "step": [int(s) for s in g.step],
                       "metric": _values(g[metric]), "loss": _values(g[loss])})
        if r.status == "completed" and len(g):
            finals.append({"run": int(run_id), "optimizer": r.optimizer, "lr": float(r.lr),
                           "seed": int(r.seed), "value": _value(g[metric].iloc[-1])})
    sensitivity = []
    for opt, g in runs.groupby("optimizer", sort=False):
        mine = [f for f in finals if f["optimizer"] == opt and f["value"] is not None]
        points = []
        for lr in sorted(set(g.lr)):
            values = [f["value"] for f in mine if f["lr"] == lr]
            at = g[g.lr == lr]
            points.append({"lr": float(lr), "mean": _mean(values), "std": _std(values),
                           "finished": len(values), "seeds": len(at),
                           "diverged": int((at.status == "diverged").sum())})
        sensitivity.append({"optimizer": opt, "points": points})
    name = "accuracy" if metric == accuracy else "loss"
    return {"task": task, "split": SPLITS[split], "progress": progress, "curves": curves, "finals": finals,
            "sensitivity": sensitivity,
            "metric": {"column": metric, "label": f"{SPLITS[split]} {name}", "higher": name == "accuracy"},
            "loss": {"column": loss, "label": "training loss" if loss == "train_loss" else "batch loss"}}


def _claim(c: dict, labels: dict[int, str], workers: dict[int, int | None], now: float) -> dict:
    """A claim: its unit and runs, the process holding it (host, pid) and the processes training its
    runs (``workers``: the processes executor's worker processes; else the holder itself)."""
    return {"unit": c["unit"], "runs": [labels.get(i, str(i)) for i in c["runs"]], "host": c["host"],
            "pid": c["pid"], "workers": sorted({workers[i] for i in c["runs"] if workers.get(i) is not None}),
            "since": c["since"], "heartbeat_age": now - c["heartbeat"], "live": c["live"]}


def _workers(history: list[dict], claims: list[dict]) -> list[dict]:
    """Per process that ever claimed work (host, pid): its claims by outcome, the runs it finished,
    when it started and was last heard of, and whether it holds a live claim now."""
    beats = {c["token"]: c for c in claims}
    out: dict[tuple, dict] = {}
    for h in history:
        w = out.setdefault((h["host"], h["pid"]), {
            "host": h["host"], "pid": h["pid"], "claims": 0, "held": 0, "finished": 0, "failed": 0,
            "released": 0, "died": 0, "runs_finished": 0, "first": h["since"], "last": h["since"],
            "live": False})
        w["claims"] += 1
        outcome = h["outcome"] or "held"
        w[outcome] = w.get(outcome, 0) + 1
        w["runs_finished"] += len(h["runs"]) if outcome == "finished" else 0
        held = beats.get(h["token"])
        heard = held["heartbeat"] if held else h["ended"] or h["since"]
        w["first"], w["last"] = min(w["first"], h["since"]), max(w["last"], heard)
        w["live"] = w["live"] or bool(held and held["live"])
    return sorted(out.values(), key=lambda w: w["first"])


def _problems(runs: list[dict], status: dict[int, str], labels: dict[int, str]) -> list[dict]:
    """The runs that failed, diverged or were left running by a process that is gone."""
    out = []
    for r in runs:
        s = status[r["id"]]
        if s == "failed" or (s == "pending" and r["error"]):
            why = r["error"].strip().splitlines()[-1] if r["error"] and r["error"].strip() else ""
        elif s == "diverged":
            why = f"non-finite training loss at step {r['diverged_at']}"
        elif s == "interrupted":
            why = f"left at step {r['steps']} by a process that is gone; the next study run continues it"
        else:
            continue
        out.append({"run": r["id"], "label": labels[r["id"]], "status": s, "attempts": r["attempts"],
                    "steps": r["steps"], "why": why})
    return out


def _value(v) -> float | None:
    """A number for JSON: None for NaN, infinities and missing values."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _values(column) -> list[float | None]:
    return [_value(v) for v in column]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _std(values: list[float]) -> float | None:
    """The standard deviation over seeds, ddof = 1 as the report's (None for fewer than two)."""
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def plotly_js() -> str:
    """plotly.min.js as the installed ``plotly`` package ships it (the page fetches nothing else)."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise OptimlabError("the dashboard draws with Plotly, which is not installed: "
                            "pip install 'optimlab[dashboard]'") from None
    return get_plotlyjs()


def static(name: str) -> str:
    """A file of the page (``dashboard.html``, ``dashboard.js``) shipped with optimlab."""
    return (resources.files("optimlab.report") / "static" / name).read_text(encoding="utf-8")


def script_json(value) -> str:
    """``value`` as JSON to put inside a ``<script>`` element (no ``</`` to end it early)."""
    return json.dumps(value, allow_nan=False).replace("</", "<\\/")


def interactive_figures(state: dict) -> str:
    """The dashboard's figures of ``state`` as a block of a page that works offline: Plotly and the
    drawing script inlined, the state embedded (hover, legend clicks, a task to choose; no polling)."""
    config = {"state": state, "interval": None}
    return ("<div class='figures'><div class='figure' id='fig-metric'></div><div class='figure' "
            "id='fig-loss'></div><div class='figure' id='fig-sensitivity'></div></div>"
            f"<script type='application/json' id='dashboard-config'>{script_json(config)}</script>"
            f"<script>{plotly_js()}</script><script>{static('dashboard.js')}</script>")
