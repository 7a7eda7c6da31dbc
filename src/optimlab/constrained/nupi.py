"""The nuPI optimizer: a proportional-integral controller on the parameters (made for the multipliers).

With the error e_t = the gradient (its negative with ``maximize=True``; plus ``weight_decay * p``):

    xi_t = nu * xi_{t-1} + (1 - nu) * e_t
    p    <- p - lr * (Ki * e_t + Kp * (xi_t - xi_{t-1}))

``Kp = 0, Ki = 1`` is plain gradient descent (ascent with ``maximize``); ``Kp = 1, Ki = 1, nu = 0``
is the optimistic gradient method, p <- p - lr * (2 e_t - e_{t-1}). The first step needs xi_{-1}:
``init="sgd"`` takes xi_{-1} = e_0 (the first step is plain gradient descent with lr * Ki),
``init="zeros"`` takes xi_{-1} = 0 (first step lr * (Ki + Kp (1 - nu)) e_0). ``Kp``, ``Ki``, ``nu``
are per parameter group, like ``lr``. State per parameter: ``xi`` (the last smoothed error).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from optimlab.errors import OptimlabError

INITS = ("sgd", "zeros")


class NuPI(torch.optim.Optimizer):
    """nuPI(params, lr, Kp=0, Ki=1, nu=0, weight_decay=0, init="sgd", maximize=False)."""

    def __init__(self, params: Iterable, lr: float = 1e-2, Kp: float = 0.0, Ki: float = 1.0,
                 nu: float = 0.0, weight_decay: float = 0.0, init: str = "sgd", maximize: bool = False):
        defaults = dict(lr=lr, Kp=Kp, Ki=Ki, nu=nu, weight_decay=weight_decay, init=init,
                        maximize=maximize)
        _check(defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check(group)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, kp, ki, nu = group["lr"], group["Kp"], group["Ki"], group["nu"]
            wd, maximize = group["weight_decay"], group["maximize"]
            zeros = group["init"] == "zeros"
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise OptimlabError("NuPI does not take sparse gradients; use dense ones")
                e = -p.grad if maximize else p.grad
                if wd:
                    e = e.add(p, alpha=wd)
                state = self.state[p]
                previous = state.get("xi")
                if previous is None and not zeros:  # xi_{-1} = e_0: xi_0 = e_0, no P term
                    xi = previous = e.clone()
                else:
                    if previous is None:
                        previous = torch.zeros_like(p)
                    xi = previous * nu + e * (1 - nu) if nu else e.clone()
                update = e * ki
                if kp and xi is not previous:
                    update = update.add(xi - previous, alpha=kp)
                p.add_(update, alpha=-lr)
                state["xi"] = xi
        return loss


def _check(group: dict) -> None:
    for name in ("lr", "Kp", "Ki", "weight_decay"):
        v = group[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise OptimlabError(f"NuPI: {name} must be a number >= 0; got {v!r}")
    if isinstance(group["nu"], bool) or not isinstance(group["nu"], (int, float)) or not 0 <= group["nu"] < 1:
        raise OptimlabError(f"NuPI: nu must be in [0, 1); got {group['nu']!r}")
    if group["init"] not in INITS:
        raise OptimlabError(f"NuPI: unknown init {group['init']!r}; valid: {', '.join(INITS)}")
