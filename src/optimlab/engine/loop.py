"""The cadence of training, written once for a single run and for a vectorized group of runs.

Steps are counted from 1: step s is the s-th update, made on batch s of the seeded batch order; its
batch loss is the loss of batch s before the update. The loop logs the batch losses every
``log_every`` steps (and at every evaluation and at the end of every epoch and of the run), looking at
them in one device sync; evaluates every ``eval_every`` steps, or at the end of every epoch when it is
None, and always at the last step; checkpoints at the end of every epoch and of the run; and, resumed
in the middle of an epoch, redraws that epoch's permutation from the state the checkpoint carries and
skips the batches already done. What a step does, what a record holds and how a run diverges belong
to the :class:`Trainee` it drives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch


class Trainee(Protocol):
    """What the loop drives: one run, or a group of runs stepped together.

    ``step`` (updates done) and ``epoch`` (epochs completed) are the loop's to advance; the rest is
    the trainee's: its batches, its step, its records, its checkpoints.
    """

    step: int
    epoch: int

    def running(self) -> bool:
        """Whether any of its runs still trains (not all diverged)."""

    def evaluated(self) -> bool:
        """Whether its runs' last evaluation is at the current step."""

    def has_evaluations(self) -> bool:
        """Whether any evaluation was recorded (a fresh start records one at step 0)."""

    def order_state(self) -> object:
        """The state of its batch order(s) now: what a checkpoint carries for the epoch in progress."""

    def epoch_batches(self) -> Sequence[torch.Tensor]:
        """The index tensors of the next epoch's batches, one per step."""

    def train_step(self, batch: torch.Tensor) -> torch.Tensor:
        """One update on ``batch``; returns the batch loss(es), not yet looked at."""

    def flush(self, pending: list[torch.Tensor]) -> object:
        """Look at the losses of the steps since the last look (up to ``step``): record them, detect
        divergence. Returns what :meth:`record_eval` takes as the last batch loss(es)."""

    def record_eval(self, batch_losses: object) -> None:
        """An evaluation row of every run still training, at ``step``."""

    def end_epoch(self) -> None:
        """An epoch has ended (the loop has counted it)."""

    def save(self, epoch_start: object) -> None:
        """Checkpoint, with ``epoch_start`` the batch-order state the current epoch was drawn from."""

    def finish(self) -> None:
        """The budget is spent: the runs still training have completed."""


def run_loop(trainee: Trainee, total: int, per_epoch: int, eval_every: int | None, log_every: int,
             bar, on_step=None) -> None:
    """Train ``trainee`` up to ``total`` steps (``per_epoch`` a pass over the data), with the
    cadence of the module docstring; ``bar``: a tqdm bar over the steps (updated at every look);
    ``on_step(step, total, last)``: called at every look too, ``last`` what ``flush`` returned (the
    last batch loss, or each run's: None for a run that diverged)."""
    if trainee.step == 0 and not trainee.has_evaluations():
        trainee.record_eval(None)
    epoch_start = trainee.order_state()
    while trainee.running() and trainee.step < total:
        epoch_start = trainee.order_state()
        batches = trainee.epoch_batches()
        skip = trainee.step - trainee.epoch * per_epoch  # > 0 only when resuming mid-epoch
        pending: list[torch.Tensor] = []
        last = None
        for i in range(skip, len(batches)):
            pending.append(trainee.train_step(batches[i]))
            trainee.step += 1
            step = trainee.step
            at_eval = eval_every is not None and step % eval_every == 0
            end = step == total or i == len(batches) - 1
            if step % log_every == 0 or at_eval or end:
                last = trainee.flush(pending)
                bar.update(step - bar.n)
                if on_step is not None:
                    on_step(step, total, last)
                if not trainee.running():
                    break
                if at_eval or (step == total and not trainee.evaluated()):
                    trainee.record_eval(last)
            if step == total:
                break
        else:
            trainee.epoch += 1
            trainee.end_epoch()
            if eval_every is None and not trainee.evaluated():
                trainee.record_eval(last)
            epoch_start = trainee.order_state()
            trainee.save(epoch_start)
            continue
        break
    trainee.finish()
    bar.close()
    trainee.save(epoch_start)
