"""Indexed multipliers whose dual step touches only the observed entries: ``dual_step="sparse"`` (sparse
gradients, for the optimizers that take them) and ``"lazy"`` (any elementwise stock optimizer, stepped
on the observed rows), against the formulas, SparseAdam, Cooper and the dense multiplier."""

import io

import pytest
import torch

from optimlab.constrained import (
    ConstrainedOptimizer,
    Constraint,
    IndexedMultiplier,
    NuPI,
    Problem,
    State,
    Violation,
)
from optimlab.errors import OptimlabError

N, D, BATCH, STEPS = 30, 4, 6, 25
DUAL_LR = 0.05


def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    sign = (torch.randn(N, generator=gen) > 0).double() * 2 - 1
    plan = [torch.randperm(N, generator=gen)[:BATCH] for _ in range(STEPS)]
    return x, sign, plan


def run(dual_step, dual, steps=STEPS, checkpoint_at=None, **dual_kw):
    """Margin constraints 1 - s_i <w, x_i> <= 0 of a linear model, one per sample, observed for the
    samples of each batch; returns the multipliers after each step (and the optimizer)."""
    x, sign, plan = data()
    w = torch.nn.Parameter(torch.full((D,), 0.05, dtype=torch.float64))

    def compute(idx):
        return State(0.5 * w.pow(2).sum(), {"m": Violation(1 - sign[idx] * (x[idx] @ w), indices=idx)})

    def build():
        mult = IndexedMultiplier(N, dtype=torch.float64, dual_step=dual_step)
        problem = Problem(compute, {"m": Constraint("<=", N, multiplier=mult)})
        return problem, ConstrainedOptimizer(problem, torch.optim.SGD([w], lr=0.1),
                                             dual(problem.dual_parameters(), lr=DUAL_LR, **dual_kw))

    problem, opt = build()
    out = []
    for t in range(steps):
        if t == checkpoint_at:
            buffer = io.BytesIO()
            torch.save({"w": w.detach().clone(), "opt": opt.state_dict()}, buffer)
            buffer.seek(0)
            saved = torch.load(buffer, weights_only=True)
            problem, opt = build()
            with torch.no_grad():
                w.copy_(saved["w"])
            opt.load_state_dict(saved["opt"])
        opt.step(plan[t])
        out.append(problem.multipliers()["m"])
    return torch.stack(out), opt, plan


def test_sparse_and_lazy_sgd_equal_the_dense_multiplier_and_the_gradient_is_sparse():
    dense, _, _ = run("dense", torch.optim.SGD)
    sparse, opt, _ = run("sparse", torch.optim.SGD)
    lazy, _, _ = run("lazy", torch.optim.SGD)
    assert torch.equal(sparse, dense) and torch.equal(lazy, dense)  # stateless SGD: the same steps
    assert opt.problem.constraints["m"].multiplier.weight.grad.is_sparse
    assert (dense[-1] > 0).sum() > 5


def test_lazy_adam_is_adam_on_the_observed_rows_with_the_tables_step_count():
    """The textbook Adam per entry, moments updated only where observed, the bias correction by the
    table's step count (the dual steps taken), ascending (maximize), projected onto >= 0."""
    lazy, _, plan = run("lazy", torch.optim.Adam)
    x, sign, _ = data()
    b1, b2, eps = 0.9, 0.999, 1e-8
    lam, m, v = (torch.zeros(N, dtype=torch.float64) for _ in range(3))
    # the model's trajectory is needed for the violations: replay it with the multipliers found
    w = torch.full((D,), 0.05, dtype=torch.float64)
    for t, idx in enumerate(plan, start=1):
        g = 1 - sign[idx] * (x[idx] @ w)  # the dual gradient of the observed entries
        grad_w = w - (lam[idx] * sign[idx]) @ x[idx]
        m[idx] = b1 * m[idx] + (1 - b1) * g
        v[idx] = b2 * v[idx] + (1 - b2) * g * g
        step = DUAL_LR * (m[idx] / (1 - b1 ** t)) / ((v[idx] / (1 - b2 ** t)).sqrt() + eps)
        lam[idx] = (lam[idx] + step).clamp_min(0)
        w = w - 0.1 * grad_w
        torch.testing.assert_close(lazy[t - 1], lam, rtol=1e-10, atol=1e-12)


def test_lazy_adam_equals_sparse_adam_where_their_formulas_agree():
    """SparseAdam puts eps outside the bias correction; with a negligible eps the two are one method."""
    lazy, _, _ = run("lazy", torch.optim.Adam, eps=1e-30)
    sparse, _, _ = run("sparse", torch.optim.SparseAdam, eps=1e-30)
    torch.testing.assert_close(lazy, sparse, rtol=1e-10, atol=1e-12)


def test_lazy_leaves_unobserved_multipliers_and_their_state_alone_where_dense_adam_moves_them():
    lazy, opt, plan = run("lazy", torch.optim.Adam)
    dense, _, _ = run("dense", torch.optim.Adam)
    moved_lazy = moved_dense = 0
    for t in range(1, STEPS):
        unobserved = torch.ones(N, dtype=torch.bool)
        unobserved[plan[t]] = False
        moved_lazy += int((lazy[t] != lazy[t - 1])[unobserved].sum())
        moved_dense += int((dense[t] != dense[t - 1])[unobserved].sum())
    assert moved_lazy == 0 and moved_dense > 50
    state = opt.dual_optimizers[0].state[opt.problem.constraints["m"].multiplier.weight]
    never = torch.ones(N, dtype=torch.bool)
    never[torch.cat(plan)] = False
    assert int(state["step"]) == STEPS  # the table's count: every step observed some entry
    assert never.any() and not state["exp_avg"][never].any() and not state["exp_avg_sq"][never].any()


@pytest.mark.parametrize("dual_step, dual", [("sparse", torch.optim.SparseAdam), ("sparse", NuPI),
                                             ("sparse", torch.optim.Adagrad), ("lazy", torch.optim.Adam),
                                             ("lazy", torch.optim.RMSprop)])
def test_a_checkpoint_resumes_exactly(dual_step, dual):
    whole, _, _ = run(dual_step, dual)
    resumed, _, _ = run(dual_step, dual, checkpoint_at=11)
    assert torch.equal(whole, resumed)


def test_sparse_sgd_equals_coopers_indexed_multiplier():
    cooper = pytest.importorskip("cooper", minversion="1.0")
    mine, _, plan = run("sparse", torch.optim.SGD)
    x, sign, _ = data()
    w = torch.nn.Parameter(torch.full((D,), 0.05, dtype=torch.float64))

    class Margins(cooper.ConstrainedMinimizationProblem):
        def __init__(self):
            super().__init__()
            self.m = cooper.Constraint(constraint_type=cooper.ConstraintType.INEQUALITY,
                                       formulation_type=cooper.formulations.Lagrangian,
                                       multiplier=cooper.multipliers.IndexedMultiplier(num_constraints=N,
                                                                                       dtype=torch.float64))

        def compute_cmp_state(self, idx):
            state = cooper.ConstraintState(violation=1 - sign[idx] * (x[idx] @ w), constraint_features=idx)
            return cooper.CMPState(loss=0.5 * w.pow(2).sum(), observed_constraints={self.m: state})

    cmp = Margins()
    opt = cooper.optim.SimultaneousOptimizer(
        cmp=cmp, primal_optimizers=torch.optim.SGD([w], lr=0.1),
        dual_optimizers=torch.optim.SGD(cmp.dual_parameters(), lr=DUAL_LR, maximize=True))
    theirs = []
    for idx in plan:
        opt.roll(compute_cmp_state_kwargs={"idx": idx})
        theirs.append(cmp.m.multiplier.weight.detach().reshape(-1).clone())
    torch.testing.assert_close(mine, torch.stack(theirs), rtol=1e-12, atol=1e-14)


def test_a_lazy_table_beside_flat_groups_observed_at_some_steps():
    """Two dense groups (one observed at odd steps only) in the flat buffer and a lazy table, one Adam:
    the same as one parameter per group."""
    def go(flat):
        x, sign, plan = data()
        w = torch.nn.Parameter(torch.full((D,), 0.05, dtype=torch.float64))
        count = {"t": 0}

        def compute(idx):
            count["t"] += 1
            v = {"m": Violation(1 - sign[idx] * (x[idx] @ w), indices=idx), "norm": w.pow(2).sum() - 0.5}
            if count["t"] % 2:
                v["first"] = w[0] - 0.01
            return State(0.5 * w.pow(2).sum(), v)

        problem = Problem(compute, {"m": Constraint("<=", N, multiplier=IndexedMultiplier(
            N, dtype=torch.float64, dual_step="lazy")), "norm": Constraint("<="), "first": Constraint("==")})
        problem.to(torch.float64)
        opt = ConstrainedOptimizer(problem, torch.optim.SGD([w], lr=0.1),
                                   torch.optim.Adam(problem.dual_parameters(), lr=DUAL_LR),
                                   flat_multipliers=flat)
        assert bool(problem.flat_groups) == flat
        out = []
        for idx in plan:
            opt.step(idx)
            out.append(torch.cat([v.reshape(-1) for v in problem.multipliers().values()]))
        return torch.stack(out)

    assert torch.equal(go(True), go(False))


@pytest.mark.parametrize("dual_step, dual, match", [
    ("sparse", lambda p: torch.optim.Adam(p, lr=0.1), "Adam does not take \\(or not with weight decay\\)"),
    ("sparse", lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.1), "SGD does not take"),
    ("lazy", lambda p: torch.optim.Rprop(p, lr=0.1), "needs an elementwise optimizer"),
])
def test_an_optimizer_that_cannot_take_the_step_is_refused_at_construction(dual_step, dual, match):
    mult = IndexedMultiplier(5, dual_step=dual_step)
    problem = Problem(lambda: None, {"m": Constraint("<=", 5, multiplier=mult)})
    with pytest.raises(OptimlabError, match=match):
        ConstrainedOptimizer(problem, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1),
                             dual(problem.dual_parameters()))


def test_bad_indexed_multipliers_are_refused():
    with pytest.raises(OptimlabError, match="unknown dual_step 'eager' .*; valid: dense, sparse, lazy"):
        IndexedMultiplier(5, dual_step="eager")
    with pytest.raises(OptimlabError, match=r"has shape \(5,\) but the constraint has shape \(6,\)"):
        Constraint("<=", 6, multiplier=IndexedMultiplier(5))
    with pytest.raises(OptimlabError, match="inequality multipliers must start >= 0"):
        Constraint("<=", 5, multiplier=IndexedMultiplier(5, init=-1.0))
