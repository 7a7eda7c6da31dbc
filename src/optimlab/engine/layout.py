"""The memory layout of a run's images: ``memory_format = "auto" | "contiguous" | "channels_last"``.

Convolutions on the CPU run faster on channels-last tensors (N, H, W, C in memory) for many
networks (oneDNN's kernels want them): measured on seed 004's CNN, one thread, batch 128, a training
step 1.25x faster in fp32 and, with bf16 autocast, 2.84x faster than the contiguous fp32 step (1.67x
contiguous). Not for every network nor every machine, so ``auto`` measures rather than assumes: for a
model with 2-D convolutions and image inputs, it times a few training steps of a copy of the model
both ways (on random inputs, the global random state untouched) and takes channels-last only when it
is at least :data:`MARGIN` faster. The choice is measured once per model class, input, batch,
device, precision and thread count in a process, and logged.

A channels-last run equals its contiguous run up to the convolution kernels' summation order (a
test states the tolerance), as runs with another thread count do; the model's parameters are
converted in place (its state dict, and so its checkpoints, keep their keys and values), and each
batch is converted as it is taken. Runs trained one by one only: a vectorized group's stacked
tensors keep their layout.
"""

from __future__ import annotations

import copy
import logging
import time

import torch
from torch import nn

from optimlab.engine.precision import Precision
from optimlab.errors import OptimlabError

MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
MARGIN = 1.1  # channels-last must be this much faster to be taken
PROBE_STEPS = 4  # timed steps each way (the fastest counts: the least disturbed), after two warm-up steps
_CHOSEN: dict[tuple, str] = {}
log = logging.getLogger(__name__)


def check_memory_format(value: object) -> str:
    if value not in MEMORY_FORMATS:
        raise OptimlabError(f"unknown memory_format {value!r}; valid: {', '.join(MEMORY_FORMATS)} (auto: "
                            "channels-last where measured faster for a convolutional network)")
    return value


def has_image_convolutions(model: nn.Module, input_shape: tuple[int, ...]) -> bool:
    return len(input_shape) == 3 and any(isinstance(m, nn.Conv2d) for m in model.modules())


def choose_layout(setting: str, model: nn.Module, input_shape: tuple[int, ...], batch_size: int,
                  device: torch.device, precision: Precision) -> str:
    """``contiguous`` or ``channels_last`` for a run of ``model``: the setting, or for ``auto`` the
    faster of the two measured (contiguous for a model without 2-D convolutions on images)."""
    if setting != "auto":
        return setting
    if not has_image_convolutions(model, input_shape):
        return "contiguous"
    key = (type(model).__qualname__, tuple(input_shape), batch_size, str(device), precision.name,
           torch.get_num_threads(), tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))
    if key not in _CHOSEN:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            plain, channels_last = (_step_time(model, input_shape, batch_size, device, precision, f)
                                    for f in (torch.contiguous_format, torch.channels_last))
        _CHOSEN[key] = "channels_last" if channels_last * MARGIN <= plain else "contiguous"
        log.info("memory format of %s: %s (a training step measured %.1f ms contiguous, %.1f ms "
                 "channels-last)", type(model).__name__, _CHOSEN[key], 1e3 * plain, 1e3 * channels_last)
    return _CHOSEN[key]


def _step_time(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, device: torch.device,
               precision: Precision, memory_format: torch.memory_format) -> float:
    """The shortest time of a training step (forward, a loss, backward) of a copy of ``model``."""
    probe = copy.deepcopy(model).to(device).train().to(memory_format=memory_format)
    x = torch.randn(batch_size, *input_shape, device=device).contiguous(memory_format=memory_format)
    times = []
    for _ in range(PROBE_STEPS + 2):
        start = time.perf_counter()
        precision.forward(probe, x).square().mean().backward()  # the loss's cost is the model's to neglect
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times[2:])
