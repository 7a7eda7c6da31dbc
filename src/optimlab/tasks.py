"""What a run minimises and measures: a task is a loss and its metrics, replacing comparisons of a
task's name.

Three tasks are built in: ``classification`` (mean cross-entropy over logits (N, C) against class
indices (N,); accuracy), ``regression`` (mean of 1/2 (prediction - y)^2; no accuracy) and
``objective`` (the model's output (N,) is each sample's loss; the loss is its mean). A user's
loss ``loss(output, y) -> scalar`` (the mean over the batch) becomes a task with
:meth:`Task.from_loss`: it keeps the accuracy when the data are class indices and the output holds
one score per class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from optimlab.errors import OptimlabError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropies(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log softmax(out)[y] of each sample: out (B, C), y (B,) -> (B,).

    Written with ``logsumexp`` and ``gather`` rather than ``F.cross_entropy``, which batches badly
    under ``vmap`` (a Python decomposition of ``nll_loss``: 2.6x slower for 15 stacked runs)."""
    return out.logsumexp(dim=-1) - out.gather(-1, y.unsqueeze(-1)).squeeze(-1)


def _per_output(y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Class labels y (S, B) as one row per output of out (S, L, B, C): (S, L, B), a view."""
    return y.unsqueeze(1).expand(-1, out.shape[1], -1)


def _half_mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * F.mse_loss(pred, y)


@dataclass(frozen=True)
class Task:
    """A loss and its metrics.

    ``loss(out, y)``: the mean loss of a batch (a scalar tensor, differentiable), as training uses it.
    ``loss_sum(out, y)``: the summed loss of a batch, for evaluation over a whole set.
    ``stacked_loss`` / ``stacked_loss_sum``: the same, written to batch well under ``vmap`` (the
    vectorized engine uses them; equal to ``loss`` / ``loss_sum`` up to rounding).
    ``accuracy``: whether the task reports the fraction of samples whose largest score is the label.
    ``kind``: the kind of data it needs, ``"classification"`` (int64 labels) or ``"regression"``.
    ``many_losses(out, y)`` (or None): the mean loss of each of many outputs at once, without vmap:
    out (S, L, B, *output), y (S, B, *target), each seed's targets shared by its L outputs -> (S, L).
    """

    name: str
    loss: Loss
    loss_sum: Loss
    stacked_loss: Loss
    stacked_loss_sum: Loss
    accuracy: bool
    kind: str
    many_losses: Loss | None = None

    @classmethod
    def from_loss(cls, loss: Loss, kind: str, name: str | None = None) -> Task:
        """A task whose loss is the user's ``loss(out, y)`` (mean over the batch) on data of ``kind``;
        the summed loss of a chunk is its mean times its size, the accuracy kept for classification."""
        if not callable(loss):
            raise OptimlabError(f"a loss must be callable as loss(output, y); got {loss!r}")
        label = name or getattr(loss, "__qualname__", None) or repr(loss)
        def summed(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return loss(out, y) * y.shape[0]

        return cls(name=label, loss=loss, loss_sum=summed, stacked_loss=loss, stacked_loss_sum=summed,
                   accuracy=kind == "classification", kind=kind)

    def hits(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The number of samples whose largest score is their label (an int64 scalar)."""
        return (out.argmax(dim=1) == y).sum()


CLASSIFICATION = Task(
    name="classification", loss=F.cross_entropy,
    loss_sum=lambda out, y: F.cross_entropy(out, y, reduction="sum"),
    stacked_loss=lambda out, y: cross_entropies(out, y).mean(),
    stacked_loss_sum=lambda out, y: cross_entropies(out, y).sum(), accuracy=True, kind="classification",
    many_losses=lambda out, y: cross_entropies(out, _per_output(y, out)).mean(dim=-1))
REGRESSION = Task(
    name="regression", loss=_half_mse, loss_sum=lambda pred, y: 0.5 * F.mse_loss(pred, y, reduction="sum"),
    # by hand: F.mse_loss with a target shared by the slices mixes them up under vmap (torch 2.13)
    stacked_loss=lambda pred, y: 0.5 * (pred - y).square().mean(),
    stacked_loss_sum=lambda pred, y: 0.5 * (pred - y).square().sum(), accuracy=False, kind="regression")
# the model's output is each sample's loss (DeepOBS's quadratic problem): the loss is its mean
OBJECTIVE = Task(
    name="objective", loss=lambda out, y: out.mean(), loss_sum=lambda out, y: out.sum(),
    stacked_loss=lambda out, y: out.mean(), stacked_loss_sum=lambda out, y: out.sum(), accuracy=False,
    kind="objective")
TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFICATION, REGRESSION, OBJECTIVE)}
