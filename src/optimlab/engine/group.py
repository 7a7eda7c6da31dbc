"""Many runs in one pass: runs that differ only in learning rate and seed (constrained runs: also in
dual learning rate and penalty coefficient), trained together by the engine's loop.

The K runs of a group sit in a grid of S seeds x L learning-rate slots (:class:`_Layout`), as one
:class:`~optimlab.engine.stacking.Stack` of models stepped by one
:class:`~optimlab.engine.stacking.ScaledOptimizer`. Runs of one seed share their initialization and
batch order, so each step gathers one batch per seed, not one per run.

Each slice reproduces :func:`optimlab.training.train` of its config: initialization, batch order,
evaluation and train_log rows, divergence step, final parameters (up to the summation order of the
batched kernels). A slice whose loss turns non-finite is recorded diverged and masked (parameters and
optimizer state zeroed, learning rate 0) without disturbing the others. :func:`group_refusal` says
when runs cannot be stacked exactly, and why (whether stacking also pays is measured:
:mod:`optimlab.engine.payoff`).

Constrained runs (:class:`_Constraints`) are simultaneous gradient descent-ascent as in ``train``:
the named measures (sums over all of a model's parameters) are reduced per slice from the stacked
parameters, giving g (S, L, n); one backward pass of the losses, the primal terms (multipliers
detached; c a tensor (S, L)) and the dual Lagrangians sum(lambda * s.detach()) gives both gradients.
The multipliers are one stacked tensor (S, L, m) stepped by one stock dual optimizer at lr=1
(maximize) with the same lerp by each slice's dual lr, then projected onto >= 0 (inequalities). A
diverged slice's multipliers and dual state are zeroed with its parameters. The group checkpoint
(still ``optimlab.group/1``: an unconstrained group's is unchanged) then carries ``constrained``,
the stacked multipliers and the dual optimizer's state.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import vmap

from optimlab import registry
from optimlab.constrained.formulations import make_formulation
from optimlab.constrained.named import parse_constraint
from optimlab.constrained.optimizer import set_maximize
from optimlab.data import Dataset, epoch_batches, steps_per_epoch
from optimlab.devices import resolve_device
from optimlab.engine.build import check_batch_size, init_model, load_data, task_of, total_steps
from optimlab.engine.config import TrainConfig, check_schedule_budget, config_differences, local_flow_name
from optimlab.engine.loop import run_loop
from optimlab.engine.precision import Precision
from optimlab.engine.records import (
    RunProgress,
    RunResult,
    eval_row,
    evaluated_at,
    progress_bar,
    record_losses,
    run_result,
)
from optimlab.engine.stacking import ScaledOptimizer, Stack, stacking_refusal
from optimlab.errors import OptimlabError
from optimlab.optimizers import OptimizerSpec
from optimlab.schedules import Schedule
from optimlab.tasks import TASKS, Task

__all__ = ["GROUP_FORMAT", "check_group", "group_refusal", "train_group", "vectorizable_key"]


GROUP_FORMAT = "optimlab.group/1"
# the only settings in which the runs of a group may differ (the last two: constrained runs)
VARYING = ("lr", "seed", "dual_lr", "penalty")
# the named constraints' measures (optimlab.constrained.named.MEASURES), summed over each slice
STACKED_MEASURES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "l2norm": lambda p: p.pow(2), "l1norm": lambda p: p.abs()}


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


def group_refusal(config: TrainConfig, data: Dataset) -> str | None:
    """Why the runs of ``config``'s group are trained one by one rather than stacked (a line for the
    log and the store), or None when :func:`train_group` trains them together exactly (whether that
    is also faster is measured: :func:`optimlab.engine.payoff.slower_stacked`)."""
    if local_flow_name(config.optimizer):
        return "local-flow optimizers are built per run (they need the model and the batch)"
    if config.compile:
        return ("compile is for runs trained one by one: the stacked step (vmap over functional_call) is "
                "not compiled; trained run by run")
    if config.precision == "fp16":
        return ("precision fp16's gradient scaler would skip the step of every stacked run when one run's "
                "gradients overflow; trained run by run (bf16 needs no scaler and is stacked)")
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
        return _loss_refusal(task, model, data)
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


def check_group(configs: list[TrainConfig]) -> None:
    """Raise :class:`OptimlabError` naming the first setting, other than lr, seed, dual_lr and
    penalty, in which the runs differ."""
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


def train_group(
    configs: list[TrainConfig],
    data: Dataset | None = None,
    data_dir: str | Path | None = None,
    resume_from: dict | None = None,
    on_checkpoint: Callable[[dict, list[RunResult]], None] | None = None,
    on_eval: Callable[[int, dict], None] | None = None,
    progress: bool = False,
    keep_models: bool = True,
    on_step: Callable[[int, int, list], None] | None = None,
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
    run: those it had when the divergence was seen, as :func:`train` returns them). ``on_step(step,
    total, losses)``: at every look at the losses, each run's last batch loss (None: diverged).
    """
    configs = list(configs)
    check_group(configs)
    base = configs[0]
    device = resolve_device(base.device)
    data = load_data(base, data, data_dir, device)
    check_batch_size(base.batch_size, data)
    why = group_refusal(base, data)
    if why:
        raise OptimlabError(f"these runs cannot be trained together exactly: {why}")
    group = _Group(configs, data, device)
    if resume_from is not None:
        group.restore(resume_from)
    return group.run(on_checkpoint, on_eval, progress, keep_models, on_step)


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


class _Constraints:
    """The stepper of a constrained group: simultaneous gradient descent-ascent, as
    :class:`optimlab.engine.steppers.ConstrainedStepper` steps one run, for every slice at once (the
    protocol: :class:`_StackedPlain`).

    The multipliers are one stacked tensor (S, L, m), m the constraints (none for the quadratic
    penalty), stepped by one stock dual optimizer at lr=1 (``maximize=True``) whose step each slice
    scales by its dual lr, as :class:`ScaledOptimizer` does, then projected onto >= 0 for the
    inequalities. The penalty coefficient c is a tensor (S, L). The violations g (S, L, n) are the
    named measures summed over each slice's parameters. Every step records, per slice, g before the
    step, the multipliers used in it and the batch accuracy (classification), as ``train`` does.
    """

    def __init__(self, configs: list[TrainConfig], layout: _Layout, device: torch.device, stack: Stack,
                 update: ScaledOptimizer):
        self.stack, self.update = stack, update
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

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step of simultaneous gradient descent-ascent of every slice: x (S, B, *input), y (S, B)
        -> the batch losses (S, L), detached."""
        out = self.stack.losses(x, y)
        losses, accuracy = out if isinstance(out, tuple) else (out, None)
        g = self.violations(self.update.params)
        used = self.multipliers.detach().clone()  # lambda_t, before its update
        self.zero_grad()
        self.update.backward(losses, self.objective(g))
        self.update.step()
        self.dual_step()
        self.record(g, used, accuracy)
        return losses.detach()

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
    def dual_step(self) -> None:
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
    def now(self) -> list:
        """For the evaluation rows: [seed][slot] -> the violations (exact, at the current parameters)
        and the multipliers of the slice, as a dict of columns."""
        g = self.violations(self.update.params).tolist()
        lam = self.multipliers.detach().tolist()
        rows = []
        for g_s, lam_s in zip(g, lam, strict=True):
            rows.append([{**{f"violation_{c.key}": v for c, v in zip(self.named, g_j, strict=True)},
                          **{f"multiplier_{c.key}": v for c, v in zip(self.named, lam_j, strict=False)}}
                         for g_j, lam_j in zip(g_s, lam_s, strict=True)])
        return rows

    def stop(self, s: int, j: int) -> None:
        """Slice (s, j) has finished (a resumed group): its dual lr 0."""
        self.dual_lrs[s, j] = 0.0

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
        """The group checkpoint's entries: ``constrained``, the stacked multipliers and the dual
        optimizer's state."""
        return {"constrained": {"multipliers": self.multipliers.detach(),
                                "optimizer": None if self.optimizer is None else self.optimizer.state_dict()}}

    def load_state_dict(self, ckpt: dict) -> None:
        if "constrained" not in ckpt:
            raise OptimlabError("the checkpoint holds no multipliers: not one of this constrained group")
        state = ckpt["constrained"]
        if tuple(state["multipliers"].shape) != tuple(self.multipliers.shape):
            raise OptimlabError("the checkpoint's multipliers do not fit this group's constraints")
        with torch.no_grad():
            self.multipliers.copy_(state["multipliers"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            set_maximize(self.optimizer)


class _StackedPlain:
    """Plain gradient descent of every slice, the stacked twin of
    :class:`optimlab.engine.steppers.PlainStepper`: the losses' backward, one scaled step. The
    protocol of a group's stepper (:class:`_Constraints` is the other): ``step(x, y) -> losses (S,
    L)``, ``take()`` / ``annotate(rows, values, last_step, cell)`` (its train_log columns), ``now()``
    (its evaluation columns, [seed][slot] -> dict, or None), ``mask(s, j)`` (a diverged slice),
    ``stop(s, j)`` (a finished one), ``state_dict()`` / ``load_state_dict(checkpoint)``."""

    def __init__(self, stack: Stack, update: ScaledOptimizer):
        self.stack, self.update = stack, update

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        losses = self.stack.losses(x, y)
        self.update.backward(losses)
        self.update.step()
        return losses.detach()

    def take(self) -> None:
        return None

    def annotate(self, rows: list[dict], values, last_step: int, cell: tuple[int, int]) -> None:
        pass

    def now(self) -> None:
        return None

    def mask(self, s: int, j: int) -> None:
        pass

    def stop(self, s: int, j: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, ckpt: dict) -> None:
        pass


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
        self.stack = Stack(self.models, self.layout.width, data, device, with_accuracy=constrained,
                           task=task_of(self.base, data), precision=Precision(self.base.precision, device))
        # float64 where the device has it: a schedule's factor times each lr rounded once, as in a run
        lrs = torch.zeros(self.layout.shape, device=device,
                          dtype=torch.float32 if device.type == "mps" else torch.float64)
        for config, (s, j) in zip(configs, self.layout.cells, strict=True):
            lrs[s, j] = config.lr
        self.update = ScaledOptimizer(self.base.optimizer, list(self.stack.params.values()), lrs)
        self.schedule = Schedule.parse(self.base.schedule)  # one for the group: the same factor for all
        self.schedule.check(self.total)
        self.stepper = (_Constraints(configs, self.layout, device, self.stack, self.update) if constrained
                        else _StackedPlain(self.stack, self.update))
        self.orders = [torch.Generator().manual_seed(s) for s in self.layout.seeds]
        self.runs = [RunProgress() for _ in configs]
        self.seen_diverged: list[dict | None] = [None] * len(configs)  # parameters at divergence
        self.step = self.epoch = 0
        self.wall_time = 0.0

    def live(self) -> list[int]:
        return [k for k, run in enumerate(self.runs) if run.status == "running"]

    # -- the loop, step by step as optimlab.training.train --------------------------------------

    def run(self, on_checkpoint, on_eval, progress: bool, keep_models: bool, on_step=None) -> list[RunResult]:
        """Train the group with the engine's loop, as :func:`optimlab.training.train` trains a run."""
        self.on_eval, self.on_checkpoint = on_eval, on_checkpoint
        self.started = time.perf_counter() - self.wall_time
        cfg = self.base
        bar = progress_bar(self.total, self.step, progress)
        run_loop(self, self.total, self.per_epoch, cfg.eval_every, cfg.log_every, bar, on_step)
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

    def _lr_of(self, config: TrainConfig):
        """``step -> the learning rate of that update`` of one of the group's runs."""
        if self.schedule.constant:
            return lambda step: config.lr
        return lambda step: config.lr * self.schedule.factor(max(step - 1, 0), self.total)

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        """One optimizer step of every slice on its seed's batch; idx (S * B,) -> losses (S, L)."""
        if not self.schedule.constant:  # every slice's lr times the same factor: each its own run
            self.update.set_factor(self.schedule.factor(self.step, self.total))
        seeds = len(self.layout.seeds)
        x = self.data.x_train.index_select(0, idx)
        x = x.view(seeds, -1, *x.shape[1:])
        y = self.data.y_train.index_select(0, idx).view(seeds, -1)
        return self.stepper.step(x, y)

    def flush(self, pending: list[torch.Tensor]) -> list[float | None]:
        """Look at the batch losses since the last look (one sync for all runs): record them as
        :func:`train` does, mask the runs that diverged. Returns each run's last batch loss."""
        values = torch.stack(pending).tolist()  # [step][seed][slot]
        pending.clear()
        extras = self.stepper.take()
        last: list[float | None] = [None] * len(self.runs)
        for k in self.live():
            (s, j), run, config = self.layout.cells[k], self.runs[k], self.configs[k]
            run.step = self.step
            logged = len(run.train_log)
            last[k] = record_losses([v[s][j] for v in values], run, config.log_every,
                                    self.per_epoch, self._lr_of(config))
            self.stepper.annotate(run.train_log[logged:], extras, self.step, (s, j))
            if run.status == "diverged":
                self.seen_diverged[k] = self.stack.state_of(s, j)
                self.update.mask(s, j)
                self.stepper.mask(s, j)
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
        val = self.stack.evaluate(d.x_val, d.y_val) if d.x_val is not None else None
        wall_time = time.perf_counter() - self.started
        extras = self.stepper.now()
        for k in live:
            s, j = self.layout.cells[k]
            of = (lambda m, s=s, j=j: (m[0][s][j], m[1][s][j] if m[1] else None))  # noqa: E731
            row = eval_row(self.step, self.per_epoch, batch_losses[k], of(train) if train else None,
                           of(test), self._lr_of(self.configs[k])(self.step), wall_time,
                           of(val) if val else None)
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
            **self.stepper.state_dict(),
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
        self.stepper.load_state_dict(ckpt)
        progress = ckpt["progress"]
        self.step, self.epoch, self.wall_time = progress["step"], progress["epoch"], progress["wall_time"]
        for k, (run, saved) in enumerate(zip(self.runs, progress["runs"], strict=True)):
            run.load(saved)
            if run.status == "completed":
                run.status = "running"  # a larger budget continues it; an equal one ends at once
            if run.status != "running":
                self.update.stop(*self.layout.cells[k])
                self.stepper.stop(*self.layout.cells[k])
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
        check_schedule_budget(theirs, config)
