"""``CurvatureScheduler``: learning rates for any model from the batch loss's curvature along the step.

    sched = CurvatureScheduler(torch.optim.SGD(model.parameters(), lr=h), every=10)
    for x, y in batches:
        loss = sched.step(lambda: loss_fn(model(x), y))   # fills .grad and sets the lr
        opt.step()
    hs = sched.epoch_lrs(steps_per_epoch)                  # one lr per epoch (median), for plain SGD

Every ``every`` steps it measures lambda = q^T H_B q, q = g / |g| (g the batch gradient), by a
Hessian-vector product (double backward) or a gradient secant q . (grad(theta + eps q) - grad(theta)) / eps,
and sets each group's lr to f_h(lambda) = (1 - exp(-h lambda)) / lambda (h when lambda <= 0), h the
group's initial lr: one SGD step along q is then the exact flow of the local quadratic model along q.

The guard (``guard="armijo"``, the default): the quadratic model is only as good as lambda, and a
lambda that collapses (a network whose curvature along g vanishes for a batch, saturated logits)
promises a far minimum that is not there (0.024 gave lr 38 on an MLP, which then diverged). So a
measured step checks the rate it chose on the same batch before taking it (measure, then choose):
the loss at theta - lr g must fall by at least ``armijo`` times the linear model's decrease,
L(theta - lr g) <= L(theta) - armijo * sum_groups lr |g|^2, else the rates are halved, up to
``backtracks`` times. On an exact quadratic the check never bites for ``armijo`` < 1/2 (the step
f_h(lambda) < 1/lambda decreases the loss by at least half the linear model's decrease), so it changes
nothing where the local model is right; each check costs one forward pass of the batch (no backward),
with the same dropout draws as the measurement and BatchNorm buffers restored (``model``).
Why a closure returning the loss (without backward): the scheduler needs the loss's graph for the
Hessian-vector product, and on the measured steps it reuses that same forward/backward for the
gradient it leaves in ``.grad``, so a measured step costs one forward, one backward and one HVP.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Callable

import torch

from optimlab.errors import OptimlabError
from optimlab.localflow.exact import check_flow_time
from optimlab.localflow.flows import flow_factor

METHODS = ("hvp", "secant")
GUARDS = ("armijo", "none")


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class CurvatureScheduler:
    """Sets the lr of ``optimizer`` from the measured curvature; ``torch.optim.lr_scheduler``-like.

    ``every``: measure on steps 0, k, 2k, ... and keep the last lr in between. ``method``: ``"hvp"``
    or ``"secant"`` (for models without double backward); ``eps``: the secant's step, relative to
    1 + |theta|. ``guard``: ``"armijo"`` (the module docstring; ``armijo`` in (0, 1), ``backtracks``
    >= 1 halvings at most) or ``"none"``; ``model``: the module the closure runs, whose buffers
    (BatchNorm's statistics) the guard's and the secant's extra forward passes leave unchanged.
    ``records``: one dict per step, {"step", "lr", "curvature", "event", "backtracks"} with event
    "measured", "guarded" (the check halved the rate ``backtracks`` times), "kept", "nan-curvature"
    (lambda not finite: lr = h) or "zero-gradient" (lr = h).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, every: int = 1, method: str = "hvp",
                 eps: float = 1e-4, guard: str = "armijo", armijo: float = 0.25, backtracks: int = 10,
                 model: torch.nn.Module | None = None):
        if not (isinstance(every, int) and every >= 1):
            raise OptimlabError(f"CurvatureScheduler: every must be an integer >= 1; got {every!r}")
        if method not in METHODS:
            raise OptimlabError(f"CurvatureScheduler: unknown method {method!r}; valid: {', '.join(METHODS)}")
        if not (math.isfinite(eps) and eps > 0):
            raise OptimlabError(f"CurvatureScheduler: eps must be finite and > 0; got {eps}")
        if guard not in GUARDS:
            raise OptimlabError(f"CurvatureScheduler: unknown guard {guard!r}; valid: {', '.join(GUARDS)}")
        if isinstance(armijo, bool) or not isinstance(armijo, int | float) or not 0 < armijo < 1:
            raise OptimlabError(f"CurvatureScheduler: armijo is the fraction of the linear model's decrease "
                                f"a step must achieve, in (0, 1) (0.25 by default); got {armijo!r}")
        if isinstance(backtracks, bool) or not isinstance(backtracks, int) or backtracks < 1:
            raise OptimlabError(f"CurvatureScheduler: backtracks (halvings at most) must be an integer >= 1; "
                                f"got {backtracks!r}")
        self.guard, self.armijo, self.backtracks, self.model = guard, float(armijo), backtracks, model
        self.optimizer = optimizer
        self.flow_times = [check_flow_time(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        self.every, self.method, self.eps = every, method, eps
        self.step_count = 0
        self.last_curvature: float | None = None
        self.records: list[dict] = []
        self._last_lr = list(self.flow_times)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]

    def measure(self, closure: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, list, float]:
        """(loss, gradients, lambda) at the parameters: lambda = q^T H q, q = g / |g|; NaN if g = 0."""
        params = self._params()
        with torch.enable_grad():
            loss = closure()
            hvp = self.method == "hvp"
            grads = torch.autograd.grad(loss, params, create_graph=hvp, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
            g = _flat(grads)
            norm = g.detach().norm()
            if not bool(norm > 0):
                return loss, [d.detach() for d in grads], float("nan")
            q = (g / norm).detach()
            if hvp:
                Hq = torch.autograd.grad(g @ q, params, allow_unused=True)
                Hq = _flat([torch.zeros_like(p) if v is None else v for p, v in zip(params, Hq, strict=True)])
                lam = float(q @ Hq)
            else:
                lam = self._secant(closure, params, q, g.detach())
        return loss, [d.detach() for d in grads], lam

    def _secant(self, closure, params, q, g) -> float:
        theta_norm = float(_flat([p.detach() for p in params]).norm())
        eps = self.eps * (1.0 + theta_norm)
        shifts = torch.split(eps * q, [p.numel() for p in params])
        with torch.no_grad():
            for p, s in zip(params, shifts, strict=True):
                p.add_(s.view_as(p))
        try:
            with buffers_kept(self.model):
                loss2 = closure()
            g2 = torch.autograd.grad(loss2, params, allow_unused=True)
            g2 = _flat([torch.zeros_like(p) if v is None else v for p, v in zip(params, g2, strict=True)])
        finally:
            with torch.no_grad():
                for p, s in zip(params, shifts, strict=True):
                    p.sub_(s.view_as(p))
        return float(q @ (g2 - g)) / eps

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Evaluate the batch loss, leave its gradient in ``.grad``, set the lr; call before opt.step().

        ``closure()`` returns the batch loss at the current parameters (a scalar with its graph; it must
        not call backward). Returns the loss, detached.
        """
        params = self._params()
        backtracks = 0
        if self.step_count % self.every == 0:
            rng = _rng_state(params) if self.guard == "armijo" else None  # to replay the draws
            loss, grads, lam = self.measure(closure)
            if math.isfinite(lam):
                lrs, event = [self.learning_rate(lam, h) for h in self.flow_times], "measured"
                if self.guard == "armijo":
                    lrs, backtracks = self._checked(closure, loss.detach(), grads, lrs, rng)
                    event = "guarded" if backtracks else event
            else:
                lrs = list(self.flow_times)
                event = "zero-gradient" if all(bool((d == 0).all()) for d in grads) else "nan-curvature"
            self.last_curvature = lam
            for p, d in zip(params, grads, strict=True):
                p.grad = d
        else:
            with torch.enable_grad():
                loss = closure()
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p, d in zip(params, grads, strict=True):
                p.grad = torch.zeros_like(p) if d is None else d
            lrs, lam, event = self._last_lr, None, "kept"
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = list(lrs)
        self.records.append({"step": self.step_count, "lr": lrs[0], "curvature": lam, "event": event,
                             "backtracks": backtracks})
        self.step_count += 1
        return loss.detach()

    def _checked(self, closure, loss: torch.Tensor, grads: list, lrs: list[float], rng) -> tuple[list, int]:
        """The rates ``lrs`` halved until the step -lr g passes the Armijo check on this batch (or
        ``backtracks`` times); and how many halvings it took."""
        groups = [[p for p in g["params"] if p.requires_grad] for g in self.optimizer.param_groups]
        by_param = dict(zip(self._params(), grads, strict=True))
        squares = [sum(float((by_param[p].double() ** 2).sum()) for p in group) for group in groups]
        start = [p.detach().clone() for p in by_param]
        for halvings in range(self.backtracks + 1):
            if halvings:
                lrs = [lr / 2 for lr in lrs]
            with torch.no_grad():
                for group, lr in zip(groups, lrs, strict=True):
                    for p in group:
                        p.sub_(lr * by_param[p])
                with buffers_kept(self.model), torch.random.fork_rng(devices=rng[1]):
                    _set_rng_state(rng)  # the measurement's dropout draws: the same batch function
                    trial = float(closure())
                for p, saved in zip(by_param, start, strict=True):
                    p.copy_(saved)
            decrease = self.armijo * sum(lr * sq for lr, sq in zip(lrs, squares, strict=True))
            if math.isfinite(trial) and trial <= float(loss) - decrease:
                return lrs, halvings
        return lrs, self.backtracks

    @staticmethod
    def learning_rate(lam: float, h: float) -> float:
        """f_h(lambda) = (1 - exp(-h lambda)) / lambda for lambda > 0; h for lambda <= 0 (no growth)."""
        if not lam > 0:
            return h
        return float(flow_factor(torch.tensor(lam, dtype=torch.float64), h))

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def epoch_lrs(self, steps_per_epoch: int) -> list[float]:
        """The median lr of each epoch's steps (the seed's ``hs``; a partial last epoch counts)."""
        return epoch_lrs([r["lr"] for r in self.records], steps_per_epoch)

    def state_dict(self) -> dict:
        return {"flow_times": list(self.flow_times), "every": self.every, "method": self.method,
                "eps": self.eps, "guard": self.guard, "armijo": self.armijo, "backtracks": self.backtracks,
                "step_count": self.step_count, "last_curvature": self.last_curvature,
                "last_lr": list(self._last_lr), "records": [dict(r) for r in self.records]}

    def load_state_dict(self, state: dict) -> None:
        self.flow_times, self.every = list(state["flow_times"]), state["every"]
        self.method, self.eps, self.step_count = state["method"], state["eps"], state["step_count"]
        # a checkpoint from before the guard: its run had none
        self.guard = state.get("guard", "none")
        self.armijo = state.get("armijo", self.armijo)
        self.backtracks = state.get("backtracks", self.backtracks)
        self.last_curvature, self._last_lr = state["last_curvature"], list(state["last_lr"])
        self.records = [dict(r) for r in state["records"]]


@contextlib.contextmanager
def buffers_kept(model: torch.nn.Module | None):
    """Inside, ``model``'s buffers may change (BatchNorm's statistics in train mode); afterwards they
    are as before. A no-op without a model."""
    saved = {k: b.clone() for k, b in model.named_buffers()} if model is not None else {}
    try:
        yield
    finally:
        with torch.no_grad():
            for k, b in (model.named_buffers() if saved else ()):
                b.copy_(saved[k])


def _rng_state(params: list[torch.Tensor]) -> tuple:
    """The global random state now (CPU and the parameters' CUDA devices), to replay draws."""
    devices = sorted({p.device for p in params if p.device.type == "cuda"}, key=str)
    return torch.get_rng_state(), devices, [torch.cuda.get_rng_state(d) for d in devices]


def _set_rng_state(state: tuple) -> None:
    cpu, devices, cuda = state
    torch.set_rng_state(cpu)
    for device, s in zip(devices, cuda, strict=True):
        torch.cuda.set_rng_state(s, device)


def epoch_lrs(lrs: list[float], steps_per_epoch: int) -> list[float]:
    """Reduce per-step learning rates to one per epoch: the median of each consecutive block."""
    if not (isinstance(steps_per_epoch, int) and steps_per_epoch >= 1):
        raise OptimlabError(f"steps_per_epoch must be an integer >= 1; got {steps_per_epoch!r}")
    return [statistics.median(lrs[i:i + steps_per_epoch]) for i in range(0, len(lrs), steps_per_epoch)]


class EpochLR(torch.optim.lr_scheduler.LRScheduler):
    """Replays one lr per epoch on any optimizer (plain SGD): lr = hs[epoch], the last one held after.

    Call ``step()`` at the end of each epoch, like any torch scheduler.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, hs: list[float], last_epoch: int = -1):
        if not hs:
            raise OptimlabError("EpochLR: hs must hold at least one learning rate")
        self.hs = [check_flow_time(h) for h in hs]
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        h = self.hs[min(max(self.last_epoch, 0), len(self.hs) - 1)]
        return [h for _ in self.optimizer.param_groups]
