"""An optimizer of your own: sign descent with momentum (signSGD with momentum, "Signum").

    m <- beta * m + (1 - beta) * g
    p <- p - lr * (sign(m) + weight_decay * p)

Each step moves by ``lr`` times a direction that does not depend on ``lr``, entry by entry: the
optimizer is lr-linear and elementwise, so a study may declare ``lr_linear = true`` and optimlab's
vectorized executor may train its learning rates together (optimlab checks the claim with a probe).
"""

from __future__ import annotations

import torch


class SignMomentum(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, beta: float = 0.9, weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"lr must be > 0; got {lr}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1); got {beta}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got {weight_decay}")
        super().__init__(params, {"lr": lr, "beta": beta, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta, wd = group["lr"], group["beta"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["momentum"]
                m.mul_(beta).add_(p.grad, alpha=1 - beta)
                direction = m.sign()
                if wd:
                    direction.add_(p, alpha=wd)
                p.add_(direction, alpha=-lr)
        return loss
