"""Steppers: what one step of training does, behind one small protocol shared by plain, constrained
and local-flow training (as optax's update or Cooper's roll is one protocol for many methods).

A stepper has ``optimizer`` (the torch optimizer whose learning rate the records show),
``step(x, y) -> loss`` (the batch loss before the update, a tensor not yet looked at), ``annotate(rows,
last_step)`` (its columns of the train_log rows of the steps since the last call), ``now() -> dict``
(its columns of an evaluation row), ``state_dict()`` (what a checkpoint carries besides the model and
``optimizer``, as a dict of checkpoint entries) and ``load_state_dict(checkpoint)``. A new method is
one new stepper.
"""

from __future__ import annotations

import torch
from torch import nn

from optimlab import registry
from optimlab.constrained.named import parse_constraint
from optimlab.engine.config import TrainConfig, local_flow_name
from optimlab.engine.modes import has_modes
from optimlab.engine.precision import Precision
from optimlab.errors import OptimlabError
from optimlab.optimizers import LOCAL_FLOW, OptimizerSpec
from optimlab.schedules import Schedule
from optimlab.tasks import Task


class PlainStepper:
    """Gradient descent with any torch optimizer: zero the gradients, the loss, backward, step (in
    ``precision``: the forward pass under autocast, its output cast to fp32 for the loss; fp16
    through the gradient scaler, whose state the checkpoint carries)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, task: Task,
                 precision: Precision | None = None):
        self.model, self.optimizer, self.loss_fn = model, optimizer, task.loss
        self.precision = precision or Precision("fp32", "cpu")

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.precision.forward(self.model, xb), yb)
        self.precision.backward(loss)
        self.precision.step(self.optimizer)
        return loss

    def annotate(self, rows: list[dict], last_step: int) -> None:
        pass

    def now(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return self.precision.state_dict()

    def load_state_dict(self, checkpoint: dict) -> None:
        self.precision.load_state_dict(checkpoint)


class LocalFlowStepper(PlainStepper):
    """The optimizers of the local problem: ``exact-flow`` (the exact flow of each batch, linear
    models) and ``localflow-sgd`` (SGD whose learning rate the curvature scheduler sets from the flow
    time ``lr``, the curvature measured every ``every`` steps; the checkpoint carries its
    ``scheduler``)."""

    def __init__(self, config: TrainConfig, model: nn.Module, task: Task):
        from optimlab.localflow import CurvatureScheduler, ExactFlow

        spec = OptimizerSpec.parse(config.optimizer)
        options = {**LOCAL_FLOW[spec.name], **spec.options}
        self.model, self.loss_fn, self.scheduler = model, task.loss, None
        if spec.name == "exact-flow":
            self.optimizer = ExactFlow(model, lr=config.lr, rtol=options["rtol"], atol=options["atol"])
        else:
            self.optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=options["momentum"])
            self.scheduler = CurvatureScheduler(
                self.optimizer, every=options["every"], method=options["method"], eps=options["eps"],
                guard=options["guard"], armijo=options["armijo"], backtracks=options["backtracks"],
                model=model)

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if self.scheduler is None:
            return self.optimizer.step(xb, yb).to(torch.float32)
        loss = self.scheduler.step(lambda: self.loss_fn(self.model(xb), yb))
        self.optimizer.step()
        return loss

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict()} if self.scheduler is not None else {}

    def load_state_dict(self, checkpoint: dict) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])


class ConstrainedStepper:
    """Simultaneous gradient descent-ascent on a run's constraints (``config.constraints`` in
    ``config.formulation``): the primal ``optimizer`` on the model, the dual optimizer on the
    multipliers. Its columns: ``violation_<key>``, ``multiplier_<key>`` (unless the quadratic penalty
    has none) and, in train_log, the batch ``accuracy``; the checkpoint carries ``constrained``."""

    def __init__(self, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, task: Task,
                 device, precision: Precision | None = None):
        from optimlab.constrained import ConstrainedOptimizer, Constraint, Problem, State

        self.named = [parse_constraint(c) for c in config.constraints]
        self.model, self.optimizer = model, optimizer
        self.precision = precision = precision or Precision("fp32", device)
        classify, loss_fn = task.accuracy, task.loss

        def compute(xb, yb):  # the violations from the fp32 parameters, outside autocast
            out = precision.forward(model, xb)
            misc = {"accuracy": (out.argmax(1) == yb).float().mean()} if classify else {}
            return State(loss_fn(out, yb), {c.key: c.violation(model) for c in self.named}, misc=misc)

        self.problem = Problem(compute, {c.key: Constraint(c.kind, formulation=config.formulation,
                                                           penalty=config.penalty)
                                         for c in self.named}).to(device)
        dual = (registry.build_optimizer(config.dual_optimizer, self.problem.dual_parameters(),
                                         lr=config.dual_lr) if config.has_multipliers else None)
        self.multipliers = [c for c in self.named if config.has_multipliers]
        # the loop detects non-finite losses itself (divergence), without a sync every step
        self.lagrangian = ConstrainedOptimizer(self.problem, optimizer, dual, check_finite=False)
        self.pending: list[torch.Tensor] = []

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        r = self.lagrangian.step(xb, yb)
        values = [r.violations[c.key].reshape(()) for c in self.named]
        values += [r.multipliers[c.key].reshape(()) for c in self.multipliers]
        if "accuracy" in r.misc:
            values.append(r.misc["accuracy"])
        self.pending.append(torch.stack(values).detach())
        return r.loss

    def annotate(self, rows: list[dict], last_step: int) -> None:
        """Add the violations, multipliers and batch accuracy of the steps since the last call (up to
        ``last_step``) to those of ``rows`` (train_log rows of these steps)."""
        values = torch.stack(self.pending).tolist() if self.pending else []
        first, n, m = last_step - len(values) + 1, len(self.named), len(self.multipliers)
        for row in rows:
            v = values[row["step"] - first]
            for j, c in enumerate(self.named):
                row[f"violation_{c.key}"] = v[j]
            for j, c in enumerate(self.multipliers):
                row[f"multiplier_{c.key}"] = v[n + j]
            if len(v) > n + m:
                row["accuracy"] = v[n + m]
        self.pending.clear()

    @torch.no_grad()
    def now(self) -> dict:
        """The violations (exact, at the current parameters) and multipliers, for an evaluation row."""
        row = {f"violation_{c.key}": float(c.violation(self.model)) for c in self.named}
        for c in self.multipliers:
            row[f"multiplier_{c.key}"] = float(self.problem.constraints[c.key].multiplier.value())
        return row

    def state_dict(self) -> dict:
        return {"constrained": self.lagrangian.state_dict()}

    def load_state_dict(self, checkpoint: dict) -> None:
        self.lagrangian.load_state_dict(checkpoint["constrained"])


def make_stepper(config: TrainConfig, model: nn.Module, task: Task, device,
                 precision: Precision | None = None):
    """The stepper of ``config``: local flow, constrained, or plain with its optimizer; ``precision``
    (default: ``config.precision`` on ``device``) for the last two (local flows are fp32)."""
    precision = precision or Precision(config.precision, device)
    if local_flow_name(config.optimizer):
        return LocalFlowStepper(config, model, task)
    optimizer = registry.build_optimizer(config.optimizer, model.parameters(), lr=config.lr)
    if has_modes(optimizer) and not Schedule.parse(config.schedule).constant:
        raise OptimlabError(
            f"optimizer {registry.optimizer_label(config.optimizer)} is schedule-free (it has train() and "
            f"eval()): it replaces a learning-rate schedule, so schedule {config.schedule!r} is refused; "
            "use schedule = 'constant' and its own warmup_steps option to warm up")
    if config.constraints:
        return ConstrainedStepper(config, model, optimizer, task, device, precision)
    return PlainStepper(model, optimizer, task, precision)
