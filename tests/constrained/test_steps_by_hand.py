"""Two steps of every scheme and formulation, computed by hand (plain SGD, numbers exact in binary).

Unless said otherwise: one scalar parameter x, f(x) = x^2, one inequality g(x) = 1 - x <= 0 (x >= 1),
x0 = 0.5, lambda0 = 0, primal lr 0.25, dual lr 0.5. The Lagrangian is L = x^2 + lambda (1 - x),
dL/dx = 2x - lambda, dL/dlambda = 1 - x. Each step reports (loss, violation, lambda, L) at the
point where it started.
"""

import math

import pytest
import torch

from optimlab.constrained import ConstrainedOptimizer, Constraint, Problem, State, Violation
from optimlab.errors import OptimlabError


def run(scheme, constraints, compute, x0=0.5, primal_lr=0.25, dual_lr=0.5, steps=2, **kw):
    x = torch.nn.Parameter(torch.tensor(x0, dtype=torch.float64))
    problem = Problem(lambda: compute(x), constraints).double()
    dual = torch.optim.SGD(problem.dual_parameters(), lr=dual_lr) if problem.dual_parameters() else None
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=primal_lr), dual, scheme, **kw)
    results = [opt.step() for _ in range(steps)]
    return x, problem, results


def basic(x):
    return x * x, {"g": 1 - x}


def numbers(r, name="g"):
    """(loss, violation, multiplier, Lagrangian) of a result, as floats."""
    return (r.loss.item(), r.violations[name].item(), r.multipliers[name].item(), r.lagrangian.item())


# scheme -> [(loss, g, lambda, L) at step 1, at step 2], x2, lambda2
BY_HAND = {
    # x1 = 0.5 - 0.25 (1 - 0) = 0.25, lambda1 = 0 + 0.5 * 0.5 = 0.25;
    # L(0.25, 0.25) = 0.0625 + 0.25 * 0.75 = 0.25; x2 = 0.25 - 0.25 (0.5 - 0.25) = 0.1875,
    # lambda2 = 0.25 + 0.5 * 0.75 = 0.625
    "simultaneous": ([(0.25, 0.5, 0.0, 0.25), (0.0625, 0.75, 0.25, 0.25)], 0.1875, 0.625),
    # x1 = 0.25 as above; the dual step uses g(x1) = 0.75: lambda1 = 0.375;
    # L(0.25, 0.375) = 0.0625 + 0.28125 = 0.34375; x2 = 0.25 - 0.25 (0.5 - 0.375) = 0.21875;
    # g(x2) = 0.78125: lambda2 = 0.375 + 0.390625 = 0.765625
    "primal_then_dual": ([(0.25, 0.5, 0.0, 0.25), (0.0625, 0.75, 0.375, 0.34375)], 0.21875, 0.765625),
    # lambda1 = 0 + 0.5 * 0.5 = 0.25 first; x1 = 0.5 - 0.25 (1 - 0.25) = 0.3125;
    # L(0.3125, 0.25) = 0.09765625 + 0.25 * 0.6875 = 0.26953125; lambda2 = 0.25 + 0.34375 = 0.59375;
    # x2 = 0.3125 - 0.25 (0.625 - 0.59375) = 0.3046875
    "dual_then_primal": ([(0.25, 0.5, 0.0, 0.25), (0.09765625, 0.6875, 0.25, 0.26953125)],
                         0.3046875, 0.59375),
    # extrapolate: x' = 0.5 - 0.25 * 1 = 0.25, lambda' = 0.25; at (0.25, 0.25): dL/dx = 0.25,
    # g = 0.75; update from (0.5, 0): x1 = 0.5 - 0.0625 = 0.4375, lambda1 = 0.375.
    # L(0.4375, 0.375) = 0.19140625 + 0.375 * 0.5625 = 0.40234375; extrapolate: dL/dx = 0.5,
    # x' = 0.3125, lambda' = 0.375 + 0.28125 = 0.65625; at (0.3125, 0.65625): dL/dx = -0.03125,
    # g = 0.6875; x2 = 0.4375 + 0.0078125 = 0.4453125, lambda2 = 0.375 + 0.34375 = 0.71875
    "extragradient": ([(0.25, 0.5, 0.0, 0.25), (0.19140625, 0.5625, 0.375, 0.40234375)],
                      0.4453125, 0.71875),
}


@pytest.mark.parametrize("scheme", list(BY_HAND))
def test_two_steps_of_each_scheme(scheme):
    expected, x2, lam2 = BY_HAND[scheme]
    x, problem, results = run(scheme, {"g": Constraint("<=")}, basic)
    assert [numbers(r) for r in results] == expected
    assert [r.step for r in results] == [1, 2]
    assert x.item() == x2
    assert problem.multipliers()["g"].item() == lam2


def test_equality_multiplier_is_free_and_inequality_one_projected():
    # f = x^2, h = x - 1 = 0 (mu0 = 0), g2 = x - 3 <= 0 (lambda0 = 0.5, inactive), x0 = 0, simultaneous.
    # step 1: L = 0 + 0 * (-1) + 0.5 * (-3) = -1.5; dL/dx = 2x + mu + lambda = 0.5: x1 = -0.125;
    #         mu1 = 0 + 0.5 * (-1) = -0.5 (negative: allowed); lambda1 = relu(0.5 + 0.5 * (-3)) = 0.
    # step 2: f = 0.015625, h = -1.125, g2 = -3.125; L = 0.015625 + 0.5625 + 0 = 0.578125;
    #         dL/dx = -0.25 - 0.5 + 0 = -0.75: x2 = 0.0625; mu2 = -0.5 - 0.5625 = -1.0625; lambda2 = 0.
    x, problem, (r1, r2) = run("simultaneous", {"h": Constraint("=="), "g2": Constraint("<=", init=0.5)},
                               lambda x: (x * x, {"h": x - 1, "g2": x - 3}), x0=0.0)
    assert numbers(r1, "h")[3] == -1.5 and r1.multipliers == {"h": 0.0, "g2": 0.5}
    assert r2.lagrangian.item() == 0.578125 and r2.multipliers == {"h": -0.5, "g2": 0.0}
    assert r2.violations == {"h": -1.125, "g2": -3.125}
    assert x.item() == 0.0625
    assert problem.multipliers() == {"h": -1.0625, "g2": 0.0}


def test_augmented_lagrangian_dual_step_is_scaled_by_c():
    # inequality, c = 2: term (relu(lambda + 2g)^2 - lambda^2) / 4, dterm/dx = -relu(lambda + 2g);
    # method of multipliers: lambda <- relu(lambda + 0.5 * 2 * g).
    # step 1 (x = 0.5, lambda = 0): g = 0.5, term = (1 - 0) / 4 = 0.25, L = 0.5; dL/dx = 1 - 1 = 0:
    #         x1 = 0.5; lambda1 = 0 + 0.5 * 2 * 0.5 = 0.5 (the Lagrangian's step would give 0.25)
    # step 2: g = 0.5, term = (1.5^2 - 0.25) / 4 = 0.5, L = 0.75; dL/dx = 1 - 1.5 = -0.5: x2 = 0.625;
    #         lambda2 = 0.5 + 0.5 = 1.0
    x, problem, (r1, r2) = run("simultaneous", {"g": Constraint("<=", formulation="augmented_lagrangian",
                                                                penalty=2.0)}, basic)
    assert numbers(r1) == (0.25, 0.5, 0.0, 0.5) and numbers(r2) == (0.25, 0.5, 0.5, 0.75)
    assert x.item() == 0.625 and problem.multipliers()["g"].item() == 1.0
    # equality h = x - 1, c = 2, x0 = 0: term mu h + h^2, dterm/dx = mu + 2h; mu <- mu + 0.5 * 2 * h
    # step 1: h = -1, L = 0 + 0 + 1 = 1; dL/dx = 0 - 2 = -2: x1 = 0.5; mu1 = -1
    # step 2: h = -0.5, L = 0.25 + 0.5 + 0.25 = 1.0; dL/dx = 1 + (-1 - 1) = -1: x2 = 0.75; mu2 = -1.5
    x, problem, (r1, r2) = run("simultaneous", {"h": Constraint("==", formulation="augmented_lagrangian",
                                                                penalty=2.0)},
                               lambda x: (x * x, {"h": x - 1}), x0=0.0)
    assert numbers(r1, "h") == (0.0, -1.0, 0.0, 1.0) and numbers(r2, "h") == (0.25, -0.5, -1.0, 1.0)
    assert x.item() == 0.75 and problem.multipliers()["h"].item() == -1.5


def test_augmented_lagrangian_at_c_zero_is_finite():
    # c = 0, lambda0 = 0.5: lambda + 0 * g > 0, so the term is lambda g (no 1/c); the dual step c g = 0.
    # step 1: L = 0.25 + 0.25 = 0.5, dL/dx = 1 - 0.5: x1 = 0.375; step 2: L = 0.140625 + 0.3125,
    # dL/dx = 0.75 - 0.5: x2 = 0.3125; lambda stays 0.5.
    form = dict(formulation="augmented_lagrangian", penalty=0.0)
    x, problem, (r1, r2) = run("simultaneous", {"g": Constraint("<=", init=0.5, **form)}, basic)
    assert numbers(r1) == (0.25, 0.5, 0.5, 0.5) and numbers(r2) == (0.140625, 0.625, 0.5, 0.453125)
    assert x.item() == 0.3125 and problem.multipliers()["g"].item() == 0.5
    # c = 0 and lambda = 0: the term is -0^2 / (2c) = 0 (not 0/0): L = f = x^2, so each step is
    # x <- x - 0.25 * 2x = x / 2; extragradient: x <- x - 0.25 * 2 (x / 2) = 0.75 x
    for scheme in BY_HAND:
        x, problem, (r1, r2) = run(scheme, {"g": Constraint("<=", **form)}, basic)
        factor = 0.75 if scheme == "extragradient" else 0.5
        assert r1.lagrangian.item() == 0.25 and x.item() == 0.5 * factor ** 2
        assert problem.multipliers()["g"].item() == 0.0
        assert all(math.isfinite(v) for r in (r1, r2) for v in numbers(r))


@pytest.mark.parametrize("scheme", ["unconstrained", "simultaneous", "dual_then_primal"])
def test_quadratic_penalty(scheme):
    # c = 2: L = x^2 + relu(1 - x)^2, dL/dx = 2x - 2 relu(1 - x); x0 = 0, lr 0.125 (no multiplier).
    # step 1: L = 0 + 1 = 1, dL/dx = -2: x1 = 0.25; step 2: L = 0.0625 + 0.5625 = 0.625,
    # dL/dx = 0.5 - 1.5 = -1: x2 = 0.375
    x, problem, (r1, r2) = run(scheme, {"g": Constraint("<=", formulation="quadratic_penalty", penalty=2.0)},
                               basic, x0=0.0, primal_lr=0.125)
    assert (r1.lagrangian.item(), r2.lagrangian.item(), x.item()) == (1.0, 0.625, 0.375)
    assert r1.multipliers == {} and problem.dual_parameters() == []


def test_proxy_constraint_strict_violation_drives_the_dual_step():
    # surrogate 1 - x for x; strict violation 2 * [x < 1] (not differentiable) for lambda.
    # step 1: L = 0.25 + 0 * 0.5, dL/dx = 1 - 0: x1 = 0.25; lambda1 = 0 + 0.5 * 2 = 1
    # step 2: L = 0.0625 + 1 * 0.75 = 0.8125, dL/dx = 0.5 - 1: x2 = 0.375; lambda2 = 1 + 1 = 2
    def compute(x):
        return State(x * x, {"g": Violation(1 - x, strict=2.0 * (x.detach() < 1))}, misc={"note": "ok"})

    for scheme in ("simultaneous", "dual_then_primal"):  # the latter: lambda1 = 1 first, then x
        x, problem, (r1, r2) = run(scheme, {"g": Constraint("<=")}, compute)
        assert numbers(r1) == (0.25, 2.0, 0.0, 0.25) and r1.misc == {"note": "ok"}
        if scheme == "simultaneous":
            assert numbers(r2) == (0.0625, 2.0, 1.0, 0.8125) and x.item() == 0.375
        else:  # lambda1 = 1; x1 = 0.5; lambda2 = 2; x2 = 0.5 - 0.25 * (1 - 2) = 0.75
            assert numbers(r2) == (0.25, 2.0, 1.0, 0.75) and x.item() == 0.75
        assert problem.multipliers()["g"].item() == 2.0


def test_sampled_constraints_move_only_the_observed_multipliers():
    # group g = (1 - x, 2 - x, 3 - x), indexed multiplier, x0 = 1; observed entries per step:
    # [0, 2], [1], [2, 0], then none (the constraint left out).
    # step 1: g_obs = (0, 2), L = 1, dL/dx = 2: x1 = 0.5; lambda = (0, 0, 1)
    # step 2: g_obs = (1.5,), lambda_1 = 0, L = 0.25, dL/dx = 1: x2 = 0.25; lambda = (0, 0.75, 1)
    # step 3: g_obs = (2.75, 0.75), L = 0.0625 + 2.75 + 0 = 2.8125, dL/dx = 0.5 - 1: x3 = 0.375;
    #         lambda = (0.375, 0.75, 2.375)
    # step 4: loss only: L = 0.140625, dL/dx = 0.75: x4 = 0.1875; lambda unchanged
    plan = [torch.tensor([0, 2]), torch.tensor([1]), torch.tensor([2, 0]), None]

    def compute(idx):
        g = torch.stack([1 - x, 2 - x, 3 - x])
        return x * x, ({} if idx is None else {"g": Violation(g[idx], indices=idx)})

    for kind in ("indexed", "dense"):  # a dense multiplier may be observed by index too
        x = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
        problem = Problem(compute, {"g": Constraint("<=", 3, multiplier=kind)}).double()
        dual = torch.optim.SGD(problem.dual_parameters(), lr=0.5)
        opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.25), dual)
        results = [opt.step(idx) for idx in plan]
        assert [r.lagrangian.item() for r in results] == [1.0, 0.25, 2.8125, 0.140625]
        assert results[2].multipliers["g"].tolist() == [1.0, 0.0]  # entries 2 and 0, as observed
        assert results[3].violations == {} and results[3].multipliers == {}
        assert x.item() == 0.1875
        assert problem.multipliers()["g"].tolist() == [0.375, 0.75, 2.375]


def test_sampled_constraints_with_adam_dense_gradients():
    # Adam works on an indexed multiplier (no sparse gradients); an entry never observed stays put
    # (Adam's first update of a zero gradient is 0 / (0 + eps) = 0).
    x = torch.nn.Parameter(torch.tensor(0.0))
    problem = Problem(lambda idx: (x * x, {"g": Violation((1 - x).expand(len(idx)), indices=idx)}),
                      {"g": Constraint("<=", 4, multiplier="indexed", init=0.25)})
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.1),
                               torch.optim.Adam(problem.dual_parameters(), lr=0.1))
    opt.step(torch.tensor([0, 1]))
    opt.step(torch.tensor([1]))
    lam = problem.multipliers()["g"]
    assert not problem.constraints["g"].multiplier.weight.grad.is_sparse
    # Adam's first step moves by lr (sign of the gradient): entry 1 twice, entry 0 once (then a 0 grad
    # with momentum), entries 2 and 3 never
    assert lam[2].item() == lam[3].item() == 0.25
    assert lam[0].item() > 0.25 + 0.09 and lam[1].item() > 0.25 + 0.19


def test_result_of_a_feasibility_problem_without_loss():
    # no loss: L = lambda g only. x0 = 0.5, lambda0 = 1: L = 0.5, dL/dx = -1: x1 = 0.75, lambda1 = 1.25
    x, problem, (r1,) = run("simultaneous", {"g": Constraint("<=", init=1.0)},
                            lambda x: State(None, {"g": 1 - x}), steps=1)
    assert r1.loss is None and r1.lagrangian.item() == 0.5
    assert x.item() == 0.75 and problem.multipliers()["g"].item() == 1.25
    with pytest.raises(OptimlabError, match="nothing to minimise"):
        run("simultaneous", {"g": Constraint("<=")}, lambda x: State(None, {}), steps=1)
