"""Many runs in one pass: runs that differ only in learning rate and seed (constrained runs: also in
dual learning rate and penalty coefficient), trained together.

The K runs of a group sit in a grid of S seeds x L learning-rate slots. Their parameters are stacked
on two leading axes, (S, L, *shape) (``torch.func.stack_module_state``), and the model is applied
with ``functional_call`` under two ``vmap``: the outer one over seeds with the batch batched, the inner
one over learning rates with the batch shared. Runs of one seed share their initialization and batch
order, so each step gathers one batch per seed, not one per run.

One stock ``torch.optim`` optimizer at lr=1 steps all the stacked parameters. Every optimizer of the
catalogue updates ``p <- p - lr * u`` with ``u`` independent of ``lr`` (DESIGN.md, "Many
configurations in one pass"), so after the step at lr=1 (``p_new = p - u``) each slice's own update
is ``p + lr * (p_new - p)``, one ``torch.lerp`` with the learning rates as a broadcast weight.

Each slice reproduces :func:`optimlab.training.train` of its config: initialization, batch order,
evaluation and train_log rows, divergence step, final parameters (up to the summation order of the
batched kernels). A slice whose loss turns non-finite is recorded diverged and masked (parameters and
optimizer state zeroed, learning rate 0) without disturbing the others.

Constrained runs (:class:`_Constraints`) are simultaneous gradient descent-ascent as in ``train``:
the named measures (sums over all of a model's parameters) are reduced per slice from the stacked
parameters, giving g (S, L, n); one backward pass of the losses, the primal terms (multipliers
detached; c a tensor (S, L)) and the dual Lagrangians sum(lambda * s.detach()) gives both gradients.
The multipliers are one stacked tensor (S, L, m) stepped by one stock dual optimizer at lr=1
(maximize) with the same lerp by each slice's dual lr, then projected onto >= 0 (inequalities). A
diverged slice's multipliers and dual state are zeroed with its parameters. The group checkpoint
(still ``optimlab.group/1``: an unconstrained group's is unchanged) then carries ``constrained``,
the stacked multipliers and the dual optimizer's state.

Buffers are stacked as the parameters are, (S, L, *shape), and are live: BatchNorm's in-place
updates of running_mean, running_var and num_batches_tracked inside ``functional_call`` under the
two vmaps write into the stacked tensors, each slice its own (measured, torch 2.13: after one step
every slice's statistics equal its independent copy's to 6e-8, the counters exactly), so nothing is
carried by hand, and the checkpoint's ``buffers`` are the updated statistics. The model is in train
mode for the steps and in eval mode (running statistics) for :meth:`_Stack.evaluate`, as
:func:`optimlab.training.evaluate` puts it. :func:`stacking_refusal` says which models cannot be
stacked exactly, and why: those drawing random numbers in training (Dropout and its kin, RReLU;
with ``vmap(randomness="different")`` slice k draws the k-th of K consecutive masks of one stream,
measured: 50% of its mask differs from the one an independent run starting from the same state
draws, and each step draws K masks where a run draws one; ``randomness="same"`` gives every slice
one mask. Nor does :func:`optimlab.training.train` seed the stream its masks come from: they depend
on the caller's state, not on the config), BatchNorm with ``momentum=None``, and any model a tiny
stacked trial fails on or does not reproduce.

Where the time went (torch.profiler and cProfile, 15 runs of an MLP on Fashion-MNIST, one CPU
thread), and what was done about it:

* vmap turned ``x @ w.T`` with a shared batch into a copy of the batch per run and a batched
  matmul: the Linear layers are computed as ``(w @ x.T).T``, which vmap folds into one matmul per
  seed (:class:`_SharedInputLinear`; an Adam step of 15 runs: logreg 4.5 -> 2.8 ms, MLP 18 -> 12);
* the default (one op at a time) optimizers read and write the stacked state once per operation:
  torch's fused kernels where there is one (Adam 4.8 -> 1.0 ms a step);
* the copy and lerp of the lr scaling cost about as much as an SGD step (1.1 ms for 15 MLPs). For
  SGD without weight decay, weighting each slice's loss by its lr in the backward pass would save it
  and is exact in real arithmetic, but its rounding drifts from the independent run far sooner on
  unstable trajectories (5e-3 against 7e-6 after an epoch of the MLP at lr 0.1): not taken;
* ``F.cross_entropy`` under vmap goes through a Python decomposition of ``nll_loss``: the loss is
  written with ``logsumexp`` (2.6x faster); dicts of tensors given to vmap are flattened once.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.overrides import TorchFunctionMode

from optimlab import registry
from optimlab.constrained.formulations import make_formulation
from optimlab.constrained.named import parse_constraint
from optimlab.constrained.optimizer import set_maximize
from optimlab.data import Dataset, epoch_batches, steps_per_epoch
from optimlab.devices import resolve_device
from optimlab.engine.build import check_batch_size, init_model, load_data, task_of, total_steps
from optimlab.engine.config import TrainConfig, config_differences, local_flow_name
from optimlab.engine.loop import run_loop
from optimlab.engine.records import (
    EVAL_BATCH,
    RunProgress,
    RunResult,
    eval_row,
    evaluated_at,
    progress_bar,
    record_losses,
    run_result,
)
from optimlab.errors import OptimlabError
from optimlab.optimizers import OptimizerSpec
from optimlab.tasks import TASKS, Task

__all__ = ["GROUP_FORMAT", "check_group", "stacking_refusal", "train_group", "vectorizable_key"]

GROUP_FORMAT = "optimlab.group/1"
# the only settings in which the runs of a group may differ (the last two: constrained runs)
VARYING = ("lr", "seed", "dual_lr", "penalty")
# the named constraints' measures (optimlab.constrained.named.MEASURES), summed over each slice
STACKED_MEASURES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "l2norm": lambda p: p.pow(2), "l1norm": lambda p: p.abs()}
# activations (floats) one evaluation chunk of all slices may hold: train's own bound, a CNN on
# 32x32 images (64 x 32 x 32 floats a sample) evaluated EVAL_BATCH samples at a time
EVAL_FLOATS = EVAL_BATCH * 64 * 32 * 32


def vectorizable_key(config: TrainConfig) -> tuple:
    """Every setting of ``config`` but ``lr``, ``seed``, ``dual_lr`` and ``penalty``, hashable:
    configs with equal keys can be trained together by :func:`train_group` (objects: by identity)."""
    return tuple((f.name, _frozen(getattr(config, f.name))) for f in dataclasses.fields(config)
                 if f.name not in VARYING)


def _frozen(value: object) -> object:
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    try:
        hash(value)
    except TypeError:  # an unhashable object of the user's (a Dataset): itself, by identity
        return ("<object>", id(value))
    return value


# convolutions on the CPU: the stacked seed-004 CNN measured 2x slower than its runs one by one
# (15 Adam runs on Fashion-MNIST, one thread: 7.1 against 3.3 s a step)
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def group_refusal(config: TrainConfig, data: Dataset, always: bool = False) -> str | None:
    """Why the runs of ``config``'s group are trained one by one rather than stacked (a line for the
    log and the store), or None when :func:`train_group` trains them together exactly. Unless
    ``always``, also when stacking is measured slower (convolutions on the CPU)."""
    if local_flow_name(config.optimizer):
        return "local-flow optimizers are built per run (they need the model and the batch)"
    unknown = [c for c in config.constraints if parse_constraint(c).measure not in STACKED_MEASURES]
    if unknown:
        return f"constraint {unknown[0]!r} has no stacked measure"
    why = registry.resolve_optimizer(config.optimizer).why_not_stacked()
    if why:
        return why
    model = init_model(config, data)
    spec = config.optimizer if isinstance(config.optimizer, str) else None
    why = stacking_refusal(model, data.input_shape, optimizer=spec and OptimizerSpec.parse(spec).name)
    if why:
        return why
    task = task_of(config, data)
    if task not in TASKS.values():
        why = _loss_refusal(task, model, data)
        if why:
            return why
    if not always and resolve_device(config.device).type == "cpu" and any(
            isinstance(m, CONVOLUTIONS) for m in model.modules()):
        return ("the model has convolutions, which train faster one by one on the CPU (stacked: measured "
                "2x slower); [executor] stack = \"always\" stacks them anyway")
    return None


def _loss_refusal(task: Task, model: nn.Module, data: Dataset) -> str | None:
    """Whether the user's loss runs under vmap on two stacked outputs and gives each its own value."""
    with torch.no_grad():
        x = data.x_train[:2].to("cpu")
        out = copy.deepcopy(model).to("cpu").eval()(x)
        y = data.y_train[:2].to("cpu")
    outs = torch.stack([out, 2 * out])
    try:
        got = vmap(task.stacked_loss, in_dims=(0, None))(outs, y)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"the loss {task.name} cannot run under vmap ({type(e).__name__}: {first}); trained run by run"
    want = torch.stack([task.loss(o, y) for o in outs])
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
        return f"the loss {task.name} gives other values under vmap; trained run by run"
    return None


def check_group(configs: list[TrainConfig], data: Dataset | None = None) -> None:
    """Raise :class:`OptimlabError` naming the first setting, other than lr, seed, dual_lr and
    penalty, in which the runs differ, or (with ``data``) why they cannot be stacked exactly."""
    if not configs:
        raise OptimlabError("a group of runs needs at least one run")
    if local_flow_name(configs[0].optimizer):
        raise OptimlabError("local-flow optimizers are not trained in vectorized groups (yet): train "
                            "them one by one (executor sequential or processes)")
    unknown = [c for c in configs[0].constraints if parse_constraint(c).measure not in STACKED_MEASURES]
    if unknown:
        raise OptimlabError(f"constraint {unknown[0]!r} is not trained in vectorized groups (yet): train "
                            "its runs one by one (executor sequential or processes)")
    first = vectorizable_key(configs[0])
    for i, config in enumerate(configs[1:], start=1):
        for (k, v), (_, mine) in zip(first, vectorizable_key(config), strict=True):
            if mine != v:
                raise OptimlabError(
                    f"runs trained together may differ only in lr, seed, dual_lr and penalty; run {i} has "
                    f"{k}={getattr(config, k)!r} where run 0 has {k}={getattr(configs[0], k)!r}"
                )
    if data is not None:
        why = group_refusal(configs[0], data, always=True)
        if why:
            raise OptimlabError(f"these runs cannot be trained together exactly: {why}")


def train_group(
    configs: list[TrainConfig],
    data: Dataset | None = None,
    data_dir: str | Path | None = None,
    resume_from: dict | None = None,
    on_checkpoint: Callable[[dict, list[RunResult]], None] | None = None,
    on_eval: Callable[[int, dict], None] | None = None,
    progress: bool = False,
    keep_models: bool = True,
) -> list[RunResult]:
    """Train the runs of ``configs`` (equal but for lr, seed, dual_lr and penalty) together; one
    result per config, in order, each as :func:`optimlab.training.train` of that config alone would
    give it.

    ``on_eval(k, row)``: every evaluation row of run ``k`` (``k`` indexes ``configs``).
    ``on_checkpoint(ckpt, results_so_far)``: at the end of every epoch and at the end; ``ckpt``
    (format ``optimlab.group/1``; a constrained group's adds ``constrained``: the stacked multipliers
    and the dual optimizer's state) holds only tensors and plain values, and ``resume_from=ckpt``
    continues from it to the same numbers as an uninterrupted group. ``wall_time``: the group's.
    ``keep_models``: each result's ``model`` holds its slice's final parameters (for a diverged
    run: those it had when the divergence was seen, as :func:`train` returns them).
    """
    configs = list(configs)
    check_group(configs)
    base = configs[0]
    device = resolve_device(base.device)
    data = load_data(base, data, data_dir, device)
    check_batch_size(base.batch_size, data)
    check_group(configs, data)
    group = _Group(configs, data, device)
    if resume_from is not None:
        group.restore(resume_from)
    return group.run(on_checkpoint, on_eval, progress, keep_models)


@dataclass(frozen=True)
class _Layout:
    """Where each run sits in the grid of S seeds x L slots; cells without a run are padding."""

    seeds: tuple[int, ...]
    cells: tuple[tuple[int, int], ...]  # run k -> (seed index, slot)
    width: int  # L

    @classmethod
    def of(cls, configs: list[TrainConfig]) -> _Layout:
        seeds = list(dict.fromkeys(c.seed for c in configs))
        used = [0] * len(seeds)
        cells = []
        for c in configs:
            s = seeds.index(c.seed)
            cells.append((s, used[s]))
            used[s] += 1
        return cls(tuple(seeds), tuple(cells), max(used))

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.seeds), self.width


class _SharedInputLinear(TorchFunctionMode):
    """Computes ``F.linear(x, w, b)`` of a 2-D input as ``(w @ x.T).T + b``, the products of
    ``x @ w.T`` in the other orientation.

    Under vmap, ``x @ w.T`` with x shared by the slices (the batch, or the evaluation set: unbatched)
    and w stacked makes one copy of x per slice and a batched matmul; the profiler showed that copy
    and that bmm taking most of a step. ``w @ x.T`` lets vmap fold the slices into the rows of one
    matmul, (L * out, in) @ (in, B). Every layer is flipped, so that all activations keep one
    layout, (features, batch), and each weight's gradient comes out in the weight's own layout;
    the model's output is left transposed (the loss is as fast on it).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, w, b = _linear_arguments(*args, **kwargs)
            if x.dim() == 2:
                out = torch.matmul(w, x.mT).mT
                return out if b is None else out + b
        return func(*args, **kwargs)


def _linear_arguments(input, weight, bias=None):  # noqa: A002 - F.linear's own names
    return input, weight, bias


class _Stack:
    """The S x L models as stacked tensors (S, L, *shape), and the vmapped functions applying them.

    The vmapped functions take the stacked tensors as a flat tuple (``self.tensors``: parameters,
    then buffers): flattening a dict at each call of each vmap level was a tenth of a small step.
    """

    def __init__(self, models: list[nn.Module], width: int, data: Dataset, device: torch.device,
                 with_accuracy: bool = False, task: Task | None = None):
        stacked, buffers = stack_module_state([m for m in models for _ in range(width)])
        grid = (len(models), width)
        self.params = {k: v.detach().reshape(*grid, *v.shape[1:]).to(device).requires_grad_()
                       for k, v in stacked.items()}
        # live: BatchNorm's in-place updates inside functional_call under the vmaps land in these
        self.buffers = {k: v.reshape(*grid, *v.shape[1:]).to(device) for k, v in buffers.items()}
        self.names = [*self.params, *self.buffers]
        self.tensors = (*self.params.values(), *self.buffers.values())
        self.template = copy.deepcopy(models[0]).to("meta").train()  # eval only in evaluate
        self.task = task or TASKS[data.task]
        self.loss_fn = self.task.stacked_loss
        self.with_accuracy = with_accuracy and self.task.accuracy
        stacked_dims = (0,) * len(self.tensors)
        per_seed = vmap(self._loss, in_dims=(*stacked_dims, None, None))  # the batch: shared
        self._losses = vmap(per_seed, in_dims=(*stacked_dims, 0, 0))  # the batch: one per seed
        shared = (*stacked_dims, None, None)  # the evaluation set: shared by all
        self._sums = vmap(vmap(self._sum_metrics, in_dims=shared), in_dims=shared)
        act = _largest_activation(self.template, data.input_shape)
        self.eval_chunk = max(1, min(EVAL_BATCH, EVAL_FLOATS // (grid[0] * grid[1] * act)))
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None
               for m in self.template.modules()):  # batch statistics in eval mode too: the outputs
            self.eval_chunk = EVAL_BATCH  # depend on the chunks, evaluate's (memory over the bound)

    def _apply(self, tensors: tuple, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, dict(zip(self.names, tensors, strict=True)), (x,))

    def _loss(self, *args):
        *tensors, x, y = args
        out = self._apply(tensors, x)
        if self.with_accuracy:  # the batch accuracy of a constrained run's records
            return self.loss_fn(out, y), (out.contiguous().argmax(dim=1) == y).float().mean()
        return self.loss_fn(out, y)

    def _sum_metrics(self, *args):
        *tensors, x, y = args
        out = self._apply(tensors, x)
        if self.task.accuracy:  # argmax: 3x faster on (batch, class) than on its transpose
            hits = (out.contiguous().argmax(dim=1) == y).sum()
            return self.task.stacked_loss_sum(out, y), hits
        return self.task.stacked_loss_sum(out, y), torch.zeros((), dtype=torch.int64)

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Mean batch loss of every slice: x (S, B, *input), y (S, B) -> (S, L); with
        ``with_accuracy``, (losses, batch accuracies), both (S, L)."""
        with _SharedInputLinear():
            return self._losses(*self.tensors, x, y)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list, list | None]:
        """Mean loss and accuracy (None for regression) of every slice on all of (x, y), a set
        shared by the slices: nested lists [S][L], as :func:`optimlab.training.evaluate` gives them."""
        self.template.eval()
        loss_sum = torch.zeros(self.shape, dtype=torch.float64, device=x.device)
        correct = torch.zeros(self.shape, dtype=torch.int64, device=x.device)
        with _SharedInputLinear():
            for start in range(0, x.shape[0], self.eval_chunk):
                stop = start + self.eval_chunk
                loss, hits = self._sums(*self.tensors, x[start:stop], y[start:stop])
                loss_sum += loss.double()
                correct += hits
        self.template.train()
        n = x.shape[0]
        losses = [[v / n for v in row] for row in loss_sum.tolist()]
        if not self.task.accuracy:
            return losses, None
        return losses, [[c / n for c in row] for row in correct.tolist()]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(next(iter(self.params.values())).shape[:2])

    def state_of(self, s: int, j: int) -> dict[str, torch.Tensor]:
        """A copy of the parameters and buffers of slice (s, j), named as in the model."""
        return {k: v[s, j].detach().clone() for k, v in {**self.params, **self.buffers}.items()}


def _largest_activation(template: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Floats in the largest activation of one sample (a forward pass of two samples on the meta
    device, in eval mode: BatchNorm refuses a batch of one sample where it takes batch statistics)."""
    sizes = [math.prod(input_shape)]
    def record(_module, _inputs, out) -> None:
        if isinstance(out, torch.Tensor):
            sizes.append(out[0].numel())

    hooks = [m.register_forward_hook(record) for m in template.modules()]
    was_training = template.training
    try:
        template.eval()
        template(torch.empty(2, *input_shape, device="meta"))
    finally:
        template.train(was_training)
        for h in hooks:
            h.remove()
    return max(sizes)


# modules that draw random numbers in training: a vmapped slice cannot draw its independent run's
RANDOM_IN_TRAINING = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                      nn.FeatureAlphaDropout, nn.RReLU)
# the tiny trial: a stacked slice equals its copy's own forward and backward within these, relative to
# the largest element of all its gradients (or buffers; batched kernels sum in another order: 1e-6
# of it measured, elements made of cancelling terms included); a lost update is off by far more
TRIAL_RTOL, TRIAL_ATOL = 1e-4, 1e-6
# a parameter whose whole gradient is below this fraction of the largest (of all parameters) in the
# trial gets rounding noise only (a bias right before a BatchNorm: 1e-7 measured; others 1e-2 and up)
NOISE_GRADIENT = 1e-5
# the optimizers whose step is linear in the gradient: a noise gradient makes a noise step
GRADIENT_LINEAR = ("sgd", "momentum", "nesterov")


def stacking_refusal(model: nn.Module, input_shape: tuple[int, ...],
                     optimizer: str | None = None) -> str | None:
    """None when the runs of ``model`` (inputs of ``input_shape`` a sample) trained by ``optimizer``
    (a spec; None: any) can be stacked exactly, each slice equal to its independent run; else a
    one-line reason, ending "trained run by run".

    By module type: those of ``RANDOM_IN_TRAINING`` (Dropout, Dropout1d/2d/3d, AlphaDropout,
    FeatureAlphaDropout with p > 0 -- at p = 0 they draw nothing --, RReLU) draw random numbers in
    training, and vmapped slices cannot draw the masks of the independent runs (module docstring);
    BatchNorm with ``momentum=None`` reads num_batches_tracked as a Python number, which vmap
    refuses. BatchNorm otherwise is stacked, with or without running statistics.

    Then a trial, as :class:`_Stack` applies a model: 2 seeds x 2 slots of copies of ``model``
    (parameters moved apart), a batch of 4 samples a seed (2 make BatchNorm1d's output +-1 whatever
    its input), one forward in train mode and its backward, one forward in eval mode. Refused when
    vmap raises (the exception's first line in the reason) or when a slice's loss, gradients or
    buffers differ from its copy's own run: a forward that replaces a buffer instead of updating it
    in place, for one, loses the update under ``functional_call``. Python attributes a forward
    changes are not seen. Errors of the model itself, outside vmap, propagate.

    Unless ``optimizer`` is one of ``GRADIENT_LINEAR``, also refused: a parameter whose gradient is
    rounding noise only, as a bias right before a BatchNorm (the normalization subtracts it out). Adam
    and its kin normalize that noise into steps of about lr, which follow the summation order of the
    kernels: measured, a BatchNorm CNN, 16 Adam steps at lr 3e-3, such biases and their BatchNorm's
    running_mean 2e-2 off the independent run (every other tensor 2e-6), eval-mode test loss 1e-3
    (a rerun of ``train`` with another thread count drifts alike). Build such layers with bias=False.
    """
    for name, module in model.named_modules():
        where = f"{type(module).__name__}{f' (module {name})' if name else ''}"
        if isinstance(module, RANDOM_IN_TRAINING) and getattr(module, "p", 1.0) != 0:
            return (f"the model has {where}: its random numbers in training cannot reproduce the "
                    "independent runs' under vmap; trained run by run")
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats \
                and module.momentum is None:
            return (f"the model has {where} with momentum=None: its cumulative average reads "
                    "num_batches_tracked as a number, which vmap cannot; trained run by run")
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    # the copies' own runs may draw random numbers: the caller's streams are kept
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _stacking_trial(model, input_shape, device, optimizer)


def _stacking_trial(model: nn.Module, input_shape: tuple[int, ...], device: torch.device,
                    optimizer: str | None) -> str | None:
    """The trial of :func:`stacking_refusal`: its reason, or None."""
    gen = torch.Generator().manual_seed(0)
    copies = [copy.deepcopy(model).train() for _ in range(4)]  # [seed 0: slots 0, 1; seed 1: ...]
    with torch.no_grad():
        for m in copies[1:]:  # distinct slices, so that mixed-up ones show
            for p in m.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen).to(p))
    x = torch.randn(2, 4, *input_shape, generator=gen).to(device)  # (seed, sample, *input)
    stacked, buffers = stack_module_state(copies)  # copies of the copies' initial state
    params = {k: v.detach().reshape(2, 2, *v.shape[1:]).requires_grad_() for k, v in stacked.items()}
    buffers = {k: v.reshape(2, 2, *v.shape[1:]) for k, v in buffers.items()}
    names = [*params, *buffers]
    template = copy.deepcopy(model).to("meta").train()

    def loss(*args):
        *ts, xb = args
        return functional_call(template, dict(zip(names, ts, strict=True)), (xb,)).square().mean()

    dims = (0,) * len(names)
    wants = []
    for k, m in enumerate(copies):  # each copy's own run, outside vmap
        want = m(x[k // 2]).square().mean()
        want.backward()
        with torch.no_grad():
            wants.append((want.detach(), m.eval()(x[0]).square().mean()))
    try:
        with _SharedInputLinear():
            losses = vmap(vmap(loss, in_dims=(*dims, None)), in_dims=(*dims, 0))(
                *params.values(), *buffers.values(), x)
            losses.sum().backward()
            template.eval()
            with torch.no_grad():
                evals = vmap(vmap(loss, in_dims=(*dims, None)), in_dims=(*dims, None))(
                    *params.values(), *buffers.values(), x[0])
    except Exception as e:  # whatever vmap refuses: the reason names it
        first = (str(e).strip().splitlines() or [""])[0]
        return f"vmap cannot apply the model ({type(e).__name__}: {first}); trained run by run"
    for k, (m, (want, want_eval)) in enumerate(zip(copies, wants, strict=True)):
        s, j = divmod(k, 2)
        zero = torch.zeros(0, device=device)
        kinds = {  # each kind measured on the scale of its largest element (of all its tensors)
            "loss": [("loss", losses[s, j], want), ("eval-mode loss", evals[s, j], want_eval)],
            "gradient": [(n, zero if params[n].grad is None else params[n].grad[s, j],
                          zero if p.grad is None else p.grad) for n, p in m.named_parameters()],
            "buffer": [(n, buffers[n][s, j], b) for n, b in m.named_buffers()],
        }
        for kind, pairs in kinds.items():
            pairs = [(n, got.double(), ref.double()) for n, got, ref in pairs]
            scale = max((ref.abs().max().item() for _, _, ref in pairs if ref.numel()), default=0.0)
            for n, got, ref in pairs:
                if got.shape != ref.shape or got.numel() and (got - ref).abs().max() > (
                        TRIAL_RTOL * scale + TRIAL_ATOL):
                    what = n if kind == "loss" else f"{kind} {n}"
                    return f"a stacked copy does not reproduce its own run ({what}); trained run by run"
    name = OptimizerSpec.parse(optimizer).name if optimizer is not None else None
    grads = {n: p.grad.abs().max().item() for n, p in copies[0].named_parameters()
             if p.grad is not None and p.numel()}
    noise = [n for n, g in grads.items() if g < NOISE_GRADIENT * max(grads.values())]
    if name not in GRADIENT_LINEAR and noise:
        return (f"the gradient of {noise[0]} is rounding noise only (a bias before a BatchNorm?): "
                f"{name or 'an adaptive optimizer'} scales it up to steps of ~lr that follow the kernels' "
                "summation order (give the layer bias=False); trained run by run")
    return None


class _ScaledOptimizer:
    """One stock optimizer at lr=1 over the stacked parameters; each slice's step scaled by its lr.

    The optimizer turns p (S, L, *shape) into p_new = p - u; each slice then gets
    p + lr * (p_new - p) = lerp(p, p_new, lr), with ``lrs`` (S, L) broadcast as the weight: a copy of
    p before the step and the lerp after, two passes over the parameters.
    """

    def __init__(self, spec: object, params: list[torch.Tensor], lrs: torch.Tensor):
        self.optimizer = _build_fast(spec, params)
        self.params = params
        self.lrs = lrs
        self.before = [torch.empty_like(p) for p in params]
        self.weights = [lrs.view(*lrs.shape, *(1,) * (p.dim() - 2)) for p in params]

    def backward(self, losses: torch.Tensor, extra: torch.Tensor | None = None) -> None:
        """Gradients of the slices' losses (S, L): the sum's gradient is each slice's own (``extra``:
        a sum over slices to add, the constraints' terms)."""
        self.optimizer.zero_grad(set_to_none=True)
        total = losses.sum()
        (total if extra is None else total + extra).backward()

    @torch.no_grad()
    def step(self) -> None:
        torch._foreach_copy_(self.before, self.params)
        self.optimizer.step()
        for p, before, weight in zip(self.params, self.before, self.weights, strict=True):
            torch.lerp(before, p, weight, out=p)

    @torch.no_grad()
    def mask(self, s: int, j: int) -> None:
        """Stop slice (s, j): learning rate 0, parameters and optimizer state zeroed (finite)."""
        self.lrs[s, j] = 0.0
        for p in self.params:
            p[s, j] = 0.0
            for value in self.optimizer.state.get(p, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    value[s, j] = 0.0


def _build_fast(spec: object, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """The optimizer of ``spec`` at lr=1, with torch's fused kernel where it has one (unless the spec
    chooses an implementation): on stacked parameters, several times faster than the default
    one-op-at-a-time implementation (Adam: 1.0 against 4.8 ms a step for 15 MLPs), which
    reads and writes every state tensor once per operation. Only torch.optim's own classes are
    asked for ``fused``."""
    resolved = registry.resolve_optimizer(spec)
    chosen = {"fused", "foreach"} & set(resolved.options)
    if not chosen and resolved.entry.source == "torch.optim" and params[0].device.type in ("cpu", "cuda"):
        try:
            return resolved.build(params, lr=1.0, fused=True)
        except OptimlabError:  # no fused kernel for this optimizer
            pass
    return resolved.build(params, lr=1.0)


class _Constraints:
    """The constraints of a constrained group, as :class:`optimlab.training._Constrained` steps them
    (simultaneous gradient descent-ascent) for every slice at once.

    The multipliers are one stacked tensor (S, L, m), m the constraints (none for the quadratic
    penalty), stepped by one stock dual optimizer at lr=1 (``maximize=True``) whose step each slice
    scales by its dual lr, as :class:`_ScaledOptimizer` does, then projected onto >= 0 for the
    inequalities. The penalty coefficient c is a tensor (S, L). The violations g (S, L, n) are the
    named measures summed over each slice's parameters. Every step records, per slice, g before the
    step, the multipliers used in it and the batch accuracy (classification), as ``train`` does.
    """

    def __init__(self, configs: list[TrainConfig], layout: _Layout, device: torch.device):
        base = configs[0]
        self.named = [parse_constraint(c) for c in base.constraints]
        self.formulation = make_formulation(base.formulation)
        self.inequality = [c.kind == "<=" for c in self.named]
        self.penalty = torch.ones(layout.shape, device=device)  # (padding cells: any c > 0)
        self.dual_lrs = torch.zeros(layout.shape, device=device)
        for config, cell in zip(configs, layout.cells, strict=True):
            self.dual_lrs[cell] = config.dual_lr
            if config.penalty is not None:
                self.penalty[cell] = config.penalty
        m = len(self.named) if base.has_multipliers else 0
        self.multipliers = torch.zeros(*layout.shape, m, device=device, requires_grad=True)
        self.optimizer = None
        if m:
            self.optimizer = registry.build_optimizer(base.dual_optimizer, [self.multipliers], lr=1.0)
            set_maximize(self.optimizer)
        self.before = torch.empty_like(self.multipliers)
        self.weight = self.dual_lrs.unsqueeze(-1)  # a view: masking a slice's dual lr reaches it
        self.pending: list[torch.Tensor] = []

    @property
    def columns(self) -> int:
        """Values recorded per step and slice: violations, multipliers (and the batch accuracy)."""
        return len(self.named) + self.multipliers.shape[-1]

    def violations(self, params: list[torch.Tensor]) -> torch.Tensor:
        """g of every slice and constraint (S, L, n), differentiable, from stacked parameters."""
        out = []
        for c in self.named:
            measure = STACKED_MEASURES[c.measure]
            value = sum(_per_slice_sum(measure(p)) for p in params)
            out.append(c.bound - value if c.op == ">=" else value - c.bound)
        return torch.stack(out, dim=-1)

    def objective(self, g: torch.Tensor) -> torch.Tensor:
        """The sum over slices of the primal terms (multipliers detached) and of the dual Lagrangians
        sum(lambda * s) (s: the dual signal, detached): one backward pass gives both gradients."""
        form = self.formulation
        c = self.penalty if form.uses_penalty else None
        total = None
        for i, ineq in enumerate(self.inequality):
            gi = g[..., i]
            if form.uses_multiplier:
                lam = self.multipliers[..., i]
                term = form.primal_term(gi, lam.detach(), c, ineq) + (
                    lam * form.dual_signal(gi.detach(), c)).sum()
            else:
                term = form.primal_term(gi, None, c, ineq)
            total = term if total is None else total + term
        return total

    def zero_grad(self) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self) -> None:
        if self.optimizer is None:
            return
        lam = self.multipliers
        self.before.copy_(lam)
        self.optimizer.step()
        torch.lerp(self.before, lam, self.weight, out=lam)
        if all(self.inequality):
            lam.clamp_(min=0.0)
        else:
            for i, ineq in enumerate(self.inequality):
                if ineq:
                    lam[..., i].clamp_(min=0.0)

    def record(self, g: torch.Tensor, used: torch.Tensor, accuracy: torch.Tensor | None) -> None:
        values = [g.detach(), used]
        if accuracy is not None:
            values.append(accuracy.detach().unsqueeze(-1))
        self.pending.append(torch.cat(values, dim=-1))

    def take(self) -> list:
        """The records since the last call: [step][seed][slot][value] (one sync)."""
        values = torch.stack(self.pending).tolist() if self.pending else []
        self.pending.clear()
        return values

    def annotate(self, rows: list[dict], values: list, last_step: int, cell: tuple[int, int]) -> None:
        """Add the violations, multipliers and batch accuracy of slice ``cell`` to its train_log rows
        of the steps in ``values`` (up to ``last_step``), as ``train`` does."""
        s, j = cell
        first, n, m = last_step - len(values) + 1, len(self.named), self.multipliers.shape[-1]
        for row in rows:
            v = values[row["step"] - first][s][j]
            for i, c in enumerate(self.named):
                row[f"violation_{c.key}"] = v[i]
            for i, c in enumerate(self.named[:m]):
                row[f"multiplier_{c.key}"] = v[n + i]
            if len(v) > n + m:
                row["accuracy"] = v[n + m]

    @torch.no_grad()
    def now(self, params: list[torch.Tensor]) -> list:
        """For the evaluation rows: [seed][slot] -> the violations (exact, at the current parameters)
        and the multipliers of the slice, as a dict of columns."""
        g = self.violations(params).tolist()
        lam = self.multipliers.detach().tolist()
        rows = []
        for g_s, lam_s in zip(g, lam, strict=True):
            rows.append([{**{f"violation_{c.key}": v for c, v in zip(self.named, g_j, strict=True)},
                          **{f"multiplier_{c.key}": v for c, v in zip(self.named, lam_j, strict=False)}}
                         for g_j, lam_j in zip(g_s, lam_s, strict=True)])
        return rows

    @torch.no_grad()
    def mask(self, s: int, j: int) -> None:
        """Stop slice (s, j): dual lr 0, multipliers and dual optimizer state zeroed."""
        self.dual_lrs[s, j] = 0.0
        self.multipliers[s, j] = 0.0
        if self.optimizer is not None:
            for value in self.optimizer.state.get(self.multipliers, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == self.multipliers.shape:
                    value[s, j] = 0.0

    def state_dict(self) -> dict:
        return {"multipliers": self.multipliers.detach(),
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["multipliers"].shape) != tuple(self.multipliers.shape):
            raise OptimlabError("the checkpoint's multipliers do not fit this group's constraints")
        with torch.no_grad():
            self.multipliers.copy_(state["multipliers"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            set_maximize(self.optimizer)


def _per_slice_sum(t: torch.Tensor) -> torch.Tensor:
    """(S, L, *shape) -> (S, L): the sum over all but the two leading dimensions."""
    return t.sum(dim=tuple(range(2, t.dim()))) if t.dim() > 2 else t


class _Group:
    """The training of one group: the stacked models, the optimizer, each run's progress and rows."""

    def __init__(self, configs: list[TrainConfig], data: Dataset, device: torch.device):
        self.configs, self.base, self.data, self.device = configs, configs[0], data, device
        self.layout = _Layout.of(configs)
        self.per_epoch = steps_per_epoch(data.num_train, self.base.batch_size, self.base.drop_last)
        self.total = total_steps(self.base, self.per_epoch)
        by_seed = {c.seed: c for c in reversed(configs)}
        self.models = [init_model(by_seed[s], data) for s in self.layout.seeds]  # on the CPU
        constrained = bool(self.base.constraints)
        self.stack = _Stack(self.models, self.layout.width, data, device, with_accuracy=constrained,
                            task=task_of(self.base, data))
        self.duals = _Constraints(configs, self.layout, device) if constrained else None
        lrs = torch.zeros(self.layout.shape, device=device)
        for config, (s, j) in zip(configs, self.layout.cells, strict=True):
            lrs[s, j] = config.lr
        self.update = _ScaledOptimizer(self.base.optimizer, list(self.stack.params.values()), lrs)
        self.orders = [torch.Generator().manual_seed(s) for s in self.layout.seeds]
        self.runs = [RunProgress() for _ in configs]
        self.seen_diverged: list[dict | None] = [None] * len(configs)  # parameters at divergence
        self.step = self.epoch = 0
        self.wall_time = 0.0

    def live(self) -> list[int]:
        return [k for k, run in enumerate(self.runs) if run.status == "running"]

    # -- the loop, step by step as optimlab.training.train --------------------------------------

    def run(self, on_checkpoint, on_eval, progress: bool, keep_models: bool) -> list[RunResult]:
        """Train the group with the engine's loop, as :func:`optimlab.training.train` trains a run."""
        self.on_eval, self.on_checkpoint = on_eval, on_checkpoint
        self.started = time.perf_counter() - self.wall_time
        cfg = self.base
        bar = progress_bar(self.total, self.step, progress)
        run_loop(self, self.total, self.per_epoch, cfg.eval_every, cfg.log_every, bar)
        return self.results(keep_models)

    # -- the loop's Trainee protocol (optimlab.engine.loop) -------------------------------------

    def running(self) -> bool:
        return bool(self.live())

    def has_evaluations(self) -> bool:
        return any(run.evals for run in self.runs)

    def order_state(self) -> list[torch.Tensor]:
        return [order.get_state() for order in self.orders]

    def epoch_batches(self) -> list[torch.Tensor]:
        """Per step, the indices of every seed's batch, concatenated (S * B,)."""
        cfg = self.base
        batches = [epoch_batches(self.data.num_train, cfg.batch_size, order, cfg.drop_last, self.device)
                   for order in self.orders]
        return [torch.cat(step) for step in zip(*batches, strict=True)]

    def end_epoch(self) -> None:
        for k in self.live():
            self.runs[k].epoch = self.epoch

    def finish(self) -> None:
        for k in self.live():
            self.runs[k].status, self.runs[k].step = "completed", self.step

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        """One optimizer step of every slice on its seed's batch; idx (S * B,) -> losses (S, L)."""
        seeds = len(self.layout.seeds)
        x = self.data.x_train.index_select(0, idx)
        x = x.view(seeds, -1, *x.shape[1:])
        y = self.data.y_train.index_select(0, idx).view(seeds, -1)
        if self.duals is None:
            losses = self.stack.losses(x, y)
            self.update.backward(losses)
            self.update.step()
            return losses.detach()
        out = self.stack.losses(x, y)
        losses, accuracy = out if isinstance(out, tuple) else (out, None)
        g = self.duals.violations(self.update.params)
        used = self.duals.multipliers.detach().clone()  # lambda_t, before its update
        self.duals.zero_grad()
        self.update.backward(losses, self.duals.objective(g))
        self.update.step()
        self.duals.step()
        self.duals.record(g, used, accuracy)
        return losses.detach()

    def flush(self, pending: list[torch.Tensor]) -> list[float | None]:
        """Look at the batch losses since the last look (one sync for all runs): record them as
        :func:`train` does, mask the runs that diverged. Returns each run's last batch loss."""
        values = torch.stack(pending).tolist()  # [step][seed][slot]
        pending.clear()
        extras = self.duals.take() if self.duals is not None else None
        last: list[float | None] = [None] * len(self.runs)
        for k in self.live():
            (s, j), run, config = self.layout.cells[k], self.runs[k], self.configs[k]
            run.step = self.step
            logged = len(run.train_log)
            last[k] = record_losses([v[s][j] for v in values], run, config.log_every,
                                    self.per_epoch, config.lr)
            if extras is not None:
                self.duals.annotate(run.train_log[logged:], extras, self.step, (s, j))
            if run.status == "diverged":
                self.seen_diverged[k] = self.stack.state_of(s, j)
                self.update.mask(s, j)
                if self.duals is not None:
                    self.duals.mask(s, j)
        return last

    def evaluated(self) -> bool:
        return any(evaluated_at(self.runs[k], self.step) for k in self.live())

    def record_eval(self, batch_losses: list[float | None] | None) -> None:
        """One evaluation row for every live run (all slices evaluated at once)."""
        live = self.live()
        if not live:
            return
        batch_losses = batch_losses or [None] * len(self.runs)
        d = self.data
        train = self.stack.evaluate(d.x_train, d.y_train) if self.base.eval_train else None
        test = self.stack.evaluate(d.x_test, d.y_test)
        wall_time = time.perf_counter() - self.started
        extras = self.duals.now(self.update.params) if self.duals is not None else None
        for k in live:
            s, j = self.layout.cells[k]
            of = (lambda m, s=s, j=j: (m[0][s][j], m[1][s][j] if m[1] else None))  # noqa: E731
            row = eval_row(self.step, self.per_epoch, batch_losses[k], of(train) if train else None,
                           of(test), self.configs[k].lr, wall_time)
            if extras is not None:
                row.update(extras[s][j])
            self.runs[k].evals.append(row)
            if self.on_eval is not None:
                self.on_eval(k, row)

    def results(self, keep_models: bool) -> list[RunResult]:
        out = []
        for k, (config, run) in enumerate(zip(self.configs, self.runs, strict=True)):
            run.wall_time = self.wall_time
            out.append(run_result(config, run, self.device, self.model_of(k) if keep_models else None))
        return out

    def model_of(self, k: int) -> nn.Module:
        """A module holding run k's final parameters."""
        s, j = self.layout.cells[k]
        model = copy.deepcopy(self.models[s]).to(self.device)
        state = self.seen_diverged[k] or self.stack.state_of(s, j)
        model.load_state_dict(state)
        return model

    # -- checkpoints --------------------------------------------------------------------------

    def save(self, epoch_start: list[torch.Tensor]) -> None:
        self.wall_time = time.perf_counter() - self.started
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.checkpoint(epoch_start), self.results(keep_models=False))

    def checkpoint(self, epoch_start: list[torch.Tensor]) -> dict:
        """A snapshot (copies, not views of the live tensors) of everything :meth:`restore` needs."""
        for run in self.runs:
            run.wall_time = self.wall_time
        return copy.deepcopy({
            "format": GROUP_FORMAT,
            "configs": [c.to_dict() for c in self.configs],
            "params": {k: v.detach() for k, v in self.stack.params.items()},
            "buffers": self.stack.buffers,
            "optimizer": self.update.optimizer.state_dict(),
            "rng": {"epoch_start": list(epoch_start), "torch": torch.get_rng_state()},
            "progress": {"step": self.step, "epoch": self.epoch, "wall_time": self.wall_time,
                         "runs": [run.to_dict() for run in self.runs]},
            "seen_diverged": self.seen_diverged,
            **({"constrained": self.duals.state_dict()} if self.duals is not None else {}),
        })

    def restore(self, ckpt: dict) -> None:
        _check_checkpoint(ckpt, self.configs)
        saved = {**ckpt["params"], **ckpt["buffers"]}
        mine = {**self.stack.params, **self.stack.buffers}
        if {k: tuple(v.shape) for k, v in saved.items()} != {k: tuple(v.shape) for k, v in mine.items()}:
            raise OptimlabError("the checkpoint's parameters do not fit this group's models (another "
                                "data set under the same name?)")
        with torch.no_grad():
            for name, value in {**self.stack.params, **self.stack.buffers}.items():
                value.copy_(ckpt["params" if name in self.stack.params else "buffers"][name])
        self.update.optimizer.load_state_dict(ckpt["optimizer"])
        if self.duals is not None:
            if "constrained" not in ckpt:
                raise OptimlabError("the checkpoint holds no multipliers: not one of this constrained group")
            self.duals.load_state_dict(ckpt["constrained"])
        progress = ckpt["progress"]
        self.step, self.epoch, self.wall_time = progress["step"], progress["epoch"], progress["wall_time"]
        for k, (run, saved) in enumerate(zip(self.runs, progress["runs"], strict=True)):
            run.load(saved)
            if run.status == "completed":
                run.status = "running"  # a larger budget continues it; an equal one ends at once
            if run.status != "running":
                self.update.lrs[self.layout.cells[k]] = 0.0
                if self.duals is not None:
                    self.duals.dual_lrs[self.layout.cells[k]] = 0.0
        self.seen_diverged = [None if p is None else {k: v.to(self.device) for k, v in p.items()}
                              for p in ckpt["seen_diverged"]]
        for order, state in zip(self.orders, ckpt["rng"]["epoch_start"], strict=True):
            order.set_state(state)
        torch.set_rng_state(ckpt["rng"]["torch"])


def _check_checkpoint(ckpt: dict, configs: list[TrainConfig]) -> None:
    """Refuse, naming the difference, a checkpoint that is not one of this group."""
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt != GROUP_FORMAT:
        raise OptimlabError(f"not a checkpoint of a group of runs (format {fmt!r}, expected "
                            f"{GROUP_FORMAT!r})")
    saved = ckpt["configs"]
    if len(saved) != len(configs):
        raise OptimlabError(f"the checkpoint belongs to a different group: it holds {len(saved)} "
                            f"runs, this group has {len(configs)}")
    for i, (theirs, config) in enumerate(zip(saved, configs, strict=True)):
        details = config_differences(theirs, config)
        if details:
            raise OptimlabError(
                f"the checkpoint belongs to a different group (run {i}: {details}); resume with "
                "the same runs in the same order (only the budget and the device may change)"
            )
