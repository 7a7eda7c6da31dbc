"""An L0 sparsity budget: logistic regression on MNIST with hard-concrete gates on its input pixels.

Model: y = W (z * x) + b on the 784 pixels of the bundled ``mnist-10k`` (8000 training, 2000 test
images), with one hard-concrete gate z_j in [0, 1] per pixel (Louizos, Welling and Kingma 2018:
beta = 2/3, gamma = -0.1, zeta = 1.1, log-alpha initialised to 0). Training samples the gates;
at test time each gate is deterministic, z_j = clamp(sigmoid(log_alpha_j) (zeta - gamma) + gamma, 0, 1).

Constraint: the expected fraction of active gates (the expected L0 norm over 784), which has the
closed form

    density = mean_j P(z_j != 0) = mean_j sigmoid(log_alpha_j - beta log(-gamma / zeta)),

at most a budget of 0.3: g = density - 0.3 <= 0 (optimlab's sign convention: g <= 0 is feasible),
one scalar inequality with a multiplier lambda >= 0. Adam on the weights (lr 1e-2) and on the
log-alphas (lr 5e-2), a PI controller on lambda (NuPI, lr 0.02, Kp = 10), batch 256, 10 epochs.

Expected: the budget is met at the end (density <= 0.30; measured 0.290, about 227 of the 784
pixels; 240 test-time gates are open, 0.306), with the test accuracy of the unconstrained gated
model (0.90 for both); the unconstrained gated model keeps a density of 0.80 (783 of the 784
test-time gates open). Trained for much longer the density keeps falling below the
budget (0.217 after 40 epochs, lambda back at 0, test accuracy 0.892): a gate closed by the clamp
gets no gradient from the loss, so it does not reopen; the budget still holds.

    python examples/constrained_tutorials/sparsity_budget.py
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from optimlab.constrained import ConstrainedOptimizer, Constraint, NuPI, Problem, State
from optimlab.data import epoch_batches, load_dataset

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


class HardConcreteGates(nn.Module):
    """One hard-concrete gate per input feature (Louizos et al. 2018)."""

    def __init__(self, features: int, init_log_alpha: float = 0.0):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((features,), float(init_log_alpha)))

    def forward(self, rows: int) -> torch.Tensor:
        """Gates for a batch of ``rows``: sampled in training mode, deterministic in eval mode."""
        if self.training:
            u = torch.rand(rows, self.log_alpha.numel(), device=self.log_alpha.device)
            u = u.clamp(1e-6, 1.0 - 1e-6)
            s = torch.sigmoid((u.log() - torch.log1p(-u) + self.log_alpha) / BETA)
        else:
            s = torch.sigmoid(self.log_alpha).expand(rows, -1)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def prob_active(self) -> torch.Tensor:
        """P(z_j != 0) for every gate, differentiable in log_alpha."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-GAMMA / ZETA))


class GatedLogReg(nn.Module):
    """Logistic regression whose inputs pass through hard-concrete gates."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.gates = HardConcreteGates(features)
        self.linear = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.linear(x * self.gates(x.shape[0]))


def run(epochs: int = 10, batch_size: int = 256, lr: float = 1e-2, gate_lr: float = 5e-2,
        dual_lr: float = 0.02, kp: float = 10.0, budget: float = 0.3, constrained: bool = True,
        seed: int = 0, data=None) -> dict:
    """Train; return the model, the final expected density (the constraint's quantity), the fraction
    of test-time gates that are open, the test accuracy (test-time gates), the multiplier and the
    density after every epoch. ``data``: a loaded ``mnist-10k`` (loaded here when None)."""
    data = load_dataset("mnist-10k") if data is None else data
    x, y = data.x_train.flatten(1), data.y_train
    torch.manual_seed(seed)
    model = GatedLogReg(x.shape[1], data.num_classes)

    def compute(inputs: torch.Tensor, targets: torch.Tensor) -> State:
        loss = F.cross_entropy(model(inputs), targets)
        if not constrained:
            return State(loss)
        return State(loss, {"density": model.gates.prob_active().mean() - budget})  # g <= 0

    primal = torch.optim.Adam([{"params": model.linear.parameters(), "lr": lr},
                               {"params": model.gates.parameters(), "lr": gate_lr}])
    if constrained:
        problem = Problem(compute, {"density": Constraint("<=")})
        opt = ConstrainedOptimizer(problem, primal, NuPI(problem.dual_parameters(), lr=dual_lr, Kp=kp))
    else:
        problem = Problem(compute)
        opt = ConstrainedOptimizer(problem, primal, scheme="unconstrained")
    order = torch.Generator().manual_seed(seed)
    history = []
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in epoch_batches(x.shape[0], batch_size, order, drop_last=True):
            opt.step(x[idx], y[idx])
        with torch.no_grad():
            history.append(float(model.gates.prob_active().mean()))
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        accuracy = float((model(data.x_test).argmax(1) == data.y_test).float().mean())
        open_gates = float((model.gates(1) > 0).float().mean())
        density = float(model.gates.prob_active().mean())
    return {
        "model": model, "density": density, "open_gates": open_gates, "accuracy": accuracy,
        "multiplier": float(problem.multipliers()["density"]) if constrained else None,
        "history": history, "budget": budget, "epochs": epochs, "seconds": seconds,
    }


def main() -> None:
    torch.set_num_threads(1)  # small tensors: one thread is fastest
    data = load_dataset("mnist-10k")
    c, u = run(data=data), run(constrained=False, data=data)
    print(f"logistic regression with hard-concrete input gates on mnist-10k, budget: expected density "
          f"<= {c['budget']}, {c['epochs']} epochs ({c['seconds']:.1f} s constrained, "
          f"{u['seconds']:.1f} s unconstrained)")
    for name, r in (("constrained  ", c), ("unconstrained", u)):
        print(f"  {name} expected density {r['density']:.4f}, open test-time gates {r['open_gates']:.4f} "
              f"({round(r['open_gates'] * 784)} of 784 pixels), test accuracy {r['accuracy']:.4f}")
    print(f"  multiplier {c['multiplier']:.4f}; density per epoch {[round(v, 3) for v in c['history']]}")
    print(f"  budget {'met' if c['density'] <= c['budget'] else 'NOT met'}")


if __name__ == "__main__":
    main()
