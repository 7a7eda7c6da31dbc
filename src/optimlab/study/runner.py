"""Running a study: plan the units of work still to do, hand them to an executor, store what comes back.

Executors: ``sequential`` (one run after another, in this process: the reference), ``vectorized``
(groups of runs trained together, in this process), ``processes`` (N worker processes, each training
whole runs or groups) and ``ray`` (the same units as Ray tasks, on a local Ray or a cluster). Whatever
the executor, only this process writes the store, one transaction per checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from optimlab.constrained.named import parse_constraint
from optimlab.errors import OptimlabError
from optimlab.study import axes
from optimlab.study.code import fingerprint
from optimlab.study.spec import ExecutorSpec, StudySpec, check_executor, load_study
from optimlab.study.store import LostClaim, StoreNotWritable, StudyStore
from optimlab.study.units import Unit, plan_units, refuse_objects, train_unit

DB_NAME = "study.db"
WAIT_S = 2.0  # how often a process with nothing left to claim looks at the others' claims


@dataclass
class StudyOutcome:
    """Counts of the runs of a study after :func:`run_study`, and where its store is."""

    store: Path
    completed: int
    diverged: int
    failed: int
    pending: int
    wall_time: float


def run_study(
    study: str | Path | StudySpec,
    out: str | Path | None = None,
    executor: ExecutorSpec | str | None = None,
    extend: bool = False,
    data_dir: str | None = None,
    progress: bool = False,
    verbose: bool = False,
    code_changed: bool = False,
) -> StudyOutcome:
    """Run every run of ``study`` that is not finished yet; return the counts.

    ``study``: a study file, or a :class:`StudySpec` (from :func:`load_study` or, with the user's
    objects, :func:`~optimlab.study.spec.build_study`). ``out``: the study's folder (default
    ``runs/<name>``), holding ``study.db``. Runs already completed (or diverged) are skipped; runs
    interrupted continue from their last checkpoint. ``executor`` overrides the study's
    ``[executor]`` (a kind such as ``"vectorized"`` or an :class:`ExecutorSpec`). A store whose
    recorded code fingerprint differs from the code imported now is refused unless ``code_changed``.
    """
    spec = study if isinstance(study, StudySpec) else load_study(study)
    if isinstance(executor, str):
        executor = dataclasses.replace(spec.executor, kind=executor, units=None)
    executor = check_executor(executor or spec.executor)
    out = Path(out) if out is not None else Path("runs") / spec.name
    spec = _as_in_store(spec, out / DB_NAME, progress or verbose)
    configs = spec.configs()
    if executor.kind in ("processes", "ray"):
        refuse_objects(configs, f"the {executor.kind} executor trains in other processes, which")
    targets = [(p["task"], spec.targets.get(p["task"])) for p in spec.grid]
    layouts = _preflight(configs, data_dir, executor.kind, targets)
    store = StudyStore.create(out / DB_NAME, spec, extend=extend, code=fingerprint(spec.import_paths()),
                              code_changed=code_changed)
    pool = _pool(executor, configs, data_dir)
    started = time.perf_counter()
    mine = {axes.key(p): c for p, c in zip(spec.grid, configs, strict=True)}
    board, staged = None, not spec.rerun_seeds
    try:
        with store.heartbeat():
            while True:  # until every run is finished, here or by the other processes on the store
                store.release_dead_claims()  # a process that died: its units are anyone's again
                rows = store.runs()
                busy = store.claimed_runs()
                todo = [r for r in rows if r["status"] in ("pending", "running", "failed")
                        and r["id"] not in busy and r["id"] not in store.claimed_here]
                board = board or _Board(store, len(rows), progress, verbose, executor.final_checkpoints)
                if not todo:
                    if busy:  # others train the rest: wait, to take their units over if they die
                        time.sleep(WAIT_S)
                        continue
                    if not staged:  # the grid is finished: its best settings with more seeds
                        staged = True
                        if _add_second_stage(spec, store, mine, board):
                            board.close()
                            board = None  # a new one counts the new runs
                            continue
                    break
                by_id = {r["id"]: mine[k] for r in todo if (k := axes.key(axes.of_row(r))) in mine}
                units = plan_units(todo, groups=executor.unit_kind == "groups", configs=by_id,
                                   data_dir=data_dir, python_path=spec.python_path,
                                   stack_always=executor.stack == "always", layouts=layouts)
                board.explain(units)
                _execute(units, store, board, executor, data_dir, pool)
                for unit in list(store.held):  # none should be left; never wait on one's own claim
                    store.release(unit)
        board.close()
        counts = {s: len(store.runs(s)) for s in ("completed", "diverged", "failed", "pending")}
    finally:
        for unit in list(store.held):  # interrupted (Ctrl-C, an error): give the units back
            try:
                store.release(unit)
            except StoreNotWritable:  # the store cannot be written now: the claim dies with this process
                break
        store.close()
        if pool is not None:
            pool.close()
    return StudyOutcome(store=out / DB_NAME, wall_time=time.perf_counter() - started, **counts)


def _add_second_stage(spec: StudySpec, store: StudyStore, mine: dict, board: _Board) -> int:
    """Add the runs of ``[rerun_best]`` (:func:`optimlab.study.protocol.second_stage`) to the store
    and to ``mine`` (point key -> config); returns how many were new."""
    from optimlab.study.protocol import second_stage

    points, notes = second_stage(spec, store)
    for note in notes:
        board.bar.write(f"note: {note}")
    configs = [spec.config(p) for p in points]
    mine.update({axes.key(p): c for p, c in zip(points, configs, strict=True)})
    added = store.add_runs(points, configs)
    if added:
        board.bar.write(f"rerun_best: {added} runs of the best settings with seeds {list(spec.rerun_seeds)}")
    return added


def _as_in_store(spec: StudySpec, db: Path, say: bool) -> StudySpec:
    """The study as the store at ``db`` (if any) holds it: a store written before a setting the file
    leaves to its default (the validation set) goes on as it was, and says so."""
    if not db.is_file():
        return spec
    try:
        store = StudyStore.open(db, readonly=True)
        try:
            old = json.loads(store.meta("definition") or "{}").get("shared", {})
        finally:
            store.close()
    except OptimlabError:
        return spec  # damaged, not a store: creating it says so
    spec, kept = spec.as_written_before(old)
    if kept and say:
        print(f"note: {db} was written before the setting {', '.join(kept)}; its study goes on without "
              f"(the file leaves {'it' if len(kept) == 1 else 'them'} to the default). For a study with "
              "a validation set, use another --out")
    return spec


def _preflight(configs, data_dir: str | None, kind: str, targets: list[tuple]) -> dict[tuple, str]:
    """Build the pieces of every distinct run once (data, model, task, optimizer, constraints), so
    that a setting refused there is refused before the store is written; ``targets``: each run's
    (task name, its target or None), a target refused where its task's metric can never reach it (an
    accuracy outside (0, 1]). On Ray the data may live on the cluster's nodes only: a data set this
    machine cannot find is left to them. Returns the memory format ``auto`` chose for each distinct
    run (by :func:`vectorizable_key`), measured here once, so that every process of the study trains
    the same layout (and so the same numbers)."""
    from optimlab.data import steps_per_epoch
    from optimlab.devices import resolve_device
    from optimlab.engine.build import check_batch_size, init_model, task_of, total_steps
    from optimlab.engine.group import vectorizable_key
    from optimlab.engine.layout import choose_layout
    from optimlab.engine.precision import Precision
    from optimlab.engine.steppers import make_stepper
    from optimlab.errors import DatasetNotFoundError
    from optimlab.schedules import Schedule
    from optimlab.study.units import unit_data

    seen, layouts = set(), {}
    for config, (name, target) in zip(configs, targets, strict=True):
        if (key := (name, target, vectorizable_key(config))) in seen:
            continue
        seen.add(key)
        try:
            data = unit_data(config, data_dir)
        except DatasetNotFoundError:
            if kind == "ray":
                return layouts
            raise
        check_batch_size(config.batch_size, data)
        per_epoch = steps_per_epoch(data.num_train, config.batch_size, config.drop_last)
        Schedule.parse(config.schedule).check(total_steps(config, per_epoch))
        task = task_of(config, data)
        model = init_model(config, data)
        make_stepper(config, model, task, "cpu")
        device = resolve_device(config.device)
        layouts[vectorizable_key(config)] = choose_layout(
            config.memory_format, model, data.input_shape, config.batch_size, device,
            Precision(config.precision, device))
        if target is not None and task.accuracy and not 0 < target <= 1:
            where = f"task {name!r}" if name is not None else "the study"
            raise OptimlabError(f"{where}: the target {target:g} is a validation accuracy, which lies in "
                                "(0, 1] (0.9 for 90 %): it can never be reached")
    return layouts


def _pool(executor: ExecutorSpec, configs: list, data_dir: str | None):
    """The processes executor's workers, one per CPU (or ``workers``), at most one per run, started
    when units first need them; None for the other executors."""
    if executor.kind != "processes":
        return None
    from optimlab.study.processes import WorkerPool

    return WorkerPool(min(executor.workers or os.cpu_count() or 1, max(1, len(configs))), data_dir)


def _execute(units: list[Unit], store: StudyStore, board: _Board, executor: ExecutorSpec,
             data_dir: str | None, pool=None) -> None:
    if executor.kind in ("sequential", "vectorized"):
        _run_here(units, store, board, data_dir)
    elif executor.kind == "processes" and len(units) == 1:  # no other unit to train at once: here,
        _run_here(units, store, board, data_dir)  # at once, with all the threads (a worker: 1.5 s later)
    elif executor.kind == "processes":
        from optimlab.study.processes import run_in_processes

        run_in_processes(units, store, board, executor, pool)
    else:
        from optimlab.study.ray_executor import run_on_ray

        run_on_ray(units, store, board, executor, data_dir)


def _run_here(units: list[Unit], store: StudyStore, board: _Board, data_dir: str | None) -> None:
    for unit in units:
        claim = store.claim_unit(unit.key, unit.run_ids, engine=unit.engine)
        if claim is None:  # another process has it (or has finished it) meanwhile
            continue
        try:
            train_unit(unit, claim.checkpoint, board.receiver(unit), data_dir=data_dir,
                       on_step=board.stepper(unit), final_checkpoint=board.final_checkpoints)
        except LostClaim:
            board.lost(unit)
        except OptimlabError:
            raise  # the user's to fix (the claim is given back on the way out)
        except Exception:  # a bug or a resource error in one unit: record it, go on
            board.failed(unit, traceback.format_exc(), retry=False)


class _Board:
    """Writes what units report to the store, and keeps the progress bar and lines up to date."""

    def __init__(self, store: StudyStore, total: int, progress: bool, verbose: bool,
                 final_checkpoints: bool = True):
        from tqdm.auto import tqdm

        self.store, self.verbose, self.final_checkpoints = store, verbose, final_checkpoints
        runs = store.runs()
        self.rows = {r["id"]: r for r in runs}  # their axes, for the lines
        self.done = sum(r["status"] in ("completed", "diverged", "failed") for r in runs)
        self.diverged = sum(r["status"] == "diverged" for r in runs)
        self.failed_runs = sum(r["status"] == "failed" for r in runs)
        self.total = total
        self.bar = tqdm(total=total, initial=self.done, unit="run", disable=not progress,
                        dynamic_ncols=True)
        self._now: dict[str, tuple] = {}  # unit key -> its last step's status, while in training
        self._shown = 0.0
        self._postfix()

    def explain(self, units: list[Unit]) -> None:
        """One line for each reason why runs that could have been trained together are not."""
        reasons = dict.fromkeys(u.engine for u in units if u.engine.startswith("one by one: ")
                                and not u.engine.endswith("no other run to train with"))
        for reason in reasons:
            count = sum(len(u.run_ids) for u in units if u.engine == reason)
            self.bar.write(f"note: {count} run{'s' if count > 1 else ''} {reason}")

    def _postfix(self, unit: str = "") -> None:
        text = f"diverged={self.diverged}, failed={self.failed_runs}"
        self.bar.set_postfix_str(f"{text}; {unit}" if unit else text, refresh=False)

    def stepper(self, unit: Unit):
        """What a unit in training calls (here, or through a worker's messages) at every look at its
        losses: the bar shows its steps, the runs still training, their best current batch loss and
        the unit's time left, or for several units in flight at once (worker processes) their sum
        (at most twice a second)."""
        clock = {"start": None}

        def show(step: int, total: int, losses: list) -> None:
            now = time.perf_counter()
            if clock["start"] is None:
                clock["start"] = (now, step)
            (t0, s0) = clock["start"]
            alive = [v for v in losses if v is not None and math.isfinite(v)]
            left = (now - t0) / (step - s0) * (total - step) if step > s0 else math.nan
            self._now[unit.key] = (step, total, len(alive), len(losses), min(alive, default=None), left)
            if now - self._shown < 0.5 and step < total:
                return
            self._shown = now
            self._postfix(self._in_flight())
            self.bar.refresh()

        return show

    def _in_flight(self) -> str:
        """The status of the units in training, for the bar."""
        states = list(self._now.values())
        if not states:
            return ""
        alive, n = sum(s[2] for s in states), sum(s[3] for s in states)
        bests = [s[4] for s in states if s[4] is not None]
        lefts = [s[5] for s in states if math.isfinite(s[5])]
        best = f", best batch loss {min(bests):.4g}" if bests else ""
        eta = f", {max(lefts):.0f} s left" if lefts else ""
        if len(states) == 1:
            step, total = states[0][:2]
            runs = f"{alive} of {n} runs" if n > 1 else "1 run"
            return f"now: {runs} at step {step}/{total}{best}{eta}"
        steps = ", ".join(f"{s[0]}/{s[1]}" for s in states)
        return f"now: {len(states)} units, {alive} of {n} runs, at steps {steps}{best}{eta}"

    def idle(self, unit: Unit) -> None:
        """The unit is no longer in training (finished, failed, given up)."""
        if self._now.pop(unit.key, None) is not None:
            self._postfix(self._in_flight())

    def receiver(self, unit: Unit):
        def emit(checkpoint: bytes, results: list[dict], finished: bool) -> None:
            self.commit(unit, checkpoint, results, finished)

        return emit

    def commit(self, unit: Unit, checkpoint: bytes, results: list[dict], finished: bool) -> None:
        """Write a unit's report; an empty checkpoint (a finished unit's with ``final_checkpoints =
        false``, which every executor's ``train_unit`` leaves out) is not kept."""
        self.store.commit(unit.key, unit.run_ids, checkpoint or None, results, finished)
        if finished:
            for run_id, config, r in zip(unit.run_ids, unit.configs, results, strict=True):
                self.done += 1
                self.diverged += r["status"] == "diverged"
                if self.verbose:
                    self.bar.write(self._line(run_id, config, r))
            self._now.pop(unit.key, None)
            self._postfix(self._in_flight())
            self.bar.update(len(results))

    def lost(self, unit: Unit) -> None:
        """Another process took the unit over (this one's lease had expired): its work since the last
        checkpoint is dropped; the other process's claim writes the runs."""
        self._now.pop(unit.key, None)
        self.bar.write(f"note: runs {unit.run_ids} were taken over by another process; left to it")

    def failed(self, unit: Unit, error: str, retry: bool) -> None:
        self._now.pop(unit.key, None)
        self.store.fail(unit.key, unit.run_ids, error, retry)
        if not retry:
            self.failed_runs += len(unit.run_ids)
            self.done += len(unit.run_ids)
            self.bar.update(len(unit.run_ids))
            self._postfix()
        if self.verbose or not retry:
            last = error.strip().splitlines()[-1] if error.strip() else "unknown error"
            self.bar.write(f"{'retrying' if retry else 'failed'}: runs {unit.run_ids}: {last}")

    def _line(self, run_id: int, config, r: dict) -> str:
        final = r["evals"][-1] if r["evals"] else {}
        acc = final.get("test_accuracy")
        what = (f"diverged at step {r['diverged_at']}" if r["status"] == "diverged" else
                f"test accuracy {acc:.4f}" if acc is not None else f"test loss {final.get('test_loss')}")
        if config.constraints and r["status"] != "diverged":  # the largest violation (|h| for ==)
            named = [parse_constraint(c) for c in config.constraints]
            worst = max((abs(v) if c.kind == "==" else v for c in named
                         if (v := final.get(f"violation_{c.key}")) is not None), default=None)
            what += f", largest violation {worst:+.3g}" if worst is not None else ""
        where = axes.label(axes.of_row(self.rows[run_id]))
        return f"[{self.done}/{self.total}] {where}: {what}, {r['wall_time']:.1f} s"

    def close(self) -> None:
        self.bar.close()


def executor_from_options(spec: StudySpec, kind: str | None, workers: int | None,
                          address: str | None) -> ExecutorSpec:
    """The study file's executor with the command line's overrides."""
    changes = {k: v for k, v in (("kind", kind), ("workers", workers), ("address", address))
               if v is not None}
    if "kind" in changes and spec.executor.kind != changes["kind"]:
        changes.setdefault("units", None)  # the new kind's own default
    return check_executor(dataclasses.replace(spec.executor, **changes))
