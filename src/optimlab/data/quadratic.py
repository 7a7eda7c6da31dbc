"""``quadratic-deep``: DeepOBS's noisy quadratic problem (Schneider, Balles and Hennig, ICLR 2019),
recomputable by anyone from its definition.

theta in R^100 starts at 1; the loss of a sample x is 1/2 (theta - x)^T Q (theta - x), averaged over
a batch. Q = R^T D R: D holds 90 eigenvalues drawn from U(0, 1) and then 10 from U(30, 60), R is a
random rotation drawn uniformly from SO(100) by the subgroup algorithm of Diaconis and Shahshahani
(1987), all from one ``numpy.random.RandomState(42)`` in that order: the eigenvalues, then for the
rotation an angle ``2 pi u`` for SO(2) and for d = 2 .. 99 a vector ``normal(size=(d + 1, 1))``
whose reflection embeds the rotation of dimension d in dimension d + 1; the result is negated.
The data: 1,000 draws of N(0, 0.6^2 I) with ``RandomState(42).normal`` for training, 43 for the test
set and 44 for the validation set, as float32. DeepOBS evaluates in batches of 128 with the remainder
dropped, so its test set is the first 896 of the 1,000 draws (``test_points``).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from optimlab.data.tensors import Dataset

DIM = 100
NOISE = 0.6
POINTS = 1000
SEEDS = {"train": 42, "test": 43, "validation": 44}


def quadratic_deep_hessian() -> tuple[np.ndarray, np.ndarray]:
    """(Q, eigenvalues): the problem's Hessian (100, 100) and D's diagonal, float64 (copies: every
    model of a study builds one)."""
    hessian, eigenvalues = _hessian()
    return hessian.copy(), eigenvalues.copy()


@functools.cache
def _hessian() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(42)
    eigenvalues = np.concatenate([rng.uniform(0.0, 1.0, 90), rng.uniform(30.0, 60.0, 10)])
    angle = 2 * np.pi * rng.uniform()
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    for d in range(2, DIM):
        v = rng.normal(size=(d + 1, 1))
        v = v / np.sqrt((v.T @ v).item())
        e = np.zeros((d + 1, 1))
        e[0, 0] = 1.0
        x = (e - v) / np.sqrt(((e - v).T @ (e - v)).item())
        embedded = np.eye(d + 1)
        embedded[1:, 1:] = rotation
        rotation = embedded - 2 * x @ (x.T @ embedded)
    rotation = -rotation
    return rotation.T @ np.diag(eigenvalues) @ rotation, eigenvalues


def _draws(seed: int) -> torch.Tensor:
    return torch.from_numpy(np.float32(np.random.RandomState(seed).normal(0.0, NOISE, (POINTS, DIM))))


def make_quadratic_deep(test_points: int = 896) -> Dataset:
    """The problem's data (the targets are zeros: the model's output is each sample's loss); the
    validation set is its own draw (seed 44), so a study does not hold one out of the training set.
    ``extras``: ``hessian`` (float32) and ``eigenvalues``."""
    hessian, eigenvalues = quadratic_deep_hessian()
    zeros = torch.zeros(POINTS)
    return Dataset(
        name="quadratic-deep", x_train=_draws(SEEDS["train"]), y_train=zeros,
        x_test=_draws(SEEDS["test"])[:test_points], y_test=zeros[:test_points], task="objective",
        source="synthetic (DeepOBS's definition)",
        extras={"hessian": torch.from_numpy(np.float32(hessian)),
                "eigenvalues": torch.from_numpy(eigenvalues)},
        x_val=_draws(SEEDS["validation"]), y_val=zeros,
    )


class QuadraticDeep(nn.Module):
    """theta (100,), starting at 1; ``forward(x)`` (B, 100) -> each sample's loss
    1/2 (theta - x)^T Q (theta - x) (B,), with Q the problem's Hessian (a buffer, float32)."""

    def __init__(self, input_shape: tuple[int, ...] = (DIM,)):
        super().__init__()
        if tuple(input_shape) != (DIM,):
            raise ValueError(f"quadratic-deep takes inputs of shape ({DIM},); got {tuple(input_shape)}")
        self.theta = nn.Parameter(torch.ones(DIM))
        self.register_buffer("hessian", torch.from_numpy(np.float32(quadratic_deep_hessian()[0])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.theta - x
        return 0.5 * ((r @ self.hessian) * r).sum(dim=-1)


def expected_loss(theta: torch.Tensor) -> float:
    """The population loss E_x[1/2 (theta - x)^T Q (theta - x)] = 1/2 theta^T Q theta + 1/2 0.6^2 tr Q:
    what the losses approach with many samples (float64)."""
    hessian, eigenvalues = quadratic_deep_hessian()
    t = theta.detach().double().numpy()
    return float(0.5 * t @ hessian @ t + 0.5 * NOISE ** 2 * eigenvalues.sum())
