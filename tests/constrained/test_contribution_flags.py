"""Per-step contribution flags (Cooper's ``contributes_to_primal_update`` / ``contributes_to_dual_update``):
a group left out of the primal update does not move the model, one left out of the dual update keeps
its multiplier and its optimizer's state, by hand and against Cooper with the flags changing from
step to step."""

import pytest
import torch

from optimlab.constrained import ConstrainedOptimizer, Constraint, Problem, State, Violation

LR_X, LR_L = 0.1, 0.5


def setup(flags, scheme="simultaneous", dual=torch.optim.SGD):
    """min x^2 s.t. 1 - x <= 0 (grad_x L = 2x - lambda, grad_lambda L = 1 - x), from x = 0, lambda = 1;
    ``flags(step)``: (primal, dual) for that step."""
    x = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    count = {"step": 0}

    def compute():
        primal, dual_flag = flags(count["step"])
        count["step"] += 1
        return State(x ** 2, {"c": Violation(1 - x, contributes_to_primal_update=primal,
                                             contributes_to_dual_update=dual_flag)})

    problem = Problem(compute, {"c": Constraint("<=", init=1.0)}).to(torch.float64)
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=LR_X),
                               dual(problem.dual_parameters(), lr=LR_L), scheme=scheme)
    return x, problem, opt


def lam(problem) -> float:
    return float(problem.multipliers()["c"].detach())


@pytest.mark.parametrize("scheme", ["simultaneous", "dual_then_primal", "primal_then_dual"])
def test_each_flag_by_hand(scheme):
    x, problem, opt = setup(lambda s: (True, False), scheme)
    r = opt.step()
    # the multiplier stays; the model descends the whole Lagrangian: x = 0 - 0.1 (0 - 1) = 0.1
    assert lam(problem) == 1.0 and float(x.detach()) == pytest.approx(0.1) and float(r.violations["c"]) == 1.0
    x, problem, opt = setup(lambda s: (False, True), scheme)
    opt.step()
    # the model descends the loss alone (grad 0 at x = 0); the multiplier ascends by 0.5 (1 - x) at the
    # point the scheme measures, x = 0 in every scheme here since x does not move
    assert float(x.detach()) == 0.0 and lam(problem) == pytest.approx(1.5)
    x, problem, opt = setup(lambda s: (False, False), scheme)
    r = opt.step()
    assert float(x.detach()) == 0.0 and lam(problem) == 1.0 and float(r.violations["c"]) == 1.0


def test_a_multiplier_left_out_keeps_its_optimizers_state():
    x, problem, opt = setup(lambda s: (True, s % 2 == 0), dual=torch.optim.Adam)
    adam = opt.dual_optimizers[0]
    weight = problem.dual_parameters()[0]
    opt.step()
    assert adam.state[weight]["step"] == 1
    before = lam(problem)
    opt.step()  # step 1: left out of the dual update
    assert adam.state[weight]["step"] == 1 and lam(problem) == before
    opt.step()
    assert adam.state[weight]["step"] == 2


def test_the_flags_equal_coopers_when_they_change_every_step():
    cooper = pytest.importorskip("cooper", minversion="1.0")
    flags = lambda s: (s % 3 != 1, s % 2 == 0)  # noqa: E731 - every combination within 6 steps

    x = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    count = {"step": 0}

    class OneConstraint(cooper.ConstrainedMinimizationProblem):
        def __init__(self):
            super().__init__()
            self.c = cooper.Constraint(constraint_type=cooper.ConstraintType.INEQUALITY,
                                       formulation_type=cooper.formulations.Lagrangian,
                                       multiplier=cooper.multipliers.DenseMultiplier(
                                           init=torch.ones(1, dtype=torch.float64), dtype=torch.float64))

        def compute_cmp_state(self):
            primal, dual = flags(count["step"])
            count["step"] += 1
            state = cooper.ConstraintState(violation=(1 - x)[None], contributes_to_primal_update=primal,
                                           contributes_to_dual_update=dual)
            return cooper.CMPState(loss=x ** 2, observed_constraints={self.c: state})

    cmp = OneConstraint()
    theirs_opt = cooper.optim.SimultaneousOptimizer(
        cmp=cmp, primal_optimizers=torch.optim.SGD([x], lr=LR_X),
        dual_optimizers=torch.optim.SGD(cmp.dual_parameters(), lr=LR_L, maximize=True))
    theirs = []
    for _ in range(12):
        theirs_opt.roll()
        theirs += [float(x.detach()), float(cmp.c.multiplier.weight.detach()[0])]

    x_mine, problem, opt = setup(flags)
    mine = []
    for _ in range(12):
        opt.step()
        mine += [float(x_mine.detach()), lam(problem)]
    assert mine == pytest.approx(theirs, rel=1e-12, abs=1e-15)
    assert len(set(mine[1::2])) > 3  # the multiplier moved at some steps and not at others


def test_a_flag_that_is_not_a_boolean_is_refused():
    from optimlab.errors import OptimlabError

    x = torch.nn.Parameter(torch.zeros(()))
    problem = Problem(lambda: State(x ** 2, {"c": Violation(1 - x, contributes_to_dual_update=0)}),
                      {"c": Constraint("<=")})
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.1),
                               torch.optim.SGD(problem.dual_parameters(), lr=0.1))
    with pytest.raises(OptimlabError, match="contributes_to_dual_update of 'c' must be True or False; got 0"):
        opt.step()
