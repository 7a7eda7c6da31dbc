"""Optimizers whose evaluated point is not their training point.

Schedule-free optimizers (``schedulefree``, ``pytorch_optimizer``'s ScheduleFree*) train at a point y
and keep an average x; ``optimizer.eval()`` puts the parameters at x, ``optimizer.train()`` back at
y. The engine treats every optimizer with both methods so:

* an evaluation happens at x, with BatchNorm's running statistics recomputed at x (their cumulative
  average over the first :data:`BATCHNORM_BATCHES` training batches, in order, in train mode without
  gradients; dropout's draws on a forked generator), and afterwards the parameters, buffers and
  random state are restored bit for bit: evaluating does not change the run (``train()`` after
  ``eval()`` alone would move y by rounding);
* checkpoints hold the training state (y and the optimizer's state), so a resumed run is the
  uninterrupted one; the model a finished run returns is at x, its statistics recomputed there;
* a learning-rate schedule is refused: these methods replace it (their ``warmup_steps`` warms up).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

BATCHNORM_BATCHES = 50


def has_modes(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` has ``train()`` and ``eval()`` (an evaluation point of its own)."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


def to_evaluation_point(optimizer: torch.optim.Optimizer, model: nn.Module, x_train: torch.Tensor,
                        batch_size: int) -> None:
    """Move ``model`` to ``optimizer``'s evaluation point and recompute its BatchNorm statistics."""
    optimizer.eval()
    recompute_batchnorm(model, x_train, batch_size)


@contextlib.contextmanager
def evaluation_point(optimizer: torch.optim.Optimizer, model: nn.Module, x_train: torch.Tensor,
                     batch_size: int):
    """Inside: ``model`` at the evaluation point (see the module docstring); afterwards exactly as
    before. A no-op for an optimizer without modes."""
    if not has_modes(optimizer):
        yield
        return
    params = [p.detach().clone() for p in model.parameters()]
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    to_evaluation_point(optimizer, model, x_train, batch_size)
    try:
        yield
    finally:
        optimizer.train()
        with torch.no_grad():
            for p, saved in zip(model.parameters(), params, strict=True):
                p.copy_(saved)
            for k, b in model.named_buffers():
                b.copy_(buffers[k])


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, x_train: torch.Tensor, batch_size: int,
                        batches: int = BATCHNORM_BATCHES) -> None:
    """Running statistics of every BatchNorm that tracks them, recomputed at the current parameters:
    the cumulative average over the first ``batches`` batches of ``x_train`` (in order). The
    model's mode and the global random state are left as they were."""
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    was_training = model.training
    model.train()
    devices = [x_train.device] if x_train.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for start in range(0, min(x_train.shape[0], batches * batch_size), batch_size):
            model(x_train[start:start + batch_size])
    model.train(was_training)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
