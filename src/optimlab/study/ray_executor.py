"""The ``ray`` executor: the units of a study as Ray tasks, on a local Ray (started here) or a cluster.

Tasks send their checkpoints and rows through a Ray queue to this process, which alone writes the
store, exactly as with the other executors. A task that fails (its worker died, its node was lost)
is retried until it has been tried ``max_attempts`` times, then its runs are recorded as failed.
Data sets are loaded by name on the node that trains (``mnist-10k`` is bundled; others must be
where the catalogue looks, or downloadable there). The packages in the study's ``python_path``
travel with the tasks (Ray's ``py_modules``), so a cluster's nodes import the same code.
"""

from __future__ import annotations

import queue as stdlib_queue

from optimlab.errors import OptimlabError
from optimlab.study.spec import ExecutorSpec
from optimlab.study.store import LostClaim
from optimlab.study.units import Unit

POLL_S = 0.2


def _ray():
    try:
        import ray
    except ImportError:
        raise OptimlabError(
            "the ray executor needs Ray: pip install 'optimlab[ray]' (or choose --executor processes)"
        ) from None
    return ray


def run_on_ray(units: list[Unit], store, board, executor: ExecutorSpec, data_dir: str | None) -> None:
    if not units:
        return
    ray = _ray()
    from ray.util.queue import Queue

    started_here = not ray.is_initialized()
    shipped = _code_packages(units[0].python_path)
    if started_here:
        # the user's packages go with the job (Ray uploads local folders only at the job level): a
        # cluster's nodes import the same code. A Ray started by the caller must have them already.
        env = {"runtime_env": {"py_modules": shipped}} if shipped else {}
        try:
            ray.init(address=executor.address, include_dashboard=False, log_to_driver=False, **env,
                     configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = executor.address or "a local Ray"
            raise OptimlabError(f"cannot start or reach {where}: {e}") from None
    try:
        events = Queue()
        task = ray.remote(max_retries=0)(_ray_task)
        limit = executor.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        todo, running, attempts = list(units), {}, {u.key: 0 for u in units}
        lost: set[str] = set()  # units another process took over
        steppers: dict[str, object] = {}
        by_key = {u.key: u for u in units}
        while todo or running:
            while todo and len(running) < limit:
                unit = todo.pop(0)
                claim = store.claim_unit(unit.key, unit.run_ids, engine=unit.engine)
                if claim is None:  # another process has it (or has finished it) meanwhile
                    continue
                attempts[unit.key] += 1
                ref = task.remote(unit.to_message(), claim.checkpoint, events,
                                  (unit.key, attempts[unit.key]), data_dir, executor.final_checkpoints)
                running[ref] = unit
            for ref in [r for r, u in running.items() if u.key in lost]:  # taken over: stop them
                ray.cancel(ref, force=True)
                running.pop(ref)
            _drain(events, by_key, attempts, running, board, lost, steppers)
            done, _ = ray.wait(list(running), timeout=0)
            for ref in done:
                unit = running.pop(ref)
                # its last messages
                _drain(events, by_key, attempts, {**running, ref: unit}, board, lost, steppers)
                if unit.key in lost:
                    continue
                try:
                    error = ray.get(ref)
                except Exception as e:  # the task's worker died or its node was lost
                    error = (f"Ray task for runs {unit.run_ids} failed "
                             f"(attempt {attempts[unit.key]} of {executor.max_attempts}): {e}", None)
                if error is None:
                    continue
                message, fatal = error
                if fatal:
                    raise OptimlabError(fatal)
                retry = attempts[unit.key] < executor.max_attempts
                board.failed(unit, message, retry)
                if retry:
                    todo.append(unit)
    finally:
        if started_here:
            ray.shutdown()


def _code_packages(python_path) -> list[str]:
    """The packages (folders with ``__init__.py``) in the study's ``python_path`` folders: what
    Ray's ``py_modules`` uploads. Single-file modules there are found through the path itself, so
    only on nodes that share this machine's files."""
    from pathlib import Path

    return sorted(str(p) for folder in python_path for p in Path(folder).iterdir()
                  if p.is_dir() and (p / "__init__.py").is_file())


def _drain(events, by_key: dict, attempts: dict, running: dict, board, lost: set,
           steppers: dict) -> None:
    """Store every message waiting in the queue (waiting up to POLL_S for the first), and show the
    per-step ones on the bar (``steppers``: unit key -> its display); a unit whose claim another
    process took over goes into ``lost``."""
    in_flight = {u.key for u in running.values()}
    timeout = POLL_S
    while True:
        try:
            kind, tag, *message = events.get(timeout=timeout)
        except stdlib_queue.Empty:
            return
        except Exception:  # ray.util.queue.Empty subclasses queue.Empty in recent Ray
            return
        timeout = 0.001
        key, attempt = tag
        if key not in in_flight or attempt != attempts[key] or key in lost:
            continue
        if kind == "step":
            steppers.setdefault(key, board.stepper(by_key[key]))(*message)
            continue
        checkpoint, results, finished = message
        try:
            board.commit(by_key[key], checkpoint, results, finished)
        except LostClaim:
            board.lost(by_key[key])
            lost.add(key)


def _ray_task(unit_msg: dict, checkpoint: bytes | None, events, tag, data_dir: str | None,
              final_checkpoint: bool = True):
    """Runs on a Ray worker: train the unit, sending progress. Returns None, or (traceback, the
    message of an error the user must fix, else None)."""
    import traceback

    from optimlab.study.units import Unit, throttled, train_unit

    unit = Unit.from_message(unit_msg)

    def emit(ckpt: bytes, results: list[dict], finished: bool) -> None:
        events.put(("progress", tag, ckpt, results, finished))

    def step(s: int, total: int, losses: list) -> None:
        events.put(("step", tag, s, total, losses))

    try:
        train_unit(unit, checkpoint, emit, data_dir=data_dir, on_step=throttled(step),
                   final_checkpoint=final_checkpoint)
    except Exception as e:
        return traceback.format_exc(), (str(e) if isinstance(e, OptimlabError) else None)
    return None
