"""The learning-rate range test (Smith 2017; torch-lr-finder, fastai's ``lr_find``).

Step k = 0 .. steps-1 trains on the k-th batch at the learning rate
``lr_k = start * (end / start) ** (k / (steps - 1))`` (every parameter group), records the batch loss
``l_k`` before the update and smooths it: ``s_0 = l_0``, ``s_k = smooth * l_k + (1 - smooth) *
s_{k-1}`` (torch-lr-finder's rule; ``smooth = 0`` keeps the raw losses). The sweep stops after the
first step whose smoothed loss exceeds ``diverge`` times the lowest so far, or whose loss is not
finite (which torch-lr-finder does not check). Afterwards the model, its buffers, the optimizer and
the caller's random state are as before.

Suggestions, on the smoothed curve without its first ``skip_start`` and last ``skip_end`` points (the
ends of the sweep, where the loss has not moved yet or has blown up):

* ``steepest``: where the smoothed loss falls fastest per step (the most negative central difference,
  ``numpy.gradient``: torch-lr-finder's suggestion; the steps are log-spaced, so per decade too);
* ``valley``: fastai's default rule: the longest strictly decreasing subsequence of the curve (its
  ``end``: the first point that reaches the longest length L; ``begin = end - L``, as fastai takes it),
  and the point ``begin + int(span) + int(span / 2)`` with ``span = (end - begin) / 3``: about half-way
  down the longest descent (at least the first point);
* ``minimum/10``: the learning rate of the lowest smoothed loss, divided by 10.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from optimlab.errors import OptimlabError

SUGGESTIONS = ("steepest", "valley", "minimum/10")
MIN_STEPS = 10
FORMAT = "optimlab.lr_find/1"


@dataclass
class RangeTest:
    """A range test's curve: ``lrs[k]`` (the rate of step k), ``losses[k]`` (its batch loss before the
    update), ``smoothed[k]``; ``stopped``: ``"end"`` (all steps run), ``"diverged"`` or
    ``"non-finite"``; ``suggestions``: name -> learning rate (None where the trimmed curve is too
    short for the rule); ``settings``: what it ran with; ``notes``: what a reader should know."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stopped: str
    suggestions: dict[str, float | None]
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "settings": self.settings, "stopped": self.stopped, "notes": self.notes,
                "suggestions": self.suggestions, "lr": self.lrs, "loss": self.losses,
                "smoothed": self.smoothed}

    def save(self, out: str | Path) -> tuple[Path, Path]:
        """``lr_find.json`` (the curve, the suggestions, the settings) and ``lr_find.png`` in ``out``."""
        from optimlab.runfiles import atomic_write_text

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "lr_find.json"
        atomic_write_text(path, json.dumps(_json_safe(self.to_dict()), indent=1) + "\n")
        return path, self.plot(out / "lr_find.png")

    def plot(self, path: str | Path) -> Path:
        """The loss against the learning rate (log axis): the batch losses faint, the smoothed curve,
        each suggestion marked on it; written as a PNG to ``path``."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        ax.plot(self.lrs, self.losses, color="0.75", linewidth=0.8, label="batch loss")
        smooth = self.settings.get("smooth", 0)
        ax.plot(self.lrs, self.smoothed, color="C0", label=f"smoothed (weight {smooth:g})")
        for i, (name, lr) in enumerate(self.suggestions.items()):
            if lr is None:
                continue
            k = min(range(len(self.lrs)), key=lambda j, lr=lr: abs(math.log(self.lrs[j] / lr)))
            ax.axvline(lr, color=f"C{i + 1}", linestyle="--", linewidth=1)
            ax.plot([lr], [self.smoothed[k]], "o", color=f"C{i + 1}", label=f"{name}: {lr:.3g}")
        ax.set_xscale("log")
        finite = [s for s in self.smoothed if math.isfinite(s)]
        if finite:  # the diverging tail and a huge first loss would squash the curve
            low, high = min(finite), max(finite[: max(len(finite) // 2, 1)])
            ax.set_ylim(low - 0.1 * (high - low + 1e-12), high + 0.3 * (high - low + 1e-12))
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training batch loss")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"range test: {self.settings.get('optimizer', '')} on {self.settings.get('model', '')}")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return Path(path)


def _json_safe(value):
    """NaN and infinities as None (JSON has none of them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def check_settings(start: float, end: float, steps: int, smooth: float, diverge: float, skip_start: int,
                   skip_end: int) -> None:
    """Refuse settings a range test cannot run with, saying what is valid."""
    for name, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or value <= 0:
            raise OptimlabError(f"the range test's {name} learning rate must be a finite number > 0; "
                                f"got {value!r}")
    if start >= end:
        raise OptimlabError(f"the range test sweeps from a low to a high learning rate: start ({start:g}) "
                            f"must be below end ({end:g})")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < MIN_STEPS:
        raise OptimlabError(f"the range test needs at least {MIN_STEPS} steps (a few hundred is usual); got "
                            f"{steps!r}")
    if isinstance(smooth, bool) or not isinstance(smooth, int | float) or not 0 <= smooth < 1:
        raise OptimlabError(f"smooth is the weight of the new loss in the running average, in [0, 1) (0: no "
                            f"smoothing; 0.05 is torch-lr-finder's); got {smooth!r}")
    if isinstance(diverge, bool) or not isinstance(diverge, int | float) or not 1 < diverge < math.inf:
        raise OptimlabError(f"diverge is a finite factor > 1 of the lowest loss at which the sweep stops (5 "
                            f"is torch-lr-finder's); got {diverge!r}")
    for name, value in (("skip_start", skip_start), ("skip_end", skip_end)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise OptimlabError(f"{name} is a number of points >= 0; got {value!r}")
    if skip_start + skip_end >= steps - 2:
        raise OptimlabError(f"skip_start + skip_end ({skip_start + skip_end}) leave fewer than 3 of the "
                            f"{steps} points to suggest from")


def range_test(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, batches: Iterable,
               start: float = 1e-7, end: float = 10.0, steps: int = 100, smooth: float = 0.05,
               diverge: float = 5.0, skip_start: int = 10, skip_end: int = 5) -> RangeTest:
    """The range test of ``optimizer`` on ``model`` over ``batches`` (pairs ``(x, y)``; at least
    ``steps`` of them), ``loss_fn(model(x), y)`` the batch loss. The model, its buffers and the
    optimizer are restored afterwards, and the caller's random state (dropout's draws) too."""
    check_settings(start, end, steps, smooth, diverge, skip_start, skip_end)
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    was_training = model.training
    lrs, losses, smoothed, stopped = [], [], [], "end"
    try:
        with torch.random.fork_rng(devices=_cuda_devices(model)):
            model.train()
            iterator = iter(batches)
            for k in range(steps):
                try:
                    xb, yb = next(iterator)
                except StopIteration:
                    raise OptimlabError(
                        f"the range test ran out of batches after {k} of {steps} steps") from None
                lr = start * (end / start) ** (k / (steps - 1))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                loss.backward()
                optimizer.step()
                value = float(loss.detach())
                lrs.append(lr)
                losses.append(value)
                if not math.isfinite(value):
                    smoothed.append(value)
                    stopped = "non-finite"
                    break
                smoothed.append(value if k == 0 else smooth * value + (1 - smooth) * smoothed[-1])
                if smoothed[-1] > diverge * min(smoothed):
                    stopped = "diverged"
                    break
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        model.train(was_training)
    settings = {"start": start, "end": end, "steps": steps, "smooth": smooth, "diverge": diverge,
                "skip_start": skip_start, "skip_end": skip_end}
    return RangeTest(lrs, losses, smoothed, stopped, suggest(lrs, smoothed, skip_start, skip_end), settings)


def _cuda_devices(model: nn.Module) -> list:
    return sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)


def suggest(lrs: list[float], smoothed: list[float], skip_start: int = 10,
            skip_end: int = 5) -> dict[str, float | None]:
    """The suggestions of the module docstring on a curve (finite points only; None where fewer
    than 3 points are left after trimming)."""
    import numpy as np

    points = [(lr, s) for lr, s in zip(lrs, smoothed, strict=True) if math.isfinite(s)]
    points = points[skip_start:len(points) - skip_end]
    if len(points) < 3:
        return dict.fromkeys(SUGGESTIONS)
    x = [lr for lr, _ in points]
    y = [s for _, s in points]
    steepest = int(np.argmin(np.gradient(np.asarray(y))))
    return {"steepest": x[steepest], "valley": x[_valley(y)], "minimum/10": x[int(np.argmin(y))] / 10}


def _valley(y: list[float]) -> int:
    """fastai's valley rule (see the module docstring): an index into ``y``."""
    longest = [1] * len(y)  # longest[i]: of the strictly decreasing subsequences ending at i
    end = 0
    for i in range(1, len(y)):
        longest[i] = 1 + max((longest[j] for j in range(i) if y[j] > y[i]), default=0)
        if longest[i] > longest[end]:
            end = i
    begin = end - longest[end]  # one before the subsequence's first point when it starts at 0, as in fastai
    span = (end - begin) / 3
    return max(begin + int(span) + int(span / 2), 0)  # fastai's -1 (a rising curve) would wrap to the end


def lr_find(config=None, *, data=None, data_dir=None, start: float = 1e-7, end: float = 10.0,
            steps: int = 100, smooth: float = 0.05, diverge: float = 5.0, skip_start: int = 10,
            skip_end: int = 5, **fields) -> RangeTest:
    """The range test of a run's optimizer on its model and training data, built by the engine as
    :func:`optimlab.training.train` builds them: ``config`` a :class:`~optimlab.training.TrainConfig`
    (or its fields as keywords: ``lr_find(dataset="fashion-mnist", model="mlp", optimizer="adam")``);
    its ``lr`` is unused, its budget too. The batches are the run's seeded order, epoch after epoch
    when ``steps`` exceed one pass (a note says so); dropout draws as the run's would."""
    from optimlab.data import epoch_batches, steps_per_epoch
    from optimlab.devices import resolve_device
    from optimlab.engine.build import check_batch_size, init_model, load_data, task_of
    from optimlab.engine.config import TrainConfig, local_flow_name
    from optimlab.engine.run import RANDOM_STREAM
    from optimlab.registry import build_optimizer

    if config is None:
        config = TrainConfig(**fields)
    elif fields:
        raise OptimlabError(f"give a TrainConfig or its fields, not both (got {', '.join(sorted(fields))})")
    check_settings(start, end, steps, smooth, diverge, skip_start, skip_end)
    if local_flow_name(config.optimizer):
        raise OptimlabError(f"{config.optimizer_label} sets its own learning rate from the local problem; "
                            "the range test sweeps the learning rate of a torch optimizer")
    if config.constraints:
        raise OptimlabError("the range test sweeps the training loss alone; leave the constraints out")
    device = resolve_device(config.device)
    dataset = load_data(config, data, data_dir, device)
    check_batch_size(config.batch_size, dataset)
    task = task_of(config, dataset)
    model = init_model(config, dataset).to(device)
    optimizer = build_optimizer(config.optimizer, model.parameters(), lr=start)
    per_epoch = steps_per_epoch(dataset.num_train, config.batch_size, config.drop_last)
    order = torch.Generator().manual_seed(config.seed)

    def batches():
        while True:
            for idx in epoch_batches(dataset.num_train, config.batch_size, order, config.drop_last, device):
                yield dataset.x_train[idx], dataset.y_train[idx]

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed + RANDOM_STREAM)
        result = range_test(model, optimizer, task.loss, batches(), start, end, steps, smooth, diverge,
                            skip_start, skip_end)
    result.settings = {"dataset": str(config.dataset), "model": str(config.model),
                       "optimizer": config.optimizer_label, "batch_size": config.batch_size,
                       "seed": config.seed, **result.settings}
    if steps > per_epoch:
        result.notes.append(f"the sweep's {steps} steps are {steps / per_epoch:.3g} passes over the "
                            f"{dataset.num_train} training examples ({per_epoch} batches a pass): batches "
                            "repeat")
    if result.stopped != "end":
        why = "its loss was not finite" if result.stopped == "non-finite" else \
            f"its smoothed loss passed {diverge:g} times the lowest"
        result.notes.append(f"stopped at step {len(result.lrs)} of {steps} (lr {result.lrs[-1]:.3g}): {why}")
    if any(v is None for v in result.suggestions.values()):
        result.notes.append("too few points before the stop to suggest a learning rate: lower start, or "
                            "more steps")
    return result
