"""One flat buffer for a problem's dense multipliers: the dual step is one optimizer step, and the results
are those of one parameter per group (``flat_multipliers=False``), bit for bit, also when groups are
observed at some steps only (their multipliers, states and step counts stay theirs), in every scheme;
old checkpoints with one parameter per group load into the buffer and continue the same run."""

import io

import pytest
import torch

from optimlab.constrained import ConstrainedOptimizer, Constraint, NuPI, Problem, State, Violation
from optimlab.errors import OptimlabError

STEPS = 12
A = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 2.0], [-1.0, 0.5, 1.0], [2.0, 1.0, 0.5]],
                 dtype=torch.float64)


def observed(step: int) -> dict:
    """Which groups a step observes, and whether each contributes to the dual update: ``row`` (2
    entries) always, ``one`` every other step, ``eq`` (equality) left out of the dual update at every
    third step, ``last`` only at steps 3 to 7."""
    seen = {"row": True, "eq": step % 3 != 0}
    if step % 2 == 0:
        seen["one"] = True
    if 3 <= step <= 7:
        seen["last"] = True
    return seen


def build(flat: bool, dual=torch.optim.Adam, scheme="simultaneous", start=0, **dual_kw):
    """The problem with its optimizers; ``start``: the step its observation pattern starts at."""
    x = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))
    count = {"step": start}

    def compute():
        seen = observed(count["step"])
        count["step"] += 1
        g = A @ x - torch.tensor([0.5, -0.1, 0.2, 0.3], dtype=torch.float64)
        values = {"row": g[:2], "one": g[2], "eq": Violation(g[3], contributes_to_dual_update=seen["eq"]),
                  "last": x.sum() - 0.1}
        return State((x - 1).pow(2).sum(), {k: v for k, v in values.items() if k in seen})

    problem = Problem(compute, {"row": Constraint("<=", 2, init=0.1), "one": Constraint("<="),
                                "eq": Constraint("=="), "last": Constraint("<=", init=0.2)})
    problem = problem.to(torch.float64)
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.05),
                               dual(problem.dual_parameters(), lr=0.1, **dual_kw), scheme=scheme,
                               flat_multipliers=flat)
    return x, problem, opt


def trajectory(x, problem, opt, steps=STEPS):
    out = []
    for _ in range(steps):
        r = opt.step()
        reported = {k: v.clone() for k, v in r.multipliers.items()}
        out.append((x.detach().clone(), problem.multipliers(), reported))
    return out


def assert_same(a, b):
    for (xa, la, ra), (xb, lb, rb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb)
        assert la.keys() == lb.keys() and all(torch.equal(la[k], lb[k]) for k in la)
        assert ra.keys() == rb.keys() and all(torch.equal(ra[k], rb[k]) for k in ra)


@pytest.mark.parametrize("dual, kw", [(torch.optim.Adam, {}), (torch.optim.SGD, {"momentum": 0.9}),
                                      (torch.optim.SGD, {}), (torch.optim.RMSprop, {"weight_decay": 0.1}),
                                      (NuPI, {"Kp": 1.0, "nu": 0.5, "init": "zeros"})])
@pytest.mark.parametrize("scheme", ["simultaneous", "dual_then_primal", "primal_then_dual", "extragradient"])
def test_the_buffer_gives_the_results_of_one_parameter_per_group(dual, kw, scheme):
    flat = build(True, dual, scheme, **kw)
    plain = build(False, dual, scheme, **kw)
    assert len(flat[2].dual_optimizers[0].param_groups[0]["params"]) == 1  # one tensor to step
    assert len(plain[2].dual_optimizers[0].param_groups[0]["params"]) == 4
    a, b = trajectory(*flat), trajectory(*plain)
    assert_same(a, b)
    if dual is torch.optim.Adam and scheme == "simultaneous":  # each group keeps its own step count
        # row every step, one at even steps, last at steps 3-7, eq at steps not divisible by 3
        assert flat[2]._flat.counts == [STEPS, STEPS // 2, 5, STEPS - 4]
    assert not torch.equal(a[0][1]["last"], a[-1][1]["last"])  # the intermittent group moved


def test_extragradient_with_restored_states_keeps_the_step_counts():
    def make(flat):
        x, problem, opt = build(flat, scheme="extragradient")
        opt.extrapolation_states = "restored"
        return x, problem, opt

    assert_same(trajectory(*make(True)), trajectory(*make(False)))


def test_the_buffer_holds_the_groups_inequalities_first_and_views_write_through():
    x, problem, opt = build(True)
    assert [n for n, _ in problem.flat_groups] == ["row", "one", "last", "eq"]
    assert problem.flat_inequalities == 4
    flat = problem.dense_multipliers
    assert flat.tolist() == pytest.approx([0.1, 0.1, 0.0, 0.2, 0.0])
    problem.constraints["last"].multiplier.weight.data.fill_(0.7)
    assert flat[3].item() == 0.7 and problem.multipliers()["last"].item() == 0.7
    keys = {f"constraints.{n}.multiplier.weight" for n in ("row", "one", "eq", "last")}
    assert set(problem.state_dict()) == keys | {"_extra_state"}  # the keys of one parameter per group


def test_no_buffer_where_it_would_not_be_exact_or_would_not_pay():
    for setup in (
        lambda p: [torch.optim.SGD(p.constraints[n].parameters(), lr=0.1) for n in p.constraints],
        lambda p: torch.optim.Rprop(p.dual_parameters(), lr=0.1),  # not elementwise from a zero state
        lambda p: torch.optim.Adagrad(p.dual_parameters(), lr=0.1),  # has state already
        lambda p: NuPI(p.dual_parameters(), lr=0.1, Kp=1.0),  # init="sgd": an entry's first step differs
    ):
        x = torch.nn.Parameter(torch.zeros(2))
        problem = Problem(lambda x=x: State(x.sum(), {"a": x[0], "b": x[1]}),
                          {"a": Constraint("<="), "b": Constraint("<=")})
        opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.1), setup(problem))
        assert not problem.flat_groups and opt._flat is None
        opt.step()
    one = Problem(lambda: State(x.sum(), {"a": x[0]}), {"a": Constraint("<=")})
    ConstrainedOptimizer(one, torch.optim.SGD([x], lr=0.1), torch.optim.SGD(one.dual_parameters(), lr=0.1))
    assert not one.flat_groups  # a single group: nothing to gain


def test_a_flat_problem_moves_with_to_and_keeps_its_views():
    x, problem, opt = build(True)
    opt.step()
    before = problem.multipliers()
    problem.to(torch.float32)
    assert problem.dense_multipliers.dtype == torch.float32
    after = problem.multipliers()
    for k in before:
        assert after[k].dtype == torch.float32 and torch.allclose(after[k].double(), before[k])


def _save(obj) -> dict:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("saved_flat", [True, False])
def test_a_checkpoint_resumes_the_run_exactly(saved_flat):
    """Save after 7 steps (the groups' Adam step counts differ by then), load into a fresh flat run, go
    on: the same as the uninterrupted flat run. A checkpoint of one parameter per group (as before the
    buffer) is converted on loading."""
    ref = trajectory(*build(True), steps=STEPS)
    x, problem, opt = build(saved_flat)
    trajectory(x, problem, opt, steps=7)
    ckpt = _save({"x": x.detach(), "opt": opt.state_dict()})
    x2, problem2, opt2 = build(True, start=7)
    with torch.no_grad():
        x2.copy_(ckpt["x"])
    opt2.load_state_dict(ckpt["opt"])
    assert opt2._flat.counts == [7, 4, 4, 4]  # row; one (steps 0 2 4 6); eq (1 2 4 5); last (3-6)
    assert_same(trajectory(x2, problem2, opt2, steps=STEPS - 7), ref[7:])


def test_a_checkpoint_of_another_layout_that_cannot_be_converted_is_refused():
    x, problem, opt = build(True)
    opt.step()
    state = opt.state_dict()
    state["dual"][0]["param_groups"][0]["params"] = [0, 1, 2]  # three parameters: no layout of this problem
    x2, problem2, opt2 = build(True)
    with pytest.raises(OptimlabError, match="dual optimizer 0 of the checkpoint has parameter groups of"):
        opt2.load_state_dict(state)
