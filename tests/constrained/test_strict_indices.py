"""Strict measurements of other entries (``Violation(strict_indices=...)``, Cooper's
``strict_constraint_features``): the differentiable violation at ``indices`` moves the model with the
multipliers there, the strict one at ``strict_indices`` moves the multipliers there, feeds the penalty
updaters and is what the step reports; by hand, against Cooper with indices changing every step, and
with an implicit multiplier."""

import pytest
import torch

from optimlab.constrained import (
    ConstrainedOptimizer,
    Constraint,
    ImplicitMultiplier,
    MultiplicativeUpdater,
    Problem,
    State,
    Violation,
)
from optimlab.errors import OptimlabError

LR_X, LR_L = 0.1, 0.5


def test_the_primal_and_the_dual_side_use_their_own_entries_by_hand():
    """x in R^4, constraints x_i - 1 <= 0 with lambda = (1, 2, 3, 4); the primal side observes entries
    0 and 1, the strict side entries 2 and 3 (strict violations s = (0.5, -0.25))."""
    x = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    primal_idx, strict_idx = torch.tensor([0, 1]), torch.tensor([2, 3])
    s = torch.tensor([0.5, -0.25], dtype=torch.float64)

    def compute():
        return State(None, {"c": Violation(x[primal_idx] - 1, strict=s, indices=primal_idx,
                                           strict_indices=strict_idx)})

    problem = Problem(compute, {"c": Constraint("<=", 4, multiplier="indexed",
                                                init=torch.tensor([1.0, 2, 3, 4]))}).to(torch.float64)
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=LR_X),
                               torch.optim.SGD(problem.dual_parameters(), lr=LR_L))
    r = opt.step()
    # the model: grad_x = lambda at 0, 1 there, 0 elsewhere
    assert x.detach().tolist() == pytest.approx([-0.1, -0.2, 0.0, 0.0])
    # the multipliers: only the strict entries move, by lr * s
    assert problem.multipliers()["c"].tolist() == pytest.approx([1.0, 2.0, 3.25, 3.875])
    # the report pairs the strict violations with the multipliers of their entries
    assert r.violations["c"].tolist() == s.tolist()
    assert r.multipliers["c"].tolist() == [3.0, 4.0]


def test_a_penalty_updater_grows_the_coefficients_of_the_strict_entries():
    x = torch.nn.Parameter(torch.zeros(3))
    primal_idx, strict_idx = torch.tensor([0]), torch.tensor([1, 2])

    def compute():
        return State(x.pow(2).sum(), {"c": Violation(1 - x[primal_idx], strict=torch.tensor([0.5, -1.0]),
                                                     indices=primal_idx, strict_indices=strict_idx)})

    problem = Problem(compute, {"c": Constraint("<=", 3, formulation="augmented_lagrangian",
                                                multiplier="indexed", penalty=torch.ones(3),
                                                updater=MultiplicativeUpdater(factor=2.0))})
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=LR_X),
                               torch.optim.SGD(problem.dual_parameters(), lr=1.0))
    opt.step()
    # entry 1 is violated (0.5 > 0): doubled; entry 2 is satisfied, entry 0 not strictly observed
    assert problem.penalties()["c"].tolist() == [1.0, 2.0, 1.0]
    # the method of multipliers' dual step at the strict entries: relu(0 + c * s) with c = 1
    assert problem.multipliers()["c"].tolist() == [0.0, 0.5, 0.0]


def test_an_implicit_multiplier_is_trained_on_the_strict_features():
    """lambda(phi) = w . phi; the dual gradient of w is sum_j s_j phi_j over the strict rows."""
    x = torch.nn.Parameter(torch.zeros(()))
    net = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.constant_(net.weight, 1.0)
    phi = torch.tensor([[1.0, 0.0]])
    phi_strict = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    s = torch.tensor([0.5, 0.25])

    def compute():
        return State(x ** 2, {"c": Violation((1 - x)[None], strict=s, features=phi,
                                             strict_features=phi_strict)})

    problem = Problem(compute, {"c": Constraint("==", multiplier=ImplicitMultiplier(net))})
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=LR_X),
                               torch.optim.SGD(problem.dual_parameters(), lr=LR_L))
    r = opt.step()
    # the model: grad_x = 2x - lambda(phi) = -1 -> x = 0.1
    assert float(x.detach()) == pytest.approx(0.1)
    # w += lr * (0.5 * (0, 1) + 0.25 * (2, 1)) = (1, 1) + 0.5 * (0.5, 0.75)
    assert net.weight.detach().tolist() == [pytest.approx([1.25, 1.375])]
    assert r.multipliers["c"].tolist() == [1.0, 3.0]  # lambda at the strict features, before the step


def test_strict_indices_equal_coopers_when_the_entries_change_every_step():
    """Per-sample margin constraints of a linear model, the differentiable hinge at one half of the
    batch, the strict 0/1 error at another sample set each step; 15 steps of simultaneous GDA."""
    cooper = pytest.importorskip("cooper", minversion="1.0")
    n, d, batch, steps = 20, 3, 4, 15
    gen = torch.Generator().manual_seed(0)
    data, labels = torch.randn(n, d, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen) > 0
    sign = labels.double() * 2 - 1
    plan = [(torch.randperm(n, generator=gen)[:batch], torch.randperm(n, generator=gen)[:batch + 2])
            for _ in range(steps)]

    def margins(w, idx):
        return 0.5 - sign[idx] * (data[idx] @ w)  # margin >= 0.5 as g <= 0

    def run(make_step, w, read):
        out = []
        for idx, sidx in plan:
            make_step(idx, sidx)
            out.append(torch.cat([w.detach().clone(), read()]))
        return torch.stack(out)

    w_c = torch.nn.Parameter(torch.full((d,), 0.1, dtype=torch.float64))

    class Margins(cooper.ConstrainedMinimizationProblem):
        def __init__(self):
            super().__init__()
            self.c = cooper.Constraint(constraint_type=cooper.ConstraintType.INEQUALITY,
                                       formulation_type=cooper.formulations.Lagrangian,
                                       multiplier=cooper.multipliers.IndexedMultiplier(
                                           num_constraints=n, dtype=torch.float64))

        def compute_cmp_state(self, idx, sidx):
            strict = (margins(w_c, sidx) > 0).double() - 0.75  # non-differentiable
            state = cooper.ConstraintState(violation=margins(w_c, idx), constraint_features=idx,
                                           strict_violation=strict, strict_constraint_features=sidx)
            return cooper.CMPState(loss=0.5 * w_c.pow(2).sum(), observed_constraints={self.c: state})

    cmp = Margins()
    theirs_opt = cooper.optim.SimultaneousOptimizer(
        cmp=cmp, primal_optimizers=torch.optim.SGD([w_c], lr=LR_X),
        dual_optimizers=torch.optim.SGD(cmp.dual_parameters(), lr=LR_L, maximize=True))
    theirs = run(lambda i, s: theirs_opt.roll(compute_cmp_state_kwargs={"idx": i, "sidx": s}), w_c,
                 lambda: cmp.c.multiplier.weight.detach().reshape(-1).clone())

    w = torch.nn.Parameter(torch.full((d,), 0.1, dtype=torch.float64))

    def compute(idx, sidx):
        strict = (margins(w, sidx) > 0).double() - 0.75
        return State(0.5 * w.pow(2).sum(), {"c": Violation(margins(w, idx), strict=strict, indices=idx,
                                                           strict_indices=sidx)})

    problem = Problem(compute, {"c": Constraint("<=", n, multiplier="indexed")}).to(torch.float64)
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([w], lr=LR_X),
                               torch.optim.SGD(problem.dual_parameters(), lr=LR_L))
    mine = run(lambda i, s: opt.step(i, s), w, lambda: problem.multipliers()["c"])
    torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)
    lam = mine[-1, d:]
    assert int((lam > 0).sum()) > 3 and int((lam == 0).sum()) > 0  # some moved, some projected/unseen


@pytest.mark.parametrize("violation, match", [
    (lambda x: Violation(x[:1] - 1, indices=torch.tensor([0]), strict_indices=torch.tensor([1])),
     "give the strict violation too"),
    (lambda x: Violation(x[:1] - 1, strict=torch.zeros(3), indices=torch.tensor([0]),
                         strict_indices=torch.tensor([1, 2])),
     r"must have the shape of its strict_indices \(2,\); got a torch.float32 tensor of shape \(3,\)"),
    (lambda x: Violation(x[:1] - 1, strict=torch.zeros(1), indices=torch.tensor([0]),
                         strict_indices=torch.tensor([1.0])),
     "strict_indices of 'c' must be a 1-D torch.long tensor"),
    (lambda x: Violation(x[:1] - 1, strict=torch.zeros(1), indices=torch.tensor([0]),
                         strict_features=torch.zeros(1, 2)),
     "give strict_indices, not strict_features"),
    (lambda x: Violation(x[:1] - 1, strict=torch.zeros(2), indices=torch.tensor([0])),
     r"of the violation's shape \(1,\) \(or give strict_indices"),
])
def test_bad_strict_entries_are_refused_before_anything_moves(violation, match):
    x = torch.nn.Parameter(torch.zeros(3))
    problem = Problem(lambda: State(x.sum(), {"c": violation(x)}),
                      {"c": Constraint("<=", 3, multiplier="indexed", init=1.0)})
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=LR_X),
                               torch.optim.SGD(problem.dual_parameters(), lr=LR_L))
    with pytest.raises(OptimlabError, match=match):
        opt.step()
    assert x.detach().tolist() == [0.0, 0.0, 0.0] and problem.multipliers()["c"].tolist() == [1.0] * 3


def test_strict_indices_are_refused_for_an_implicit_multiplier():
    x = torch.nn.Parameter(torch.zeros(()))
    v = Violation((1 - x)[None], strict=torch.zeros(1), features=torch.zeros(1, 2),
                  strict_indices=torch.tensor([0]))
    problem = Problem(lambda: State(x ** 2, {"c": v}),
                      {"c": Constraint("==", multiplier=ImplicitMultiplier(torch.nn.Linear(2, 1)))})
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=LR_X),
                               torch.optim.SGD(problem.dual_parameters(), lr=LR_L))
    with pytest.raises(OptimlabError, match="give strict_features"):
        opt.step()
