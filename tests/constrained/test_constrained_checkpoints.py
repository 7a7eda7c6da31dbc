"""Checkpoints: a resumed run continues exactly; checkpoints of another problem or with invalid values
are refused without changing anything; everything loads with ``weights_only=True``."""

import io

import pytest
import torch
import torch.nn.functional as F

from optimlab.constrained import (
    ConstrainedOptimizer,
    Constraint,
    MultiplicativeUpdater,
    NuPI,
    Problem,
    State,
    Violation,
)
from optimlab.errors import OptimlabError

N, D = 64, 6
DATA = torch.Generator().manual_seed(0)
X, Y = torch.randn(N, D, generator=DATA), torch.randint(0, 3, (N,), generator=DATA)


def build(seed: int, scheme: str = "simultaneous"):
    """A model with four kinds of constraint groups, Adam (amsgrad) primal, NuPI and SGD duals."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(D, 3)
    lam_model = torch.nn.Linear(2, 1)

    def compute(step: int):
        idx = torch.arange(step % 4, N, 4)[:16]
        logits = model(X[idx])
        rows = torch.tensor([step % 3, (step + 1) % 3])
        w = model.weight
        return State(F.cross_entropy(logits, Y[idx]), {
            "norm": w.pow(2).sum() - 0.5,                                     # dense, inequality
            "rows": Violation(w[rows].sum(1) - 0.1, indices=rows),              # indexed, equality
            "bias": model.bias - 0.05,                                           # augmented, per-entry c
            "margin": Violation(0.2 - logits[:2, 0], features=X[idx][:2, :2]),   # implicit
        })

    problem = Problem(compute, {
        "norm": Constraint("<="),
        "rows": Constraint("==", 3, multiplier="indexed"),
        "bias": Constraint("<=", 3, formulation="augmented_lagrangian", penalty=torch.full((3,), 0.5),
                           updater=MultiplicativeUpdater(1.1, tolerance=0.01, max_value=3.0)),
        "margin": Constraint("<=", 2, multiplier=lam_model),
    })
    c = problem.constraints
    opt = ConstrainedOptimizer(
        problem, torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True),
        [NuPI(list(c["norm"].parameters()) + list(c["rows"].parameters()), lr=0.05, Kp=1.0, nu=0.2),
         torch.optim.SGD(list(c["bias"].parameters()) + list(c["margin"].parameters()), lr=0.05,
                         momentum=0.5)],
        scheme,
    )
    return model, problem, opt


def run(opt, start, steps):
    for s in range(start, start + steps):
        opt.step(s)


def everything(model, problem, opt) -> dict:
    return {"model": model.state_dict(), "optimizer": opt.state_dict()}


def assert_same(a, b, path="state"):
    """Recursive exact equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def to_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


@pytest.mark.parametrize("scheme", ["simultaneous", "dual_then_primal", "extragradient"])
def test_round_trip_100_save_100_reload_100(scheme):
    model, problem, opt = build(0, scheme)
    run(opt, 0, 100)
    saved = to_bytes(everything(model, problem, opt))
    run(opt, 100, 100)
    first = everything(model, problem, opt)
    # fresh objects (another initialization), the checkpoint loaded, the same 100 steps
    model2, problem2, opt2 = build(1, scheme)
    ckpt = from_bytes(saved)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optimizer"])
    assert opt2.steps == 100
    run(opt2, 100, 100)
    second = everything(model2, problem2, opt2)
    assert_same(first, second)
    # the state is not trivial: the penalty grew, multipliers moved, both optimizers hold state
    c = problem2.penalties()["bias"]
    assert (c > 0.5).any() and torch.equal(problem2.constraints["bias"].penalty_init, torch.full((3,), 0.5))
    assert problem2.multipliers()["norm"].item() > 0
    assert second["optimizer"]["dual"][0]["state"] and second["optimizer"]["primal"][0]["state"]
    assert opt2.steps == opt.steps == 200


def test_the_problem_state_alone_round_trips_and_moves_with_to():
    _, problem, opt = build(0)
    run(opt, 0, 20)
    state = from_bytes(to_bytes(problem.state_dict()))
    assert {"constraints.bias.penalty", "constraints.bias.penalty_init", "_extra_state"} <= set(state)
    _, fresh, _ = build(1)
    fresh.load_state_dict(state)
    assert_same(problem.state_dict(), fresh.state_dict())
    fresh.double()  # penalties and their initial values move with the module (Cooper's do not)
    bias = fresh.constraints["bias"]
    assert bias.penalty.dtype == bias.penalty_init.dtype == torch.float64


def different(kind="<=", shape=(), formulation="lagrangian", name="norm"):
    return Problem(lambda: None, {name: Constraint(kind, shape, formulation=formulation,
                                                   penalty=1.0 if formulation != "lagrangian" else None)})


@pytest.mark.parametrize("other, message", [
    (different(name="norm2"), r"norm: checkpoint \['inequality', \[\], 'lagrangian', 'dense'\], here absent"),
    (different(shape=(2,)), r"here \['inequality', \[2\], 'lagrangian', 'dense'\]"),
    (different(kind="=="), r"here \['equality', \[\], 'lagrangian', 'dense'\]"),
    (different(formulation="augmented_lagrangian"), "augmented_lagrangian"),
])
def test_a_checkpoint_of_a_different_problem_is_refused(other, message):
    saved = from_bytes(to_bytes(different().state_dict()))
    before = {k: v.clone() for k, v in other.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(OptimlabError, match="different problem .*" + message):
        other.load_state_dict(saved)
    after = {k: v for k, v in other.state_dict().items() if isinstance(v, torch.Tensor)}
    assert_same(before, after)


def test_a_negative_inequality_multiplier_in_a_checkpoint_is_refused():
    model, problem, opt = build(0)
    run(opt, 0, 5)
    ckpt = from_bytes(to_bytes(everything(model, problem, opt)))
    ckpt["optimizer"]["problem"]["constraints.norm.multiplier.weight"] = torch.tensor(-0.1)
    before = problem.multipliers()
    with pytest.raises(OptimlabError, match="negative multipliers for the inequality constraint 'norm'"):
        opt.load_state_dict(ckpt["optimizer"])
    assert_same(before, problem.multipliers())
    # an equality multiplier may be negative
    ckpt["optimizer"]["problem"]["constraints.norm.multiplier.weight"] = torch.tensor(0.1)
    ckpt["optimizer"]["problem"]["constraints.rows.multiplier.weight"] = torch.tensor([-1.0, 0.0, 1.0])
    opt.load_state_dict(ckpt["optimizer"])
    assert problem.multipliers()["rows"].tolist() == [-1.0, 0.0, 1.0]


def test_checkpoints_of_another_optimizer_setup_are_refused():
    model, problem, opt = build(0)
    state = from_bytes(to_bytes(opt.state_dict()))
    _, _, other_scheme = build(0, "extragradient")
    with pytest.raises(OptimlabError, match="scheme 'simultaneous'; this optimizer uses 'extragradient'"):
        other_scheme.load_state_dict(state)
    state["dual"] = state["dual"][:1]
    with pytest.raises(OptimlabError, match="1 dual optimizer"):
        opt.load_state_dict(state)
    with pytest.raises(OptimlabError, match="not a state of an optimlab ConstrainedOptimizer"):
        opt.load_state_dict({"model": model.state_dict()})
    with pytest.raises(OptimlabError, match="not a state of an optimlab constrained Problem"):
        problem.load_state_dict(model.state_dict())
    with pytest.raises(OptimlabError, match="assign=True is not supported"):
        problem.load_state_dict(problem.state_dict(), assign=True)
