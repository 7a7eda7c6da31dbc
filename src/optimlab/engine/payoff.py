"""Whether stacking a group pays: measured, not assumed.

A group that :func:`~optimlab.engine.group.group_refusal` lets through is exact stacked; whether it
is also faster depends on the model, the device, the precision and the machine: dense networks
stacked on a CPU are 1.8-4x faster than one by one (bench_study), seed 004's CNN 2x slower (its
convolutions: oneDNN runs one large convolution faster than vmap's batched one). So the engine
times both before a study trains a group: a few training steps of the group's first k runs stacked
(the group's own step) against k times a step of one of its runs alone (the run's own step, in its
layout), k up to :data:`PROBE_RUNS` and fewer where a step is slow, so that a probe takes about
:data:`PROBE_S` (measured here: 0.08 s for 15 MLP runs, stacked 0.5x the time one by one; 2.4 s for
seed 004's CNN, k = 2, stacked 1.7x slower), and trains the group one by one where stacked is slower
by more than :data:`MARGIN`. Measured once per distinct group (its settings but lr and seed, the runs
probed, the thread count, the device) in a process, on a copy of the global random state, and logged.
"""

from __future__ import annotations

import logging
import time

import torch

from optimlab.data import Dataset
from optimlab.devices import resolve_device
from optimlab.engine.config import TrainConfig
from optimlab.engine.group import _Group, vectorizable_key
from optimlab.engine.run import _Run

PROBE_RUNS = 16  # runs of a group timed stacked, at most
PROBE_S = 1.0  # about the seconds a probe may take: fewer runs where a step is slow (CNNs on a CPU)
PROBE_STEPS = 4  # timed steps each way, after two warm-up steps, on successive batches; the fastest counts
MARGIN = 1.1  # stacked must be this much slower than one by one to be refused
_MEASURED: dict[tuple, tuple[int, float, float]] = {}
log = logging.getLogger(__name__)


def slower_stacked(configs: list[TrainConfig], data: Dataset) -> str | None:
    """None when training ``configs`` (a group :func:`group_refusal` accepts) stacked is not
    measured slower than one by one; else the reason, with both times."""
    probe = configs[:PROBE_RUNS]
    device = resolve_device(probe[0].device)
    key = (vectorizable_key(probe[0]), tuple((c.seed, c.lr) for c in probe), torch.get_num_threads(),
           str(device))
    if key not in _MEASURED:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            _MEASURED[key] = k, stacked, alone = _step_times(probe, data, device)
        log.info("a step of %d runs: %.1f ms stacked, %.1f ms one by one", k, 1e3 * stacked, 1e3 * alone)
    k, stacked, alone = _MEASURED[key]
    if stacked <= MARGIN * alone:
        return None
    return (f"stacked, a step of {k} of these runs was measured {stacked / alone:.1f}x slower than one by "
            f"one ({1e3 * stacked:.0f} against {1e3 * alone:.0f} ms); [executor] stack = \"always\" stacks "
            "them anyway")


def _timed(step, batch: torch.Tensor, device: torch.device) -> float:
    start = time.perf_counter()
    step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _step_times(configs: list[TrainConfig], data: Dataset, device: torch.device) -> tuple[int, float, float]:
    """(k, the fastest training step of the first k of ``configs`` stacked, k times the fastest of
    the first alone). The run's own step (in its layout) is timed first, to choose k within
    :data:`PROBE_S`; then the group's own step and the run's in turns (a busy machine slows both
    alike), each on its own successive batches (the gathers of a real epoch, not one batch kept in
    cache)."""
    run = _Run(configs[0], None, False, data, None, device, None, None, None)
    run_batches = run.epoch_batches()
    alone = [_timed(run.train_step, run_batches[i % len(run_batches)], device) for i in range(3)]
    one = min(alone[1:])  # the first step: a warm-up
    k = max(2, min(len(configs), int(PROBE_S / (2 * (PROBE_STEPS + 2) * one))))
    warmup, timed = (2, PROBE_STEPS) if k * one * (PROBE_STEPS + 2) <= PROBE_S else (1, 2)  # slow: fewer
    group = _Group(configs[:k], data, device)
    group_batches = group.epoch_batches()
    stacked = []
    for i in range(warmup + timed):
        stacked.append(_timed(group.train_step, group_batches[i % len(group_batches)], device))
        alone.append(_timed(run.train_step, run_batches[(i + 3) % len(run_batches)], device))
    return k, min(stacked[warmup:]), k * min(alone[1:])
