"""The extragradient scheme with stateful optimizers: ExtraAdam by its formula (states advanced at both
half-steps, the default) and the restored-states variant, checked step by step on a problem small
enough to write out, and against Cooper's ExtraAdam where Cooper is installed."""

import math

import pytest
import torch

from optimlab.constrained import ConstrainedOptimizer, Constraint, Problem, State
from optimlab.errors import OptimlabError

LR_X, LR_L, BETAS, EPS = 0.1, 0.05, (0.9, 0.999), 1e-8


class Adam:
    """Adam's update by its formula (Kingma and Ba, with torch's bias corrections), on floats."""

    def __init__(self, lr: float, maximize: bool = False):
        self.lr, self.sign, self.m, self.v, self.t = lr, 1.0 if maximize else -1.0, 0.0, 0.0, 0

    def step(self, value: float, grad: float) -> float:
        b1, b2 = BETAS
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * grad
        self.v = b2 * self.v + (1 - b2) * grad * grad
        m_hat, v_hat = self.m / (1 - b1 ** self.t), self.v / (1 - b2 ** self.t)
        return value + self.sign * self.lr * m_hat / (math.sqrt(v_hat) + EPS)

    def copy(self) -> "Adam":
        other = Adam(self.lr)
        other.__dict__.update(self.__dict__)
        return other


def by_formula(steps: int, kept: bool) -> list[float]:
    """min (x - 2)^2 s.t. x - 1 <= 0, from x = 0, lambda = 0: grad_x L = 2 (x - 2) + lambda,
    grad_lambda L = x - 1; lambda projected onto >= 0 after each dual step. The path: x, lambda after
    each step, flat."""
    x, lam, ax, al = 0.0, 0.0, Adam(LR_X), Adam(LR_L, maximize=True)
    path = []
    for _ in range(steps):
        ex, el = (ax, al) if kept else (ax.copy(), al.copy())  # the extrapolation's optimizers
        x_half = ex.step(x, 2 * (x - 2) + lam)
        lam_half = max(el.step(lam, x - 1), 0.0)
        x, lam = ax.step(x, 2 * (x_half - 2) + lam_half), max(al.step(lam, x_half - 1), 0.0)
        path += [x, lam]
    return path


def optimlab_path(steps: int, states: str, primal=torch.optim.Adam, dual=torch.optim.Adam, **options):
    x = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    problem = Problem(lambda: State((x - 2) ** 2, {"c": x - 1}), {"c": Constraint("<=")})
    problem = problem.to(torch.float64)
    opt = ConstrainedOptimizer(problem, primal([x], lr=LR_X, **options),
                               dual(problem.dual_parameters(), lr=LR_L, **options),
                               scheme="extragradient", extrapolation_states=states)
    path = []
    for _ in range(steps):
        opt.step()
        path += [float(x.detach()), float(problem.multipliers()["c"])]
    return path


@pytest.mark.parametrize("states, kept", [("kept", True), ("restored", False)])
def test_extragradient_with_adam_is_its_formula(states, kept):
    got, want = optimlab_path(30, states), by_formula(30, kept)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert got[-1] > 0.5 and got[-2] > 1  # lambda rises while x is infeasible (x = 1, lambda = 2 at the end)


def test_the_two_differ_with_adam_and_agree_with_plain_sgd():
    assert optimlab_path(5, "kept") != pytest.approx(optimlab_path(5, "restored"), rel=1e-6)
    sgd = torch.optim.SGD
    assert optimlab_path(20, "kept", sgd, sgd) == optimlab_path(20, "restored", sgd, sgd)


def test_a_bad_extrapolation_states_is_refused():
    x = torch.nn.Parameter(torch.zeros(()))
    problem = Problem(lambda: State(x ** 2, {"c": x - 1}), {"c": Constraint("<=")})
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.1)
    with pytest.raises(OptimlabError, match="extrapolation_states must be one of kept, restored"):
        ConstrainedOptimizer(problem, torch.optim.Adam([x]), dual, scheme="extragradient",
                             extrapolation_states="frozen")


def test_kept_states_equal_coopers_extra_adam():
    """Cooper's ExtraAdam adds eps to sqrt(v) before the bias correction, torch's Adam after it: with
    eps = 0 the two are the same formula, and the paths agree to rounding."""
    cooper = pytest.importorskip("cooper", minversion="1.0")
    x = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    class Problem1D(cooper.ConstrainedMinimizationProblem):
        def __init__(self):
            super().__init__()
            self.c = cooper.Constraint(constraint_type=cooper.ConstraintType.INEQUALITY,
                                       formulation_type=cooper.formulations.Lagrangian,
                                       multiplier=cooper.multipliers.DenseMultiplier(num_constraints=1,
                                                                                     dtype=torch.float64))

        def compute_cmp_state(self):
            violation = cooper.ConstraintState(violation=(x - 1)[None])
            return cooper.CMPState(loss=(x - 2) ** 2, observed_constraints={self.c: violation})

    cmp = Problem1D()
    opt = cooper.optim.ExtrapolationConstrainedOptimizer(
        cmp=cmp, primal_optimizers=cooper.optim.ExtraAdam([x], lr=LR_X, eps=0.0),
        dual_optimizers=cooper.optim.ExtraAdam(cmp.dual_parameters(), lr=LR_L, eps=0.0, maximize=True))
    theirs = []
    for _ in range(30):
        opt.roll()
        theirs += [float(x.detach()), float(cmp.c.multiplier.weight.detach()[0])]
    assert optimlab_path(30, "kept", eps=0.0) == pytest.approx(theirs, rel=1e-12, abs=1e-15)
