"""The small pieces by hand: penalty updaters, the implicit multiplier's projection, how many backward
passes each scheme makes, and groups of mixed precision."""

import pytest
import torch

from optimlab.constrained import (
    AdditiveUpdater,
    ConstrainedOptimizer,
    Constraint,
    ImplicitMultiplier,
    MultiplicativeUpdater,
    Problem,
    Violation,
)


def test_multiplicative_updater_per_entry_with_reset():
    # factor 2, tolerance 0.1: g = 0.5 is violated (x2), g = 0.05 within tolerance (kept), g = -1
    # satisfied (reset to its initial value)
    c, c0 = torch.tensor([4.0, 4.0, 4.0]), torch.tensor([1.0, 2.0, 3.0])
    MultiplicativeUpdater(2.0, tolerance=0.1, reset_satisfied=True).update_(
        c, c0, torch.tensor([0.5, 0.05, -1.0]), inequality=True)
    assert c.tolist() == [8.0, 4.0, 3.0]
    # an equality entry is violated by |h| > tolerance either way; capped at max_value
    c = torch.tensor([1.0, 1.0, 1.0])
    MultiplicativeUpdater(3.0, tolerance=0.1, max_value=2.5).update_(
        c, c.clone(), torch.tensor([-0.5, 0.05, 0.2]), inequality=False)
    assert c.tolist() == [2.5, 1.0, 2.5]


def test_scalar_coefficient_and_sampled_entries():
    # a scalar c grows when any observed entry is violated, resets when all inequalities hold
    c, c0 = torch.tensor(1.0), torch.tensor(1.0)
    up = AdditiveUpdater(0.5, tolerance=0.0, reset_satisfied=True)
    up.update_(c, c0, torch.tensor([-1.0, 0.3]), inequality=True)
    assert c.item() == 1.5
    up.update_(c, c0, torch.tensor([-1.0, 0.0]), inequality=True)  # 0 is satisfied
    assert c.item() == 1.0
    # per-entry c with sampled entries: only the observed ones change
    c = torch.ones(2, 2)
    AdditiveUpdater(1.0).update_(c, c.clone(), torch.tensor([0.3, -0.2]), inequality=True,
                                 indices=torch.tensor([3, 0]))
    assert c.tolist() == [[1.0, 1.0], [1.0, 2.0]]


def test_the_optimizer_applies_updaters_every_k_steps():
    x = torch.nn.Parameter(torch.tensor(0.0))
    problem = Problem(lambda: (x * x, {"g": 1 - x}),
                      {"g": Constraint("<=", formulation="quadratic_penalty", penalty=1.0,
                                       updater=MultiplicativeUpdater(2.0, every=2))})
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.01), scheme="unconstrained")
    seen = []
    for _ in range(5):
        opt.step()
        seen.append(problem.penalties()["g"].item())
    assert seen == [1.0, 2.0, 2.0, 4.0, 4.0]  # after steps 2 and 4 (still violated: x stays < 1)


def test_implicit_multiplier_is_clamped_and_its_gradient_projected():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    mult = ImplicitMultiplier(model)
    mult.nonnegative = True  # as an inequality constraint sets it
    features = torch.tensor([[-1.0], [2.0]])
    value = mult.value(features=features)
    assert value.squeeze(1).tolist() == [0.0, 2.0]
    # the dual Lagrangian sum(lambda * s) is maximised: ascent raises a clamped entry (s > 0 passes)
    # and would lower it further (s < 0 blocked); unclamped entries get the gradient as is
    for s, expected in (([1.0, 1.0], -1.0 + 2.0), ([-1.0, -1.0], 0.0 - 2.0), ([-1.0, 1.0], 0.0 + 2.0)):
        model.weight.grad = None
        (mult.value(features=features).squeeze(1) * torch.tensor(s)).sum().backward()
        assert model.weight.grad.item() == expected


class CountBackward(torch.autograd.Function):
    """The identity; counts the backward passes that reach it."""

    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        CountBackward.calls += 1
        return grad


@pytest.mark.parametrize("scheme, passes", [("simultaneous", 1), ("primal_then_dual", 1),
                                            ("dual_then_primal", 1), ("extragradient", 2),
                                            ("unconstrained", 1)])
def test_backward_passes_through_the_model_per_step(scheme, passes):
    x = torch.nn.Parameter(torch.tensor([0.5, 0.2]))

    def compute():
        y = CountBackward.apply(x)  # the "model"
        loss = (y * y).sum()
        if scheme == "unconstrained":
            return loss, {"p": y[0] - 1}
        return loss, {"g": 1 - y[0], "h": Violation(y[1] - 1, strict=y[1].detach() - 2),
                      "a": y.sum() - 3, "p": y[0] - 1}

    pen = dict(formulation="quadratic_penalty", penalty=1.0)
    constraints = {"p": Constraint("<=", **pen)}
    if scheme != "unconstrained":
        constraints.update(g=Constraint("<="), h=Constraint("=="),
                           a=Constraint("<=", formulation="augmented_lagrangian", penalty=1.0))
    problem = Problem(compute, constraints)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.1) if scheme != "unconstrained" else None
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.1), dual, scheme)
    CountBackward.calls = 0
    opt.step()
    assert CountBackward.calls == passes


def test_several_scalar_groups_of_another_precision_than_their_multipliers():
    # float64 violations, float32 multipliers, three scalar Lagrangian groups (stacked into one product).
    # x0 = (0.5, 0.5), f = |x|^2, g1 = 1 - x1, g2 = 1 - x2, h = x1 - x2 (mu); lambda0 = (0.5, 0, _), mu0 = 1
    # L = 0.5 + 0.5 * 0.5 + 0 + 1 * 0 = 0.75; dL/dx = 2x + (-0.5, 0) + (1, -1) = (1.5, 0)
    # x1 = (0.5, 0.5) - 0.5 (1.5, 0) = (-0.25, 0.5); lambda = (0.5 + 0.25, 0 + 0.25), mu = 1 + 0
    x = torch.nn.Parameter(torch.tensor([0.5, 0.5], dtype=torch.float64))
    problem = Problem(lambda: ((x * x).sum(), {"g1": 1 - x[0], "g2": 1 - x[1], "h": x[0] - x[1]}),
                      {"g1": Constraint("<=", init=0.5), "g2": Constraint("<="),
                       "h": Constraint("==", init=1.0)})
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.5),
                               torch.optim.SGD(problem.dual_parameters(), lr=0.5))
    r = opt.step()
    assert r.lagrangian.item() == 0.75 and r.lagrangian.dtype == torch.float64
    assert r.multipliers == {"g1": 0.5, "g2": 0.0, "h": 1.0}
    assert x.tolist() == [-0.25, 0.5]
    assert problem.multipliers() == {"g1": 0.75, "g2": 0.25, "h": 1.0}
    assert all(p.dtype == torch.float32 for p in problem.dual_parameters())


def test_a_problem_as_a_subclass_and_a_cheaper_violations_function():
    # Cooper's style works too: subclass Problem and define compute(). primal_then_dual re-evaluates
    # the violations at the new point with compute_violations when given (here counted).
    x = torch.nn.Parameter(torch.tensor(0.5))
    calls = {"compute": 0, "violations": 0}

    class Norm(Problem):
        def __init__(self):
            super().__init__(None, {"g": Constraint("<=")}, compute_violations=self.violations)

        def compute(self, scale):
            calls["compute"] += 1
            return x * x, {"g": scale * (1 - x)}

        def violations(self, scale):
            calls["violations"] += 1
            return {"g": scale * (1 - x)}

    problem = Norm()
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.25),
                               torch.optim.SGD(problem.dual_parameters(), lr=0.5), "primal_then_dual")
    r = opt.step(1.0)
    # as by hand in test_steps_by_hand: x1 = 0.25, lambda1 = 0.5 * g(x1) = 0.375
    assert (r.lagrangian.item(), x.item(), problem.multipliers()["g"].item()) == (0.25, 0.25, 0.375)
    assert calls == {"compute": 1, "violations": 1}
