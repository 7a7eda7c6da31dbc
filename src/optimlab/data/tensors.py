"""A data set held as tensors on one device, and the seeded batch order that indexes it.

No DataLoader: the whole set is normalized once and lives on the device; a batch is a gather of rows
by a slice of a seeded permutation (one permutation per epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from optimlab.errors import OptimlabError

TASKS = ("classification", "regression", "objective")  # objective: the model's output is each sample's loss
VALIDATION_SEED = 0  # the seed of every validation split (the same examples for every run)


def check_validation(size: object) -> float | int | None:
    """A validation size as a setting takes it: None or 0 (no validation set), a fraction in (0, 1)
    of the training set, or a count >= 1 (an integer)."""
    if size is None or (not isinstance(size, bool) and size == 0):
        return None
    if isinstance(size, bool) or not isinstance(size, int | float) or not math.isfinite(size) or size < 0:
        raise OptimlabError(f"validation must be a fraction in (0, 1) of the training set, a count >= 1, or "
                            f"0 for none; got {size!r}")
    if isinstance(size, float) and size >= 1:
        raise OptimlabError(f"a validation fraction must be < 1 (or give a count, an integer); got {size!r}")
    return size


def validation_count(size: float | int, num_train: int) -> int:
    """The number of training examples a validation ``size`` holds out (a fraction in (0, 1), rounded,
    or a count), refused when it leaves either part empty."""
    size = check_validation(size)
    if size is None:
        raise OptimlabError("validation 0 holds out nothing")
    count = round(size * num_train) if isinstance(size, float) else size
    if not 1 <= count < num_train:
        raise OptimlabError(f"validation {size!r} holds out {count} of the {num_train} training examples; "
                            f"it must leave at least one in each part (1 to {num_train - 1})")
    return count


@dataclass
class Dataset:
    """Training and test tensors of one named data set.

    ``x_*``: float32, (N, C, H, W) for images or (N, p) for feature vectors, already normalized.
    ``y_*``: int64 class indices (N,) for classification, float32 targets (N,) for regression.
    ``extras`` carries what a synthetic problem knows (for ``lls``: ``theta_star``, the exact
    least-squares solution on the training set, and ``optimal_loss``). ``x_val`` / ``y_val``: a
    validation set held out of the training set (:meth:`with_validation`), or None.
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
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def num_val(self) -> int:
        return 0 if self.x_val is None else int(self.x_val.shape[0])

    def with_validation(self, size: float | int, seed: int = VALIDATION_SEED) -> Dataset:
        """The same data with ``size`` training examples held out as a validation set (a fraction
        in (0, 1) of the training set, or a count): the first of a permutation drawn on the CPU from
        ``seed``; both parts keep the examples' original order. The seed
        is the split's, not a run's: every run of a study is selected on the same examples. Refused
        when either part would be empty or, for classes, lack a class the training set has."""
        n = self.num_train
        count = validation_count(size, n)
        if self.x_val is not None:
            raise OptimlabError(f"{self.name} has a validation set already")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        held, kept = perm[:count].sort().values, perm[count:].sort().values
        held, kept = held.to(self.device), kept.to(self.device)
        out = replace(self, x_train=self.x_train[kept], y_train=self.y_train[kept], x_val=self.x_train[held],
                      y_val=self.y_train[held])
        if self.task == "classification" and self.classes:
            present = set(self.y_train.unique().tolist())
            for part, y in (("training part", out.y_train), ("validation set", out.y_val)):
                lacking = sorted(present - set(y.unique().tolist()))
                if lacking:
                    names = ", ".join(self.classes[c] for c in lacking[:5])
                    names += " ..." if len(lacking) > 5 else ""
                    raise OptimlabError(
                        f"a validation set of {count} of the {n} training examples of {self.name} leaves the "
                        f"{part} without an example of class {names}; hold out more (or fewer) examples")
        return out

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
        tensors = ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val")
        move = {k: getattr(self, k).to(device) for k in tensors if getattr(self, k) is not None}
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
