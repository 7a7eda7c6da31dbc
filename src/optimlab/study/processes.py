"""The ``processes`` executor: N worker processes train units; this process stores what they report.

Each worker gets one unit at a time on its own queue and sends back, on a shared queue, a message at
every checkpoint. A worker that dies (killed, out of memory) is replaced; its unit goes back to the
queue until it has been tried ``max_attempts`` times, then its runs are recorded as failed and the
study goes on. Workers end themselves when the driving process is gone.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import queue
import signal
import sys
import traceback

from optimlab.errors import OptimlabError
from optimlab.study.spec import ExecutorSpec
from optimlab.study.store import LostClaim
from optimlab.study.units import Unit, throttled, train_unit

POLL_S = 0.2


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this worker when its parent dies (else: checked at every message)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() != parent:
        os._exit(1)


def _worker(inbox, outbox, parent: int, data_dir: str | None) -> None:
    _die_with_parent(parent)
    import torch

    while True:
        task = inbox.get()
        if task is None:
            return
        torch.set_num_threads(task["threads"])
        unit, tag = Unit.from_message(task["unit"]), (task["unit_key"], task["attempt"])

        def emit(checkpoint: bytes, results: list[dict], finished: bool, tag=tag) -> None:
            if os.getppid() != parent:
                os._exit(1)
            outbox.put(("progress", tag, checkpoint, results, finished))

        def step(s: int, total: int, losses: list, tag=tag) -> None:
            outbox.put(("step", tag, s, total, losses))

        try:
            train_unit(unit, task["checkpoint"], emit, data_dir=data_dir, on_step=throttled(step),
                       final_checkpoint=task["final_checkpoint"])
        except Exception as e:  # reported to the driver, which records it
            fatal = str(e) if isinstance(e, OptimlabError) else None  # the user's to fix: stop
            outbox.put(("error", tag, traceback.format_exc(), fatal))


class _Slot:
    def __init__(self, ctx, outbox, data_dir: str | None):
        self.inbox = ctx.Queue()
        self.process = ctx.Process(target=_worker, daemon=True,
                                   args=(self.inbox, outbox, os.getpid(), data_dir))
        self.process.start()
        self.unit: Unit | None = None


class WorkerPool:
    """Up to ``size`` worker processes for a whole study run, kept across its units (torch imported,
    the data loaded once a process), started by :meth:`start` when units need them (after the
    study's checks and the measurement of its groups, which their start-up would slow)."""

    def __init__(self, size: int, data_dir: str | None):
        self.ctx = mp.get_context("spawn")
        self.outbox = self.ctx.Queue()
        self.size, self.data_dir = size, data_dir
        self.slots: list[_Slot] = []

    def start(self, units: int) -> None:
        """Workers for ``units`` units at once (at most ``size``; those running already count)."""
        while len(self.slots) < min(units, self.size):
            self.slots.append(self._start())

    def _start(self) -> _Slot:
        return _Slot(self.ctx, self.outbox, self.data_dir)

    def threads(self, units: int) -> int:
        """Torch threads for each of ``units`` units in training at once: the CPUs shared out (a
        single group on two CPUs: one worker with two threads, measured as fast as the group cut
        in two halves on one thread each, and no slower than one process)."""
        return max(1, (os.cpu_count() or 1) // max(1, min(units, self.size)))

    def replace(self, i: int) -> _Slot:
        """A new worker in place of slot ``i``'s, which died."""
        self.slots[i] = self._start()
        return self.slots[i]

    def close(self) -> None:
        """End the workers when they have read the message to stop (or after 5 s)."""
        for slot in self.slots:
            if slot.process.is_alive():
                slot.inbox.put(None)
        for slot in self.slots:
            slot.process.join(timeout=5)
            if slot.process.is_alive():
                slot.process.kill()


def run_in_processes(units: list[Unit], store, board, executor: ExecutorSpec, pool: WorkerPool) -> None:
    """Train ``units`` on ``pool``'s workers, writing what they report to ``store`` (through
    ``board``); a worker that dies is replaced (its unit retried, up to ``executor.max_attempts``)."""
    pool.start(len(units))
    outbox, slots = pool.outbox, pool.slots
    todo = list(units)
    attempts = {u.key: 0 for u in units}
    by_key = {u.key: u for u in units}
    steppers: dict[str, object] = {}  # unit key -> the bar's per-step display of it
    try:
        while todo or any(s.unit for s in slots):
            for i, slot in enumerate(slots):
                if slot.unit is not None and not slot.process.is_alive():
                    _lost(slot, board, executor, attempts, todo)
                if not slot.process.is_alive():
                    slot = pool.replace(i)
                while slot.unit is None and todo:
                    unit = todo.pop(0)
                    claim = store.claim_unit(unit.key, unit.run_ids, worker=slot.process.pid,
                                             engine=unit.engine)
                    if claim is None:  # another process has it (or has finished it) meanwhile
                        continue
                    slot.unit = unit
                    attempts[unit.key] += 1
                    steppers.pop(unit.key, None)  # a new attempt: its time left is measured afresh
                    in_flight = sum(s.unit is not None for s in slots) + len(todo)
                    slot.inbox.put({"unit": unit.to_message(), "unit_key": unit.key,
                                    "attempt": attempts[unit.key], "checkpoint": claim.checkpoint,
                                    "threads": pool.threads(in_flight),
                                    "final_checkpoint": executor.final_checkpoints})
            try:
                msg = outbox.get(timeout=POLL_S)
            except queue.Empty:
                continue
            kind, (key, attempt) = msg[0], msg[1]
            slot = next((s for s in slots if s.unit is not None and s.unit.key == key), None)
            if slot is None or attempt != attempts[key]:  # from a worker already given up on
                continue
            if kind == "step":
                steppers.setdefault(key, board.stepper(slot.unit))(*msg[2:])
                continue
            if kind == "progress":
                _, _, checkpoint, results, finished = msg
                try:
                    board.commit(by_key[key], checkpoint, results, finished)
                except LostClaim:  # taken over by another process: stop this worker's training of it
                    board.lost(slot.unit)
                    slot.unit = None
                    slot.process.kill()
                    continue
                if finished:
                    slot.unit = None
            else:
                _, _, error, fatal = msg
                if fatal:
                    raise OptimlabError(fatal)
                retry = attempts[key] < executor.max_attempts
                board.failed(slot.unit, error, retry)
                if retry:
                    todo.append(slot.unit)
                slot.unit = None
    finally:
        for slot in slots:  # a unit left in training (an error, Ctrl-C): its worker is stopped
            if slot.unit is not None and slot.process.is_alive():
                slot.process.kill()
                slot.unit = None


def _lost(slot: _Slot, board, executor: ExecutorSpec, attempts: dict, todo: list) -> None:
    """A worker died holding a unit: retry the unit or record its runs as failed."""
    unit = slot.unit
    code = slot.process.exitcode
    why = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
    retry = attempts[unit.key] < executor.max_attempts
    board.failed(unit, f"worker process {slot.process.pid} died ({why}) while training runs "
                 f"{unit.run_ids} (attempt {attempts[unit.key]} of {executor.max_attempts})", retry)
    if retry:
        todo.append(unit)
    slot.unit = None
