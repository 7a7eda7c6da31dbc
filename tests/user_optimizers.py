"""Optimizers of a user's own, written once for the tests, which copy this file's text into packages
of their own (to reach them by import path, from a plugin, in a worker process)."""

import torch


class _ScaledSGD(torch.optim.Optimizer):
    """p -= scale(lr) * g."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(self.scale(group["lr"]) * p.grad)


class SquaredLR(_ScaledSGD):  # p -= lr^2 g: not lr-linear
    def scale(self, lr):
        return lr ** 2


class Saturating(_ScaledSGD):  # p -= g lr / (1 + lr): not lr-linear
    def scale(self, lr):
        return lr / (1 + lr)


class SignMomentum(torch.optim.Optimizer):  # m = beta m + (1 - beta) g; p -= lr sign(m): lr-linear
    def __init__(self, params, lr=0.01, beta=0.9):
        super().__init__(params, dict(lr=lr, beta=beta))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("m", torch.zeros_like(p))
                m.mul_(group["beta"]).add_(p.grad, alpha=1 - group["beta"])
                p.add_(m.sign(), alpha=-group["lr"])
