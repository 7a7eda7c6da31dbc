"""Convex problems with known KKT points: min ||x||^2 s.t. Ax <= b, and s.t. Cx = d.

The reference solutions come from outside optimlab: for the inequalities, the dual problem
min_{lam >= 0} ||A^T lam / 2 + A^+ b||^2 solved by scipy's bounded least squares (BVLS, an exact
active-set method), then x* = -A^T lam* / 2; for the equalities, the closed form
mu* = -2 (C C^T)^{-1} d, x* = -C^T mu* / 2. Each reference is checked against the KKT conditions
before use. A has singular values 1.2, 1.0, 0.8 (well conditioned), so 300 steps of plain SGD on
both sides reach the solution far below the 1e-4 asked (measured, x and multipliers: <= 6e-10 for
the Lagrangian in every scheme, <= 6e-7 for the augmented Lagrangian with c = 1).
"""

import numpy as np
import pytest
import torch
from scipy.optimize import lsq_linear

from optimlab.constrained import (
    SCHEMES,
    AdditiveUpdater,
    ConstrainedOptimizer,
    Constraint,
    MultiplicativeUpdater,
    NuPI,
    Problem,
    Tolerances,
    Violation,
)

TOL = 1e-4
SINGULAR = (1.2, 1.0, 0.8)


def matrix(orthogonal_rows: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    v, _ = np.linalg.qr(rng.standard_normal((5, 3)))
    return (np.eye(3) if orthogonal_rows else u) @ np.diag(SINGULAR) @ v.T


def reference(kind: str, orthogonal_rows: bool = False):
    """(A, b, x*, lambda*) of min ||x||^2 s.t. A x <= b (kind "ineq") or A x = b ("eq")."""
    a = matrix(orthogonal_rows)
    if kind == "ineq":
        b = np.array([-1.0, -0.5, 1.0])  # two active constraints at the solution, one not
        fit = lsq_linear(0.5 * a.T, -np.linalg.pinv(a) @ b, bounds=(0, np.inf), method="bvls", tol=1e-15)
        lam = fit.x
        x = -0.5 * a.T @ lam
        slack = a @ x - b
        assert (lam >= 0).all() and (slack <= 1e-12).all() and np.abs(lam * slack).max() < 1e-12
        assert (lam > 0.5).sum() == 2 and slack.min() < -0.5  # the case is the one intended
    else:
        b = np.array([-1.0, 0.5, 1.0])
        lam = -2 * np.linalg.solve(a @ a.T, b)
        x = -0.5 * a.T @ lam
        assert np.abs(a @ x - b).max() < 1e-12
    assert np.abs(2 * x + a.T @ lam).max() < 1e-12  # stationarity of the Lagrangian
    return a, b, x, lam


def setup(kind, formulation="lagrangian", scheme="simultaneous", multiplier="dense", penalty=None,
          updater=None, primal_lr=0.2, dual=None, orthogonal_rows=False, permute=False):
    a, b, x_star, lam_star = reference(kind, orthogonal_rows)
    a_t, b_t = torch.tensor(a), torch.tensor(b)
    x = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    order = torch.Generator().manual_seed(0)

    def compute():
        v = a_t @ x - b_t
        if not permute:
            return (x * x).sum(), {"c": v}
        idx = torch.randperm(3, generator=order)  # entries observed by index, in a new order each step
        return (x * x).sum(), {"c": Violation(v[idx], indices=idx, features=torch.eye(3, dtype=v.dtype)[idx])}

    problem = Problem(compute, {"c": Constraint("<=" if kind == "ineq" else "==", 3, formulation=formulation,
                                                multiplier=multiplier, penalty=penalty, updater=updater)})
    problem.double()
    if dual is None and formulation != "quadratic_penalty":
        dual = torch.optim.SGD(problem.dual_parameters(), lr=0.2)
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=primal_lr), dual, scheme)
    return opt, x, x_star, lam_star, (a, b)


def multipliers(opt):
    return opt.problem.multipliers()["c"].numpy()


PRIMAL_DUAL = [s for s in SCHEMES if s != "unconstrained"]


@pytest.mark.parametrize("scheme", PRIMAL_DUAL)
@pytest.mark.parametrize("formulation", ["lagrangian", "augmented_lagrangian"])
@pytest.mark.parametrize("kind", ["ineq", "eq"])
def test_every_scheme_and_formulation_reaches_the_kkt_point(kind, formulation, scheme):
    penalty = 1.0 if formulation == "augmented_lagrangian" else None
    opt, x, x_star, lam_star, _ = setup(kind, formulation, scheme, penalty=penalty)
    for _ in range(300):
        opt.step()
    np.testing.assert_allclose(x.detach().numpy(), x_star, atol=TOL, rtol=0)
    np.testing.assert_allclose(multipliers(opt), lam_star, atol=TOL, rtol=0)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("kind", ["ineq", "eq"])
def test_the_quadratic_penalty_is_feasible_to_order_one_over_c(kind, scheme):
    # Only approximately feasible: at a fixed c the minimiser of ||x||^2 + c/2 ||relu(Ax - b)||^2
    # is off by O(|lambda*| / c); with c = 2e4, x and the multiplier estimate c * relu(g) are within
    # 1e-3 of the KKT point (measured: x 5e-5 / 1.6e-4, estimate 1e-4 / 4.9e-4 for ineq / eq). The
    # rows of A are orthogonal here, so that from x = 0 no active constraint is crossed on the way
    # (GD creeps at rate 2 lr where an active inequality is satisfied, which the coupled matrix would
    # make slow at such a c).
    c = 2e4
    opt, x, x_star, lam_star, (a, b) = setup(kind, "quadratic_penalty", scheme, penalty=c,
                                             primal_lr=0.5 / (2 + max(SINGULAR) ** 2 * c),
                                             orthogonal_rows=True)
    for _ in range(100):
        opt.step()
    xv = x.detach().numpy()
    g = a @ xv - b
    estimate = c * (np.maximum(g, 0) if kind == "ineq" else g)
    np.testing.assert_allclose(xv, x_star, atol=1e-3, rtol=0)
    np.testing.assert_allclose(estimate, lam_star, atol=1e-3, rtol=0)
    assert np.abs(xv - x_star).max() > 1e-5  # and it is not exact (1/c)


@pytest.mark.parametrize("kind", ["ineq", "eq"])
def test_indexed_multipliers_observed_in_a_new_order_each_step(kind):
    opt, x, x_star, lam_star, _ = setup(kind, multiplier="indexed", permute=True)
    for _ in range(300):
        opt.step()
    np.testing.assert_allclose(x.detach().numpy(), x_star, atol=TOL, rtol=0)
    np.testing.assert_allclose(multipliers(opt), lam_star, atol=TOL, rtol=0)


@pytest.mark.parametrize("scheme", ["simultaneous", "dual_then_primal"])
@pytest.mark.parametrize("kind", ["ineq", "eq"])
def test_implicit_multipliers_predicted_from_features(kind, scheme):
    model = torch.nn.Linear(3, 1, bias=False)  # one-hot features: the weight holds the multipliers
    torch.nn.init.zeros_(model.weight)
    opt, x, x_star, lam_star, _ = setup(kind, scheme=scheme, multiplier=model, permute=True)
    for _ in range(300):
        opt.step()
    predicted = opt.problem.constraints["c"].multiplier.value(features=torch.eye(3, dtype=torch.float64))
    np.testing.assert_allclose(x.detach().numpy(), x_star, atol=TOL, rtol=0)
    np.testing.assert_allclose(predicted.detach().numpy().ravel(), lam_star, atol=TOL, rtol=0)


@pytest.mark.parametrize("gains", [dict(Kp=1.0, Ki=1.0), dict(Kp=0.5, Ki=1.0, nu=0.5)])
@pytest.mark.parametrize("kind", ["ineq", "eq"])
def test_nupi_dual_optimizer(kind, gains):
    opt, x, x_star, lam_star, _ = setup(kind, dual=lambda params: NuPI(params, lr=0.2, **gains))
    for _ in range(300):
        opt.step()
    np.testing.assert_allclose(x.detach().numpy(), x_star, atol=TOL, rtol=0)
    np.testing.assert_allclose(multipliers(opt), lam_star, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", ["ineq", "eq"])
def test_augmented_lagrangian_with_penalty_updaters_applied_by_the_optimizer(kind):
    # per-entry c grown x1.5 where violated (capped at 4): an inactive entry keeps its c
    opt, x, x_star, lam_star, _ = setup(kind, "augmented_lagrangian", penalty=torch.ones(3),
                                        updater=MultiplicativeUpdater(1.5, tolerance=1e-3, max_value=4.0),
                                        primal_lr=0.15)
    for _ in range(300):
        opt.step()
    np.testing.assert_allclose(x.detach().numpy(), x_star, atol=TOL, rtol=0)
    np.testing.assert_allclose(multipliers(opt), lam_star, atol=TOL, rtol=0)
    c = opt.problem.penalties()["c"].tolist()
    assert c == ([4.0, 4.0, 1.0] if kind == "ineq" else [4.0, 4.0, 4.0])
    # a scalar c grown additively, with the alternating scheme of the method of multipliers
    opt, x, x_star, lam_star, _ = setup(kind, "augmented_lagrangian", "primal_then_dual", penalty=0.5,
                                        updater=AdditiveUpdater(0.5, tolerance=1e-3, max_value=3.0),
                                        primal_lr=0.15)
    for _ in range(300):
        opt.step()
    np.testing.assert_allclose(x.detach().numpy(), x_star, atol=TOL, rtol=0)
    np.testing.assert_allclose(multipliers(opt), lam_star, atol=TOL, rtol=0)
    assert opt.problem.penalties()["c"].item() == 3.0


def test_several_optimizers_on_each_side():
    a, b, x_star, lam_star = reference("ineq")
    a_t, b_t = torch.tensor(a), torch.tensor(b)
    x1 = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    x2 = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))

    def compute():
        x = torch.cat([x1, x2])
        v = a_t @ x - b_t
        return (x * x).sum(), {"first_two": v[:2], "last": v[2]}

    problem = Problem(compute, {"first_two": Constraint("<=", 2), "last": Constraint("<=")}).double()
    first, last = problem.constraints["first_two"], problem.constraints["last"]
    opt = ConstrainedOptimizer(
        problem, [torch.optim.SGD([x1], lr=0.2), torch.optim.SGD([x2], lr=0.2)],
        [torch.optim.SGD(first.parameters(), lr=0.2), torch.optim.Adagrad(last.parameters(), lr=0.2)],
    )
    for _ in range(300):
        opt.step()
    np.testing.assert_allclose(torch.cat([x1, x2]).detach().numpy(), x_star, atol=TOL, rtol=0)
    values = problem.multipliers()
    np.testing.assert_allclose(values["first_two"].numpy(), lam_star[:2], atol=TOL, rtol=0)
    assert values["last"].item() == lam_star[2] == 0.0  # inactive: projected to exactly 0


def test_kkt_diagnostics_by_hand_then_stopping_at_the_tolerances():
    a, b, x_star, lam_star = reference("ineq")
    opt, x, *_ = setup("ineq")
    opt.diagnostics = True
    first, second = opt.step(), opt.step()
    # step 1 at x = 0, lambda = 0: violation -b; nothing to slack; gradient 2x + A^T lambda = 0
    assert first.kkt.as_floats() == {"feasibility": 1.0, "complementary_slackness": 0.0, "stationarity": 0.0}
    # step 2 at x = 0 (zero gradient), lambda = relu(0.2 * (-b)) = (0.2, 0.1, 0)
    lam1 = np.array([0.2, 0.1, 0.0])
    np.testing.assert_allclose(second.multipliers["c"].numpy(), lam1, rtol=1e-15)
    kkt = second.kkt.as_floats()
    assert kkt["feasibility"] == 1.0
    assert kkt["complementary_slackness"] == pytest.approx(0.2 * 1.0, rel=1e-12)
    assert kkt["stationarity"] == pytest.approx(np.linalg.norm(a.T @ lam1), rel=1e-12)
    # stopping: all three below 1e-6 happens, and then the point is the KKT point
    opt, x, *_ = setup("ineq")
    opt.tolerances, opt.diagnostics = Tolerances(1e-6, 1e-6, 1e-6), True
    results = []
    while not (results and results[-1].converged) and len(results) < 1000:
        results.append(opt.step())
    r = results[-1]
    assert r.converged and len(results) < 1000
    np.testing.assert_allclose(x.detach().numpy(), x_star, atol=1e-5, rtol=0)
    assert r.kkt.feasibility <= 1e-6 and r.kkt.stationarity <= 1e-6
