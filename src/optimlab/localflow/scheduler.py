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
Why a closure returning the loss (without backward): the scheduler needs the loss's graph for the
Hessian-vector product, and on the measured steps it reuses that same forward/backward for the
gradient it leaves in ``.grad``, so a measured step costs one forward, one backward and one HVP.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import torch

from optimlab.errors import OptimlabError
from optimlab.localflow.exact import check_flow_time
from optimlab.localflow.flows import flow_factor

METHODS = ("hvp", "secant")


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class CurvatureScheduler:
    """Sets the lr of ``optimizer`` from the measured curvature; ``torch.optim.lr_scheduler``-like.

    ``every``: measure on steps 0, k, 2k, ... and keep the last lr in between. ``method``: ``"hvp"``
    or ``"secant"`` (for models without double backward); ``eps``: the secant's step, relative to
    1 + |theta|. ``records``: one dict per step, {"step", "lr", "curvature", "event"} with event
    "measured", "kept", "nan-curvature" (lambda not finite: lr = h) or "zero-gradient" (lr = h).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, every: int = 1, method: str = "hvp",
                 eps: float = 1e-4):
        if not (isinstance(every, int) and every >= 1):
            raise OptimlabError(f"CurvatureScheduler: every must be an integer >= 1; got {every!r}")
        if method not in METHODS:
            raise OptimlabError(f"CurvatureScheduler: unknown method {method!r}; valid: {', '.join(METHODS)}")
        if not (math.isfinite(eps) and eps > 0):
            raise OptimlabError(f"CurvatureScheduler: eps must be finite and > 0; got {eps}")
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
            g2 = torch.autograd.grad(closure(), params, allow_unused=True)
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
        if self.step_count % self.every == 0:
            loss, grads, lam = self.measure(closure)
            if math.isfinite(lam):
                lrs, event = [self.learning_rate(lam, h) for h in self.flow_times], "measured"
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
        self.records.append({"step": self.step_count, "lr": lrs[0], "curvature": lam, "event": event})
        self.step_count += 1
        return loss.detach()

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
                "eps": self.eps, "step_count": self.step_count, "last_curvature": self.last_curvature,
                "last_lr": list(self._last_lr), "records": [dict(r) for r in self.records]}

    def load_state_dict(self, state: dict) -> None:
        self.flow_times, self.every = list(state["flow_times"]), state["every"]
        self.method, self.eps, self.step_count = state["method"], state["eps"], state["step_count"]
        self.last_curvature, self._last_lr = state["last_curvature"], list(state["last_lr"])
        self.records = [dict(r) for r in state["records"]]


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
