"""K copies of a model as one: parameters and buffers stacked on two leading axes (S seeds, L
learning-rate slots), applied with ``functional_call`` under two ``vmap``, stepped by one stock
``torch.optim`` optimizer at lr=1 whose step each slice scales by its own learning rate; and which
models can be stacked exactly, and why not.

The model is applied under two ``vmap``: the outer one over seeds with the batch batched, the inner
one over learning rates with the batch shared. Every optimizer declared lr-linear updates
``p <- p - lr * u`` with ``u`` independent of ``lr`` (DESIGN.md, "Many configurations in one pass"),
so after the step at lr=1 (``p_new = p - u``) each slice's own update is ``p + lr * (p_new - p)``,
one ``torch.lerp`` with the learning rates as a broadcast weight.

Buffers are stacked as the parameters are, (S, L, *shape), and are live: BatchNorm's in-place
updates of running_mean, running_var and num_batches_tracked inside ``functional_call`` under the
two vmaps write into the stacked tensors, each slice its own (measured, torch 2.13: after one step
every slice's statistics equal its independent copy's to 6e-8, the counters exactly), so nothing is
carried by hand, and a checkpoint's ``buffers`` are the updated statistics. The model is in train
mode for the steps and in eval mode (running statistics) for :meth:`Stack.evaluate`, as
:func:`optimlab.training.evaluate` puts it. :func:`stacking_refusal` says which models cannot be
stacked exactly, and why: those drawing random numbers in training (Dropout and its kin, RReLU;
with ``vmap(randomness="different")`` slice k draws the k-th of K consecutive masks of one stream,
measured: 50% of its mask differs from the one an independent run starting from the same state
draws, and each step draws K masks where a run draws one; ``randomness="same"`` gives every slice
one mask), BatchNorm with ``momentum=None``, and any model a tiny stacked trial fails on or does not
reproduce.

Where the time went (torch.profiler and cProfile, 15 runs of an MLP on Fashion-MNIST, one CPU
thread), and what was done about it:

* vmap turned ``x @ w.T`` with a shared batch into a copy of the batch per run and a batched
  matmul: the Linear layers are computed as ``(w @ x.T).T``, which vmap folds into one matmul per
  seed (:class:`SharedInputLinear`; an Adam step of 15 runs: logreg 4.5 -> 2.8 ms, MLP 18 -> 12);
* the default (one op at a time) optimizers read and write the stacked state once per operation:
  torch's fused kernels where there is one (Adam 4.8 -> 1.0 ms a step);
* the copy and lerp of the lr scaling cost about as much as an SGD step (1.1 ms for 15 MLPs): SGD
  is stepped directly with each slice's lr, in SGD's own rounding (:class:`ScaledOptimizer`). Weighting
  each slice's loss by its lr in the backward pass instead is exact in real arithmetic only, and its
  rounding drifts from the independent run far sooner on unstable trajectories (5e-3 against 7e-6
  after an epoch of the MLP at lr 0.1): not taken;
* ``F.cross_entropy`` under vmap goes through a Python decomposition of ``nll_loss``: the loss is
  written with ``logsumexp`` (2.6x faster; :data:`optimlab.tasks.CLASSIFICATION`'s stacked loss);
  dicts of tensors given to vmap are flattened once;
* vmap, ``functional_call`` and the mode above cost 0.9 ms a step in Python whatever the model's
  size (15 runs; a seventh of an MLP step, most of a logistic regression's): a plain dense network
  is applied by the same matmuls written out (:mod:`optimlab.engine.dense`), and a classification
  loss taken of all slices at once (``Task.many_losses``): 0.4 ms.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.overrides import TorchFunctionMode

from optimlab import registry
from optimlab.data import Dataset
from optimlab.engine.dense import dense_forward, dense_plan
from optimlab.engine.precision import Precision
from optimlab.engine.records import EVAL_BATCH
from optimlab.errors import OptimlabError
from optimlab.optimizers import OptimizerSpec
from optimlab.tasks import TASKS, Task

__all__ = ["ScaledOptimizer", "SharedInputLinear", "Stack", "stacking_refusal"]

# activations (floats) one evaluation chunk of all slices may hold: train's own bound, a CNN on
# 32x32 images (64 x 32 x 32 floats a sample) evaluated EVAL_BATCH samples at a time
EVAL_FLOATS = EVAL_BATCH * 64 * 32 * 32


class SharedInputLinear(TorchFunctionMode):
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


class Stack:
    """The S x L models as stacked tensors (S, L, *shape), and the vmapped functions applying them.

    The vmapped functions take the stacked tensors as a flat tuple (``self.tensors``: parameters,
    then buffers): flattening a dict at each call of each vmap level was a tenth of a small step.
    """

    def __init__(self, models: list[nn.Module], width: int, data: Dataset, device: torch.device,
                 with_accuracy: bool = False, task: Task | None = None, precision: Precision | None = None):
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
        self.precision = precision or Precision("fp32", device)
        self.loss_fn = self.task.stacked_loss
        self.with_accuracy = with_accuracy and self.task.accuracy
        stacked_dims = (0,) * len(self.tensors)
        per_seed = vmap(self._loss, in_dims=(*stacked_dims, None, None))  # the batch: shared
        self._losses = vmap(per_seed, in_dims=(*stacked_dims, 0, 0))  # the batch: one per seed
        # a plain dense network: its stacked forward by hand (engine.dense), only the loss under vmap
        self.dense = dense_plan(self.template, data.input_shape) if not self.buffers else None
        self._dense_losses = vmap(vmap(self._output_loss, in_dims=(0, None)), in_dims=(0, 0))
        shared = (*stacked_dims, None, None)  # the evaluation set: shared by all
        self._sums = vmap(vmap(self._sum_metrics, in_dims=shared), in_dims=shared)
        act = _largest_activation(models[0], data.input_shape)
        self.eval_chunk = max(1, min(EVAL_BATCH, EVAL_FLOATS // (grid[0] * grid[1] * act)))
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None
               for m in self.template.modules()):  # batch statistics in eval mode too: the outputs
            self.eval_chunk = EVAL_BATCH  # depend on the chunks, evaluate's (memory over the bound)

    def _apply(self, tensors: tuple, x: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.template, dict(zip(self.names, tensors, strict=True)), (x,))
        return out.float() if self.precision.mixed else out  # the loss in fp32

    def _loss(self, *args):
        *tensors, x, y = args
        return self._output_loss(self._apply(tensors, x), y)

    def _output_loss(self, out: torch.Tensor, y: torch.Tensor):
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
        if self.dense is not None:
            with self.precision.autocast():
                out = dense_forward(self.dense, self.params, x)
                out = out.float() if self.precision.mixed else out  # the loss in fp32
                if self.task.many_losses is None:
                    return self._dense_losses(out, y)
                losses = self.task.many_losses(out, y)
            if self.with_accuracy:  # argmax: 3x faster on (batch, class) than on its transpose
                return losses, (out.contiguous().argmax(dim=-1) == y.unsqueeze(1)).float().mean(dim=-1)
            return losses
        with SharedInputLinear(), self.precision.autocast():
            return self._losses(*self.tensors, x, y)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list, list | None]:
        """Mean loss and accuracy (None for regression) of every slice on all of (x, y), a set
        shared by the slices: nested lists [S][L], as :func:`optimlab.training.evaluate` gives them."""
        self.template.eval()
        loss_sum = torch.zeros(self.shape, dtype=torch.float64, device=x.device)
        correct = torch.zeros(self.shape, dtype=torch.int64, device=x.device)
        with SharedInputLinear(), self.precision.autocast():
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


@torch.no_grad()
def _largest_activation(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Floats in the largest activation of one sample: a forward pass of two samples (zeros) through
    a copy of ``model``, in eval mode (BatchNorm refuses a batch of one sample where it takes batch
    statistics). On the model's own device, not the meta device: a process's first operation on meta
    tensors loads their kernels, measured 1.2 s, a sixth of a 15-run MLP epoch."""
    template = copy.deepcopy(model).eval()
    sizes = [math.prod(input_shape)]

    def record(_module, _inputs, out) -> None:
        if isinstance(out, torch.Tensor):
            sizes.append(out[0].numel())

    for m in template.modules():
        m.register_forward_hook(record)
    device = next((t.device for t in [*template.parameters(), *template.buffers()]), None)
    template(torch.zeros(2, *input_shape, device=device))
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

    Then a trial, as :class:`Stack` applies a model: 2 seeds x 2 slots of copies of ``model``
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
        with SharedInputLinear():
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


class ScaledOptimizer:
    """One stock optimizer at lr=1 over the stacked parameters; each slice's step scaled by its lr.

    The optimizer turns p (S, L, *shape) into p_new = p - u; each slice then gets
    p + lr * (p_new - p) = lerp(p, p_new, lr), with ``lrs`` (S, L) broadcast as the weight: a copy of
    p before the step and the lerp after, two passes over the parameters.

    ``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay and maximize included) is stepped
    directly instead: its direction (the gradient, or its momentum buffer, kept in the optimizer's own
    state) is lr-independent, and ``p.addcmul_(direction, lr, value=-1)`` with each slice's lr as the
    broadcast weight is the same rounding as SGD's own ``p.add_(direction, alpha=-lr)``, so each slice's
    update equals its independent run's bit for bit given the same gradient (the lerp's does not), in one
    pass over the parameters instead of three (15 MLPs: the update 1.5 -> 0.4 ms of a 7 ms step).

    Learning rates: ``lrs`` as given (float64 where the device has it, so that a schedule's factor
    times each base lr is rounded once, as a run's ``base * factor``), applied in the parameters' dtype.
    """

    def __init__(self, spec: object, params: list[torch.Tensor], lrs: torch.Tensor):
        self.optimizer = _build_fast(spec, params)
        self.params = params
        self.base = lrs.clone()  # each slice's lr before a schedule's factor
        self.lrs = lrs.to(params[0].dtype)
        self.weights = [self.lrs.view(*lrs.shape, *(1,) * (p.dim() - 2)) for p in params]
        self.direct = _is_plain_sgd(self.optimizer)
        self.before = [] if self.direct else [torch.empty_like(p) for p in params]

    def backward(self, losses: torch.Tensor, extra: torch.Tensor | None = None) -> None:
        """Gradients of the slices' losses (S, L): the sum's gradient is each slice's own (``extra``:
        a sum over slices to add, the constraints' terms)."""
        self.optimizer.zero_grad(set_to_none=True)
        total = losses.sum()
        (total if extra is None else total + extra).backward()

    @torch.no_grad()
    def step(self) -> None:
        if self.direct:
            self._sgd_step()
            return
        torch._foreach_copy_(self.before, self.params)
        self.optimizer.step()
        for p, before, weight in zip(self.params, self.before, self.weights, strict=True):
            torch.lerp(before, p, weight, out=p)

    def _sgd_step(self) -> None:
        """``torch.optim.SGD``'s update (its single-tensor implementation, op for op) with each slice's
        lr; the momentum buffers in the optimizer's state, as its own step keeps them."""
        group = self.optimizer.param_groups[0]
        decay, momentum, dampening = group["weight_decay"], group["momentum"], group["dampening"]
        for p, weight in zip(self.params, self.weights, strict=True):
            if p.grad is None:
                continue
            direction = -p.grad if group["maximize"] else p.grad
            if decay != 0:
                direction = direction.add(p, alpha=decay)
            if momentum != 0:
                state = self.optimizer.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = direction.detach().clone()
                else:
                    buf.mul_(momentum).add_(direction, alpha=1 - dampening)
                direction = direction.add(buf, alpha=momentum) if group["nesterov"] else buf
            p.addcmul_(direction, weight, value=-1)

    def set_factor(self, factor: float) -> None:
        """A schedule's factor for the next step: every slice's lr is its own times ``factor``."""
        self.lrs.copy_(self.base * factor)

    def stop(self, s: int, j: int) -> None:
        """Slice (s, j) steps no more (learning rate 0, with any schedule)."""
        self.lrs[s, j] = 0.0
        self.base[s, j] = 0.0

    @torch.no_grad()
    def mask(self, s: int, j: int) -> None:
        """Stop slice (s, j): learning rate 0, parameters and optimizer state zeroed (finite)."""
        self.stop(s, j)
        for p in self.params:
            p[s, j] = 0.0
            for value in self.optimizer.state.get(p, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    value[s, j] = 0.0


def _is_plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` is torch.optim.SGD itself (not a subclass), one group, not differentiable:
    the optimizer :meth:`ScaledOptimizer._sgd_step` reproduces."""
    return (type(optimizer) is torch.optim.SGD and len(optimizer.param_groups) == 1
            and not optimizer.param_groups[0]["differentiable"])


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
