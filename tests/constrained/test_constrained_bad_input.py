"""Bad input is refused with an OptimlabError that says what is wrong and what is valid; a refused
step changes nothing."""

import copy

import pytest
import torch

from optimlab.constrained import (
    ConstrainedOptimizer,
    Constraint,
    MultiplicativeUpdater,
    Problem,
    State,
    Tolerances,
    Violation,
)
from optimlab.errors import OptimlabError


def simple(violations, constraints=None, loss=True):
    x = torch.nn.Parameter(torch.tensor([0.5, -0.5]))
    problem = Problem(lambda: (x.pow(2).sum() if loss else None, violations(x)),
                      constraints or {"g": Constraint("<=")})
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.1) if problem.dual_parameters() else None
    return x, problem, ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.1), dual)


@pytest.mark.parametrize("kind", ["<", ">=", "inequal", "", None])
def test_unknown_constraint_type(kind):
    with pytest.raises(OptimlabError, match=f"unknown constraint type {kind!r}; valid: '<=' .* or '=='"):
        Constraint(kind)


@pytest.mark.parametrize("value, found", [(0.5, "float 0.5"), ([1.0, 2.0], "list"), (None, "NoneType")])
def test_a_violation_that_is_not_a_tensor(value, found):
    _, _, opt = simple(lambda x: {"g": value})
    with pytest.raises(OptimlabError, match=f"the violation of 'g' must be a torch.Tensor .*got {found}"):
        opt.step()


def test_a_violation_whose_shape_does_not_match_its_multiplier():
    _, _, opt = simple(lambda x: {"g": x - 1})
    with pytest.raises(OptimlabError, match=r"violation of 'g' has shape \(2,\) but its multiplier \(dense\) "
                                            r"has shape \(\); declare Constraint\(..., shape=\(2,\)\)"):
        opt.step()
    _, _, opt = simple(lambda x: {"g": Violation(x - 1, indices=torch.tensor([0]))},
                       {"g": Constraint("<=", 3)})
    with pytest.raises(OptimlabError, match=r"has shape \(2,\) but the observed indices has shape \(1,\)"):
        opt.step()
    _, _, opt = simple(lambda x: {"g": Violation(x[0], strict=x - 1)})
    with pytest.raises(OptimlabError, match=r"strict violation of 'g' must be a tensor of the violation's"):
        opt.step()
    _, _, opt = simple(lambda x: {"g": x - 1}, {"g": Constraint("<=", 2, multiplier="indexed")})
    with pytest.raises(OptimlabError, match="indexed multiplier: return Violation\\(value, indices=...\\)"):
        opt.step()
    _, _, opt = simple(lambda x: {"g": Violation(x - 1, indices=torch.tensor([0.0, 1.0]))},
                       {"g": Constraint("<=", 2)})
    with pytest.raises(OptimlabError, match="indices of 'g' must be a 1-D torch.long tensor"):
        opt.step()
    lam_model = torch.nn.Linear(3, 2)
    _, _, opt = simple(lambda x: {"g": Violation(x - 1, features=torch.ones(2, 3))},
                       {"g": Constraint("<=", 2, multiplier=lam_model)})
    with pytest.raises(OptimlabError, match=r"multiplier of 'g' has shape \(2, 2\) but its violation"):
        opt.step()


def test_what_compute_returns_is_checked():
    _, _, opt = simple(lambda x: {"h": x[0]})
    with pytest.raises(OptimlabError, match="violation for 'h', which is not a constraint .*constraints: g"):
        opt.step()
    x = torch.nn.Parameter(torch.tensor(1.0))
    for bad, message in [(lambda: x, "must return a State"),
                         (lambda: (x * torch.ones(2), {}), "scalar tensor"),
                         (lambda: State(x, [x]), "violations must be a dict")]:
        problem = Problem(bad, {"g": Constraint("<=")})
        opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.1),
                                   torch.optim.SGD(problem.dual_parameters(), lr=0.1))
        with pytest.raises(OptimlabError, match=message):
            opt.step()
    _, _, opt = simple(lambda x: {"g": x[0].detach() - 1}, {"g": Constraint("<=", formulation="penalty")},
                       loss=False)
    with pytest.raises(OptimlabError, match="do not depend on any parameter"):
        opt.step()


def states(x, problem, opt):
    return copy.deepcopy({"x": x.detach(), "problem": problem.state_dict(), "opt": opt.state_dict()})


def assert_unchanged(a, b, path="state"):
    """Exact equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_unchanged(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_unchanged(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.parametrize("scheme", ["simultaneous", "primal_then_dual", "dual_then_primal", "extragradient"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_violations_refuse_the_step_and_change_nothing(scheme, bad):
    x = torch.nn.Parameter(torch.tensor(0.2))
    poison = {"on": False}

    def compute():
        g = 1 - x
        return (x - 1) ** 2, {"g": g * bad if poison["on"] else g, "h": x - 0.3}

    problem = Problem(compute, {"g": Constraint("<="), "h": Constraint("==")})
    opt = ConstrainedOptimizer(problem, torch.optim.Adam([x], lr=0.1),
                               torch.optim.SGD(problem.dual_parameters(), lr=0.1, momentum=0.9), scheme)
    for _ in range(3):
        opt.step()
    poison["on"] = True
    before = states(x, problem, opt)
    with pytest.raises(OptimlabError, match=r"step 4 refused and nothing changed: non-finite violation of"):
        opt.step()
    assert_unchanged(before, states(x, problem, opt))
    assert all(p.grad is None for p in [x, *problem.dual_parameters()])
    opt.on_nonfinite = "skip"
    r = opt.step()
    assert r.skipped and r.step == 3 and "non-finite violation of 'g'" in r.reason
    assert_unchanged(before, states(x, problem, opt))
    poison["on"] = False
    assert opt.step().step == 4  # and it goes on


@pytest.mark.parametrize("scheme, where", [("primal_then_dual", "at the new point"),
                                           ("extragradient", "at the extrapolated point")])
def test_a_non_finite_value_after_the_first_evaluation_rolls_back(scheme, where):
    # finite at x = 0.2, NaN beyond 0.3: the primal (or extrapolation) step lands there
    x = torch.nn.Parameter(torch.tensor(0.2))
    problem = Problem(lambda: ((x - 1) ** 2, {"g": torch.where(x > 0.3, torch.nan, 1 - x)}),
                      {"g": Constraint("<=", init=0.1)})
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.25, momentum=0.5),
                               torch.optim.SGD(problem.dual_parameters(), lr=0.1), scheme)
    before = states(x, problem, opt)
    with pytest.raises(OptimlabError, match=f"step 1 refused {where} and nothing changed"):
        opt.step()
    assert_unchanged(before, states(x, problem, opt))
    assert opt.steps == 0


def test_a_non_finite_loss_is_refused():
    x = torch.nn.Parameter(torch.tensor(1.0))
    problem = Problem(lambda: (torch.log(x - 1), {"g": x - 2}), {"g": Constraint("<=")})
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.1),
                               torch.optim.SGD(problem.dual_parameters(), lr=0.1))
    with pytest.raises(OptimlabError, match="non-finite loss"):
        opt.step()
    assert x.item() == 1.0


def test_a_dual_optimizer_that_would_minimise_is_set_to_ascend_or_refused():
    x, problem, _ = simple(lambda x: {"g": 1 - x[0]})
    sgd = torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=False)
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.1), sgd)
    assert sgd.param_groups[0]["maximize"] and sgd.defaults["maximize"]
    opt.step()
    assert problem.multipliers()["g"].item() == 0.25  # ascended: 0 + 0.5 * (1 - 0.5)

    class NoMaximize(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 0.1})

    for dual in (NoMaximize(problem.dual_parameters()), torch.optim.LBFGS(problem.dual_parameters())):
        with pytest.raises(OptimlabError, match=f"optimizer {type(dual).__name__} has no 'maximize' option"):
            ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.1), dual)


def test_optimizers_holding_the_wrong_parameters():
    x, problem, _ = simple(lambda x: {"g": 1 - x[0]})
    lam = problem.dual_parameters()
    with pytest.raises(OptimlabError, match="primal optimizer holds the multipliers of g"):
        ConstrainedOptimizer(problem, torch.optim.SGD([x, *lam], lr=0.1), torch.optim.SGD(lam, lr=0.1))
    with pytest.raises(OptimlabError, match="not multipliers of this problem"):
        ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.1), torch.optim.SGD([*lam, x], lr=0.1))
    with pytest.raises(OptimlabError, match="multipliers of g are in no dual optimizer"):
        ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.1))
    with pytest.raises(OptimlabError, match="unconstrained scheme moves no multipliers, but constraints g"):
        ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.1), scheme="unconstrained")
    free = Problem(lambda: (x.sum(), {}), {})
    with pytest.raises(OptimlabError, match="not multipliers of this problem"):
        ConstrainedOptimizer(free, torch.optim.SGD([x], lr=0.1), torch.optim.SGD(lam, lr=0.1),
                             "unconstrained")
    with pytest.raises(OptimlabError, match="unknown scheme 'gda'; valid: simultaneous, primal_then_dual"):
        ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.1), torch.optim.SGD(lam, lr=0.1), "gda")
    with pytest.raises(OptimlabError, match="at least one primal optimizer"):
        ConstrainedOptimizer(problem, [], torch.optim.SGD(lam, lr=0.1))
    with pytest.raises(OptimlabError, match="on_nonfinite must be 'raise' or 'skip'"):
        ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.1), torch.optim.SGD(lam, lr=0.1),
                             on_nonfinite="ignore")
    with pytest.raises(OptimlabError, match="tolerance stationarity must be a number >= 0"):
        ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.1), torch.optim.SGD(lam, lr=0.1),
                             tolerances={"stationarity": -1})


@pytest.mark.parametrize("make, message", [
    (lambda: Constraint("<=", formulation="barrier"), "unknown formulation 'barrier'; valid: lagrangian"),
    (lambda: Constraint("<=", multiplier="sparse"), "unknown multiplier 'sparse'; valid: dense, indexed"),
    (lambda: Constraint("<=", init=-1.0), "inequality multipliers must start >= 0"),
    (lambda: Constraint("<=", 2, init=torch.zeros(3)), r"init has shape \(3,\) but the constraint has shape"),
    (lambda: Constraint("<=", penalty=2.0), "lagrangian formulation has no penalty coefficient"),
    (lambda: Constraint("<=", formulation="penalty", multiplier="indexed"), "has no multiplier"),
    (lambda: Constraint("<=", formulation="penalty", penalty=-1.0), "finite and >= 0"),
    (lambda: Constraint("<=", 3, formulation="augmented", penalty=torch.ones(2)), "penalty coefficient has"),
    (lambda: Constraint("<=", (2, 2), multiplier="indexed"), "indexed multiplier needs a 1-D"),
    (lambda: Constraint("<=", formulation="penalty", updater=MultiplicativeUpdater(0.5)), "factor must be >"),
    (lambda: Problem(None, {"a.b": Constraint("<=")}), "names must be identifiers"),
    (lambda: Problem(None, {"a": "<="}), "must be a Constraint"),
])
def test_bad_declarations(make, message):
    with pytest.raises(OptimlabError, match=message):
        make()


def test_tolerances_must_be_numbers():
    with pytest.raises(OptimlabError, match="tolerance feasibility must be a number >= 0"):
        Tolerances(feasibility="small")
