"""What a run records: its progress (the state a checkpoint carries), its batch losses as train_log
rows, its evaluation rows, and the result handed back.

An evaluation row holds ``step``, ``epoch`` (fractional), ``batch_loss``, ``train_loss``,
``train_accuracy``, with a validation set ``val_loss`` and ``val_accuracy``, ``test_loss``,
``test_accuracy`` (fractions; None for a task without accuracy or when the training set is not
evaluated), ``lr`` and ``wall_time``, then the columns a stepper adds
(``violation_<key>``, ``multiplier_<key>``). A train_log row holds ``step``, ``epoch``, ``loss``,
``lr``, then the stepper's columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from optimlab.engine.config import TrainConfig
from optimlab.tasks import TASKS, Task

EVAL_BATCH = 1024  # bounds the memory of a CNN evaluation (1024 x 64 x 32 x 32 floats)


@dataclass
class RunResult:
    """What a run produced. ``evals``: one dict per evaluation (see :func:`train`); ``train_log``:
    ``{"step", "epoch", "loss", "lr"}`` every ``log_every`` steps."""

    config: TrainConfig
    status: str  # "completed" or "diverged"
    steps: int
    diverged_at: int | None
    evals: list[dict]
    train_log: list[dict]
    wall_time: float
    device: str
    model: nn.Module | None = None

    @property
    def final(self) -> dict:
        return self.evals[-1] if self.evals else {}

    def to_dict(self) -> dict:
        return {
            "config": self.config.to_dict(), "status": self.status, "steps": self.steps,
            "diverged_at": self.diverged_at, "wall_time": self.wall_time, "device": self.device,
            "final": self.final, "evals": self.evals, "train_log": self.train_log,
        }


def loss_function(task: str | Task) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The mean loss of a task (by name: mean cross-entropy over logits for classification; mean of
    1/2 (prediction - y)^2 for regression)."""
    return (TASKS[task] if isinstance(task, str) else task).loss


LOW_PRECISION = (torch.bfloat16, torch.float16)  # outputs of autocast, cast to fp32 for the loss


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str | Task,
             batch_size: int = EVAL_BATCH) -> tuple[float, float | None]:
    """Mean loss and accuracy (a fraction; None for a task without one) of ``model`` on all of (x, y),
    in eval mode (BatchNorm's running statistics, no dropout). Under autocast (a run's bf16 or fp16
    precision), the outputs are cast to fp32 for the loss."""
    task = TASKS[task] if isinstance(task, str) else task
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        out = model(xb)
        if out.dtype in LOW_PRECISION:
            out = out.float()
        loss_sum += task.loss_sum(out, yb).double()
        if task.accuracy:
            correct += task.hits(out, yb)
    model.train(was_training)
    n = x.shape[0]
    loss = loss_sum.item() / n
    return loss, (correct.item() / n if task.accuracy else None)


class RunProgress:
    """The state of a run that a checkpoint carries, besides model and optimizer."""

    def __init__(self) -> None:
        self.step = 0
        self.epoch = 0  # completed epochs
        self.status = "running"
        self.diverged_at: int | None = None
        self.evals: list[dict] = []
        self.train_log: list[dict] = []
        self.wall_time = 0.0

    def to_dict(self) -> dict:
        return dict(vars(self))

    def load(self, d: dict) -> None:
        for k in vars(self):
            setattr(self, k, d[k])


def eval_row(step: int, per_epoch: int, batch_loss: float | None, train: tuple | None, test: tuple,
             lr: float, wall_time: float, val: tuple | None = None) -> dict:
    """An evaluation row (module docstring); ``train`` / ``val`` / ``test``: (loss, accuracy), train
    None when the training set is not evaluated, val None without a validation set (the row then has
    no ``val_*`` columns)."""
    row = {"step": step, "epoch": round(step / per_epoch, 6), "batch_loss": batch_loss,
           "train_loss": train[0] if train else None, "train_accuracy": train[1] if train else None}
    if val is not None:
        row.update(val_loss=val[0], val_accuracy=val[1])
    return {**row, "test_loss": test[0], "test_accuracy": test[1], "lr": lr, "wall_time": wall_time}


def evaluated_at(state: RunProgress, step: int) -> bool:
    """Whether the run's last evaluation row is at ``step``."""
    return bool(state.evals) and state.evals[-1]["step"] == step


def flush_losses(pending: list[torch.Tensor], state: RunProgress, log_every: int, per_epoch: int,
                 lr: float | Callable[[int], float]) -> float:
    """Look at the batch losses since the last look (one device sync): log, detect divergence.

    Returns the last batch loss. On a non-finite loss, marks the run diverged at its step.
    """
    values = torch.stack(pending).tolist()
    pending.clear()
    return record_losses(values, state, log_every, per_epoch, lr)


def record_losses(values: list[float], state: RunProgress, log_every: int, per_epoch: int,
                  lr: float | Callable[[int], float]) -> float:
    """Record the batch losses of the last ``len(values)`` steps (up to ``state.step``) as
    :func:`train` does: a train_log row every ``log_every`` steps, with ``lr`` (or ``lr(step)``, the
    learning rate of that step's update); at the first non-finite loss the run is marked diverged at
    its step. Returns the last loss looked at."""
    first = state.step - len(values) + 1
    for offset, value in enumerate(values):
        s = first + offset
        if not math.isfinite(value):
            state.status, state.diverged_at, state.step = "diverged", s, s
            return value
        if s % log_every == 0:
            state.train_log.append({"step": s, "epoch": round(s / per_epoch, 6), "loss": value,
                                    "lr": lr(s) if callable(lr) else lr})
    return values[-1]


def run_result(config: TrainConfig, state: RunProgress, device, model) -> RunResult:
    return RunResult(config=config, status=state.status, steps=state.step,
                     diverged_at=state.diverged_at, evals=list(state.evals),
                     train_log=list(state.train_log), wall_time=state.wall_time,
                     device=str(device), model=model)


def progress_bar(total: int, initial: int, enabled: bool):
    """A tqdm bar over the run's steps (disabled: a no-op)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="it", dynamic_ncols=True,
                leave=False)
