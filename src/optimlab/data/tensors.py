"""A data set held as tensors on one device, and the seeded batch order that indexes it.

No DataLoader: the whole set is normalized once and lives on the device; a batch is a gather of rows
by a slice of a seeded permutation (one permutation per epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

TASKS = ("classification", "regression")


@dataclass
class Dataset:
    """Training and test tensors of one named data set.

    ``x_*``: float32, (N, C, H, W) for images or (N, p) for feature vectors, already normalized.
    ``y_*``: int64 class indices (N,) for classification, float32 targets (N,) for regression.
    ``extras`` carries what a synthetic problem knows (for ``lls``: ``theta_star``, the exact
    least-squares solution on the training set, and ``optimal_loss``).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    task: str = "classification"
    classes: tuple[str, ...] = ()
    source: str = ""
    extras: dict = field(default_factory=dict)

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for a regression problem)."""
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device: str | torch.device) -> Dataset:
        """The same data on ``device`` (self when it is already there)."""
        device = torch.device(device)
        if self.x_train.device == device:
            return self
        move = {
            k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")
        }
        return replace(self, **move)


def steps_per_epoch(num_samples: int, batch_size: int, drop_last: bool) -> int:
    """Number of batches in one pass over ``num_samples`` samples."""
    return num_samples // batch_size if drop_last else math.ceil(num_samples / batch_size)


def epoch_batches(
    num_samples: int,
    batch_size: int,
    generator: torch.Generator,
    drop_last: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, ...]:
    """Index tensors of one epoch's batches: a seeded permutation of ``0..num_samples-1``, split.

    The permutation is drawn on the CPU from ``generator`` (so the order is the same on every
    device), moved to ``device`` once, and split into views of ``batch_size`` (the last one smaller
    unless ``drop_last``).
    """
    perm = torch.randperm(num_samples, generator=generator).to(device)
    batches = perm.split(batch_size)
    if drop_last and num_samples % batch_size:
        batches = batches[:-1]
    return batches
