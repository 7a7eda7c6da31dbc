"""The nuPI optimizer against its special cases: gradient descent/ascent (Kp = 0) and the optimistic
gradient method (Kp = Ki = 1, nu = 0), and against the PI recursion written out here."""

import io
import warnings

import pytest
import torch

from optimlab.constrained import ConstrainedOptimizer, Constraint, NuPI, Problem
from optimlab.errors import OptimlabError


def gradients(steps, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(steps)]


def drive(opt, params, grads_per_param):
    """Feed the given gradients, one step at a time; return the parameter values after each step."""
    trace = []
    for step_grads in zip(*grads_per_param, strict=True):
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
        trace.append([p.detach().clone() for p in params])
    return trace


@pytest.mark.parametrize("maximize", [False, True])
def test_kp_zero_is_sgd_exactly_with_several_groups(maximize):
    a0, b0 = torch.randn(3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    grads = [gradients(6, (3,), seed=1), gradients(6, (2, 2), seed=2)]
    ours = [torch.nn.Parameter(a0.clone()), torch.nn.Parameter(b0.clone())]
    ref = [torch.nn.Parameter(a0.clone()), torch.nn.Parameter(b0.clone())]
    nupi = NuPI([{"params": [ours[0]], "lr": 0.1}, {"params": [ours[1]], "lr": 0.03}], Kp=0.0, Ki=1.0,
                maximize=maximize)
    sgd = torch.optim.SGD([{"params": [ref[0]], "lr": 0.1}, {"params": [ref[1]], "lr": 0.03}], lr=0.1,
                          maximize=maximize)
    for got, want in zip(drive(nupi, ours, grads), drive(sgd, ref, grads), strict=True):
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_kp_one_is_the_optimistic_gradient_method():
    # p_{t+1} = p_t + lr (2 g_t - g_{t-1}) when maximising, with g_{-1} = g_0 (init "sgd")
    p0 = torch.randn(4, dtype=torch.float64)
    grads = gradients(8, (4,))
    p = torch.nn.Parameter(p0.clone())
    trace = drive(NuPI([p], lr=0.05, Kp=1.0, Ki=1.0, maximize=True), [p], [grads])
    want, previous = p0.clone(), grads[0]
    for t, g in enumerate(grads):
        want = want + 0.05 * (2 * g - previous)
        previous = g
        torch.testing.assert_close(trace[t][0], want, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("init", ["sgd", "zeros"])
def test_the_pi_recursion_with_smoothing_per_group(init):
    # xi_t = nu xi_{t-1} + (1 - nu) e_t; p <- p - lr (Ki e_t + Kp (xi_t - xi_{t-1})), e = gradient
    # (+ weight decay * p); xi_{-1} = e_0 ("sgd") or 0 ("zeros"). Two groups, different gains.
    settings = [dict(lr=0.1, Kp=0.7, Ki=0.9, nu=0.3, weight_decay=0.0),
                dict(lr=0.02, Kp=2.0, Ki=1.0, nu=0.8, weight_decay=0.1)]
    starts = [torch.randn(3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    grads = [gradients(7, (3,), seed=3), gradients(7, (5,), seed=4)]
    params = [torch.nn.Parameter(s.clone()) for s in starts]
    opt = NuPI([{"params": [p], **kw} for p, kw in zip(params, settings, strict=True)], init=init)
    trace = drive(opt, params, grads)
    for i, kw in enumerate(settings):
        p, xi_prev = starts[i].clone(), None
        for t, g in enumerate(grads[i]):
            e = g + kw["weight_decay"] * p
            if xi_prev is None:
                xi_prev = e if init == "sgd" else torch.zeros_like(e)
            xi = kw["nu"] * xi_prev + (1 - kw["nu"]) * e
            p = p - kw["lr"] * (kw["Ki"] * e + kw["Kp"] * (xi - xi_prev))
            xi_prev = xi
            torch.testing.assert_close(trace[t][i], p, rtol=1e-13, atol=1e-14)


def test_first_step_of_each_init():
    for init, factor in (("sgd", 1.0), ("zeros", 1.0 + 0.5 * (1 - 0.5))):
        p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        p.grad = torch.ones(1, dtype=torch.float64)
        NuPI([p], lr=1.0, Kp=0.5, Ki=1.0, nu=0.5, init=init).step()
        assert p.item() == -factor  # lr (Ki + Kp (1 - nu)) e0 for zeros, lr Ki e0 for sgd


def test_state_dict_round_trip_continues_exactly():
    grads = gradients(10, (3,))
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = NuPI([p], lr=0.1, Kp=1.0, nu=0.5)
    drive(opt, [p], [grads[:5]])
    buffer = io.BytesIO()
    torch.save({"p": p.detach().clone(), "opt": opt.state_dict()}, buffer)
    rest = drive(opt, [p], [grads[5:]])
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    q = torch.nn.Parameter(saved["p"])
    fresh = NuPI([q], lr=0.1, Kp=1.0, nu=0.5)
    fresh.load_state_dict(saved["opt"])
    again = drive(fresh, [q], [grads[5:]])
    assert all(torch.equal(a[0], b[0]) for a, b in zip(rest, again, strict=True))


def test_nupi_as_the_dual_optimizer_is_set_to_ascend():
    x = torch.nn.Parameter(torch.tensor(0.5))
    problem = Problem(lambda: (x * x, {"g": 1 - x}), {"g": Constraint("<=")})
    nupi = NuPI(problem.dual_parameters(), lr=0.5)  # maximize=False by default: set by the optimizer
    ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=0.25), nupi).step()
    assert nupi.param_groups[0]["maximize"] is True
    assert problem.multipliers()["g"].item() == 0.25  # 0 + 0.5 * g(0.5): ascent


@pytest.mark.parametrize("kw, message", [
    (dict(lr=-1.0), "lr must be a number >= 0"),
    (dict(nu=1.0), r"nu must be in \[0, 1\)"),
    (dict(Kp=-0.1), "Kp must be a number >= 0"),
    (dict(init="ones"), "unknown init 'ones'; valid: sgd, zeros"),
])
def test_bad_hyperparameters_are_refused(kw, message):
    with pytest.raises(OptimlabError, match=message):
        NuPI([torch.nn.Parameter(torch.zeros(1))], **kw)


# Gains per entry (tensors) and sparse gradients.

def by_hand(p0, grads, *, lr, kp, ki, nu, wd=0.0, init="sgd", maximize=False):
    """One entry's trajectory in Python floats: grads has a number per step, None where the step does
    not observe the entry. Returns (value, xi) after each step (xi None before the first observation)."""
    p, prev, out = p0, None, []
    for g in grads:
        if g is not None:
            e = (-g if maximize else g) + wd * p
            if prev is None:
                prev = e if init == "sgd" else 0.0
            xi = nu * prev + (1 - nu) * e
            p = p - lr * (ki * e + kp * (xi - prev))
            prev = xi
        out.append((p, prev))
    return out


def at(gain, shape, index):
    """The gain of one entry of a parameter of the given shape: a number, or a tensor broadcast to it."""
    return gain if isinstance(gain, float) else gain.expand(shape)[index].item()


def np_indices(shape):
    grid = torch.cartesian_prod(*[torch.arange(n) for n in shape]).reshape(-1, len(shape))
    return [tuple(ix) for ix in grid.tolist()]


TABLE = (3, 4)


@pytest.mark.parametrize("init", ["sgd", "zeros"])
@pytest.mark.parametrize("maximize", [False, True])
def test_tensor_gains_follow_the_per_entry_formula(init, maximize):
    # group 0: a (3, 4) table, Kp one per entry (some 0), Ki one per row (3, 1), weight decay;
    # group 1: a (4,) vector, Kp a number, Ki one per entry, no smoothing.
    g = torch.Generator().manual_seed(5)
    kp0 = torch.rand(TABLE, generator=g, dtype=torch.float64) * 2
    kp0[0, 1] = kp0[2, 3] = 0.0
    ki0 = torch.tensor([[0.5], [1.0], [2.0]], dtype=torch.float64)
    ki1 = torch.tensor([1.0, 0.0, 0.3, 1.7], dtype=torch.float64)
    settings = [dict(lr=0.1, Kp=kp0, Ki=ki0, nu=0.3, weight_decay=0.2), dict(lr=0.05, Kp=0.8, Ki=ki1)]
    starts = [torch.randn(TABLE, generator=g, dtype=torch.float64), torch.randn(4, generator=g,
                                                                               dtype=torch.float64)]
    grads = [gradients(6, TABLE, seed=6), gradients(6, (4,), seed=7)]
    params = [torch.nn.Parameter(s.clone()) for s in starts]
    opt = NuPI([{"params": [p], **kw} for p, kw in zip(params, settings, strict=True)], init=init,
               maximize=maximize)
    trace = drive(opt, params, grads)
    for i, kw in enumerate(settings):
        shape = starts[i].shape
        for index in np_indices(shape):
            want = by_hand(starts[i][index].item(), [gr[index].item() for gr in grads[i]], lr=kw["lr"],
                           kp=at(kw["Kp"], shape, index), ki=at(kw["Ki"], shape, index),
                           nu=kw.get("nu", 0.0), wd=kw.get("weight_decay", 0.0), init=init, maximize=maximize)
            for t, (value, _) in enumerate(want):
                assert trace[t][i][index].item() == pytest.approx(value, rel=1e-12, abs=1e-13)
            xi = opt.state[params[i]]["xi"][index].item()
            assert xi == pytest.approx(want[-1][1], rel=1e-12, abs=1e-13)


@pytest.mark.parametrize("init", ["sgd", "zeros"])
@pytest.mark.parametrize("maximize", [False, True])
def test_tensor_gains_equal_one_scalar_instance_per_entry_bit_for_bit(init, maximize):
    g = torch.Generator().manual_seed(8)
    kp = torch.rand(2, 3, generator=g, dtype=torch.float64) * 2
    kp[1, 0] = 0.0
    ki = torch.rand(2, 3, generator=g, dtype=torch.float64) + 0.5
    start = torch.randn(2, 3, generator=g, dtype=torch.float64)
    grads = gradients(7, (2, 3), seed=9)
    kw = dict(lr=0.07, nu=0.4, weight_decay=0.05, init=init, maximize=maximize)
    p = torch.nn.Parameter(start.clone())
    opt = NuPI([p], Kp=kp, Ki=ki, **kw)
    trace = drive(opt, [p], [grads])
    for index in np_indices((2, 3)):
        q = torch.nn.Parameter(start[index].reshape(1).clone())
        alone = NuPI([q], Kp=kp[index].item(), Ki=ki[index].item(), **kw)
        for t, value in enumerate(drive(alone, [q], [[gr[index].reshape(1) for gr in grads]])):
            assert torch.equal(trace[t][0][index].reshape(1), value[0])
        assert torch.equal(opt.state[p]["xi"][index].reshape(1), alone.state[q]["xi"])


def test_tensor_gains_are_cast_to_the_parameters_dtype():
    grads = gradients(4, (3,), seed=10)
    kp = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    runs = []
    for gain in (kp, kp.float()):
        p = torch.nn.Parameter(torch.ones(3))
        runs.append(drive(NuPI([p], lr=0.1, Kp=gain, nu=0.2), [p], [[gr.float() for gr in grads]]))
    assert all(torch.equal(a[0], b[0]) and a[0].dtype == torch.float32 for a, b in zip(*runs, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gains_on_the_cpu_serve_parameters_on_the_gpu():
    kp, ki = torch.tensor([[0.5], [1.0], [2.0]]), torch.tensor([1.0, 0.5])
    idx = [torch.tensor([0, 2, 2]), torch.tensor([1]), torch.tensor([0, 1, 2])]
    out = []
    for device in ("cpu", "cuda"):
        table = torch.nn.Parameter(torch.zeros(3, 2, device=device))
        vec = torch.nn.Parameter(torch.zeros(2, device=device))
        opt = NuPI([{"params": [table], "Kp": kp}, {"params": [vec], "Ki": ki}], lr=0.1, nu=0.3)
        for rows in idx:
            opt.zero_grad()
            (torch.nn.functional.embedding(rows.to(device), table, sparse=True).sum() + vec.pow(2).sum()
             - vec.sum()).backward()
            opt.step()
        out.append((table.detach().cpu(), vec.detach().cpu(), opt.state[table]["xi"].cpu()))
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def cooper_nupi():
    """Cooper's nuPI and its init types (the test is skipped without Cooper)."""
    optim = pytest.importorskip("cooper", minversion="1.0").optim
    return optim.nuPI, optim.nuPIInitType


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("ki_shape", [TABLE, (4,)])
def test_tensor_gains_against_cooper_zeros_init(maximize, ki_shape):
    # Cooper takes tensor gains on dense gradients (one group); its "zeros" init is ours. Its weight decay
    # is another rule (outside the controller), so none here.
    nuPI, init_type = cooper_nupi()
    g = torch.Generator().manual_seed(11)
    kp = torch.rand(TABLE, generator=g, dtype=torch.float64) * 2
    ki = torch.rand(ki_shape, generator=g, dtype=torch.float64) + 0.5
    start = torch.randn(TABLE, generator=g, dtype=torch.float64)
    grads = gradients(8, TABLE, seed=12)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    a = NuPI([ours], lr=0.1, Kp=kp, Ki=ki, nu=0.4, init="zeros", maximize=maximize)
    b = nuPI([theirs], lr=0.1, Kp=kp, Ki=ki, ema_nu=0.4, init_type=init_type.ZEROS, maximize=maximize)
    for x, y in zip(drive(a, [ours], [grads]), drive(b, [theirs], [grads]), strict=True):
        torch.testing.assert_close(x[0], y[0], rtol=1e-13, atol=1e-14)
    # Cooper smooths the gradient, we smooth the error (the negated gradient when maximising)
    sign = -1.0 if maximize else 1.0
    torch.testing.assert_close(a.state[ours]["xi"], sign * b.state[theirs]["xi"], rtol=1e-13, atol=1e-14)


def test_where_cooper_differs_dense_sgd_init_second_step():
    # Same first step (plain gradient descent); Cooper then keeps xi_0 = 0 where we keep xi_0 = e_0, so
    # its second step has the P term Kp (1 - nu) e_1 where ours has Kp (1 - nu) (e_1 - e_0).
    nuPI, init_type = cooper_nupi()
    kp, ki = torch.tensor([0.5, 2.0], dtype=torch.float64), torch.tensor([1.0, 0.25], dtype=torch.float64)
    grads = [torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([3.0, 5.0], dtype=torch.float64)]
    ours, theirs = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)), torch.nn.Parameter(
        torch.zeros(2, dtype=torch.float64))
    a = drive(NuPI([ours], lr=1.0, Kp=kp, Ki=ki, nu=0.5), [ours], [grads])
    b = drive(nuPI([theirs], lr=1.0, Kp=kp, Ki=ki, ema_nu=0.5, init_type=init_type.SGD), [theirs], [grads])
    assert torch.equal(a[0][0], b[0][0])
    assert torch.equal(a[0][0], -ki * grads[0])
    assert torch.equal(a[1][0] - b[1][0], kp * 0.5 * grads[0])


# Sparse gradients: a (6, 3) table of which each step observes some rows (with repeats).
ROWS = [[0, 2, 2, 5], [1, 2], [4, 4, 4], [0, 5, 3, 0], [2], [0, 1, 2, 3, 4, 5], [3, 3]]


def upstream(steps, seed):
    """Per step, the gradient of each looked-up row: multiples of 1/4, so their sums are exact in any
    order (the coalesced gradient is then the hand-summed one bit for bit)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(-8, 9, (len(rows), 3), generator=g).double() / 4 for rows in steps]


def table_gain(kind, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "number":
        return 0.7
    shape = (6, 3) if kind == "per entry" else (6, 1)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 2


def embedding_step(opt, table, rows, u):
    opt.zero_grad()
    (torch.nn.functional.embedding(torch.tensor(rows), table, sparse=True) * u).sum().backward()
    assert table.grad.is_sparse
    opt.step()


def row_gain(gain, r):
    return gain if isinstance(gain, float) else gain[r].clone()


@pytest.mark.parametrize("gains", ["number", "per entry", "per row"])
@pytest.mark.parametrize("init", ["sgd", "zeros"])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_sparse_rows_observed_equal_dense_nupi_on_the_rows_alone(gains, init, maximize, wd):
    kp, ki = table_gain(gains, 13), table_gain(gains, 14)
    ki = ki if isinstance(ki, float) else ki + 0.5
    kw = dict(lr=0.1, nu=0.3, weight_decay=wd, init=init, maximize=maximize)
    start = torch.randn(6, 3, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    us = upstream(ROWS, 16)
    table = torch.nn.Parameter(start.clone())
    opt = NuPI([table], Kp=kp, Ki=ki, **kw)
    # the truth: one dense NuPI per row, stepped only when the row is observed, its gradient summed by hand
    alone = [torch.nn.Parameter(start[r].clone()) for r in range(6)]
    dense = [NuPI([alone[r]], Kp=row_gain(kp, r), Ki=row_gain(ki, r), **kw) for r in range(6)]
    seen = set()
    for rows, u in zip(ROWS, us, strict=True):
        before = table.detach().clone()
        state_before = {k: v.clone() for k, v in opt.state[table].items()}
        embedding_step(opt, table, rows, u)
        for r in set(rows):
            alone[r].grad = u[torch.tensor(rows) == r].sum(0)
            dense[r].step()
        seen |= set(rows)
        state = opt.state[table]
        for r in range(6):
            if r in rows:
                assert torch.equal(table[r], alone[r])
                assert torch.equal(state["xi"][r], dense[r].state[alone[r]]["xi"])
            else:  # not observed: value and state untouched
                assert torch.equal(table[r], before[r])
                for k, v in state_before.items():
                    assert torch.equal(state[k][r], v[r])
                if not state_before:
                    assert torch.equal(state["xi"][r], torch.zeros(3, dtype=torch.float64))
        if init == "sgd":
            assert state["observed"].dtype == torch.bool
            assert state["observed"].all(1).tolist() == [r in seen for r in range(6)]
            assert state["observed"].any(1).tolist() == [r in seen for r in range(6)]
        else:
            assert set(state) == {"xi"}


def test_sparse_duplicates_are_summed_first():
    # rows 1, 3, 1 with values a, b, c (uncoalesced): row 1 sees a + c
    values = torch.tensor([[0.3, -1.0], [2.0, 0.5], [0.4, 0.25]], dtype=torch.float64)
    grad = torch.sparse_coo_tensor(torch.tensor([[1, 3, 1]]), values, (4, 2), check_invariants=True)
    assert not grad.is_coalesced()
    p = torch.nn.Parameter(torch.ones(4, 2, dtype=torch.float64))
    q = torch.nn.Parameter(torch.ones(4, 2, dtype=torch.float64))
    a, b = (NuPI([x], lr=0.5, Kp=1.5, Ki=1.0, nu=0.25, init="zeros") for x in (p, q))
    for _ in range(2):
        p.grad, q.grad = grad.clone(), grad.coalesce()
        a.step()
        b.step()
        assert torch.equal(p, q) and torch.equal(a.state[p]["xi"], b.state[q]["xi"])
    for r, summed in ((1, values[0] + values[2]), (3, values[1])):
        for j in range(2):
            want = by_hand(1.0, [summed[j].item()] * 2, lr=0.5, kp=1.5, ki=1.0, nu=0.25, init="zeros")
            assert p[r, j].item() == pytest.approx(want[-1][0], rel=1e-14)
            assert a.state[p]["xi"][r, j].item() == pytest.approx(want[-1][1], rel=1e-14)
    assert torch.equal(p[0], torch.ones(2, dtype=torch.float64)) and torch.equal(p[2], p[0])


def coo(rows, values, shape):
    """A sparse gradient of the given rows (one number each) of a (n, 1) table."""
    return torch.sparse_coo_tensor(torch.tensor([rows], dtype=torch.long),
                                   torch.tensor(values, dtype=torch.float64).reshape(-1, 1), shape,
                                   check_invariants=True)


def test_sparse_first_observation_of_a_row_is_plain_gradient_descent():
    # lr 0.5, Kp 2, Ki 1, nu 0.5, init "sgd", a (3, 1) table at 0; every number below is exact.
    p = torch.nn.Parameter(torch.zeros(3, 1, dtype=torch.float64))
    opt = NuPI([p], lr=0.5, Kp=2.0, Ki=1.0, nu=0.5)

    def step(rows, values):
        p.grad = coo(rows, values, (3, 1))
        opt.step()
        return p.detach().flatten().tolist(), opt.state[p]["xi"].flatten().tolist()

    # row 0 first seen: p = -0.5 * 1 * 1, xi = e = 1
    assert step([0], [1.0]) == ([-0.5, 0.0, 0.0], [1.0, 0.0, 0.0])
    # row 0: xi = 0.5 + 1 = 1.5, update 2 + 2 * 0.5 = 3; row 1 first seen: -0.5 * 4, xi = 4
    assert step([0, 1], [2.0, 4.0]) == ([-2.0, -2.0, 0.0], [1.5, 4.0, 0.0])
    # an empty sparse gradient changes nothing
    assert step([], []) == ([-2.0, -2.0, 0.0], [1.5, 4.0, 0.0])
    # row 1: xi = 2 + 0 = 2, update 0 + 2 * (2 - 4) = -4
    assert step([1], [0.0]) == ([-2.0, 0.0, 0.0], [1.5, 2.0, 0.0])
    assert opt.state[p]["observed"].flatten().tolist() == [True, True, False]
    # a dense gradient observes every row: row 2's first observation, plain descent; the mask goes
    p.grad = torch.tensor([[1.0], [2.0], [8.0]], dtype=torch.float64)
    opt.step()
    # row 0: xi = 0.75 + 0.5 = 1.25, update 1 + 2 * (-0.25) = 0.5; row 1: xi = 1 + 1 = 2, update 2
    assert p.detach().flatten().tolist() == [-2.25, -1.0, -4.0]
    assert opt.state[p]["xi"].flatten().tolist() == [1.25, 2.0, 8.0] and "observed" not in opt.state[p]
    # the same first steps with init "zeros": a row first seen at step 1 has xi_{-1} = 0
    q = torch.nn.Parameter(torch.zeros(3, 1, dtype=torch.float64))
    zeros = NuPI([q], lr=0.5, Kp=2.0, Ki=1.0, nu=0.5, init="zeros")
    for rows, values in (([0], [1.0]), ([0, 1], [2.0, 4.0])):
        q.grad = coo(rows, values, (3, 1))
        zeros.step()
    # row 0: -0.5 (1 + 2 * 0.5) = -1, then xi 0.5 -> 1.25, update 2 + 1.5 = 3.5; row 1: -0.5 (4 + 2 * 2)
    assert q.detach().flatten().tolist() == [-2.75, -4.0, 0.0]
    assert set(zeros.state[q]) == {"xi"}


@pytest.mark.parametrize("init", ["sgd", "zeros"])
def test_a_fully_sparse_gradient_observes_single_entries(init):
    # sparse in both dimensions of a (3, 4) table: each step observes a random set of entries, each
    # entry follows its own recursion over the steps that observe it (first observation: init's rule)
    g = torch.Generator().manual_seed(23)
    kp = torch.rand(TABLE, generator=g, dtype=torch.float64) * 2
    ki = torch.rand(4, generator=g, dtype=torch.float64) + 0.5
    start = torch.randn(TABLE, generator=g, dtype=torch.float64)
    grads = gradients(8, TABLE, seed=24)
    masks = [torch.rand(TABLE, generator=g) < 0.4 for _ in grads]
    kw = dict(lr=0.1, nu=0.35, wd=0.15, init=init, maximize=True)
    p = torch.nn.Parameter(start.clone())
    opt = NuPI([p], Kp=kp, Ki=ki, lr=0.1, nu=0.35, weight_decay=0.15, init=init, maximize=True)
    trace = []
    for gr, mask in zip(grads, masks, strict=True):
        p.grad = torch.sparse_coo_tensor(mask.nonzero().T, gr[mask], TABLE, check_invariants=True)
        assert p.grad.sparse_dim() == 2
        opt.step()
        trace.append(p.detach().clone())
    for index in np_indices(TABLE):
        want = by_hand(start[index].item(), [gr[index].item() if m[index] else None
                                             for gr, m in zip(grads, masks, strict=True)],
                       kp=at(kp, TABLE, index), ki=at(ki, TABLE, index), **kw)
        for t, (value, _) in enumerate(want):
            assert trace[t][index].item() == pytest.approx(value, rel=1e-12, abs=1e-13)
        xi = 0.0 if want[-1][1] is None else want[-1][1]
        assert opt.state[p]["xi"][index].item() == pytest.approx(xi, rel=1e-12, abs=1e-13)


def test_sparse_with_every_row_equals_dense():
    grads = gradients(5, (4, 3), seed=17)
    kp = torch.rand(4, 1, generator=torch.Generator().manual_seed(18), dtype=torch.float64)
    p, q = (torch.nn.Parameter(torch.ones(4, 3, dtype=torch.float64)) for _ in range(2))
    a, b = (NuPI([x], lr=0.1, Kp=kp, Ki=0.9, nu=0.6, weight_decay=0.1, maximize=True) for x in (p, q))
    for g in grads:
        p.grad, q.grad = g.to_sparse(1), g.clone()
        a.step()
        b.step()
        assert torch.equal(p, q) and torch.equal(a.state[p]["xi"], b.state[q]["xi"])


@pytest.mark.parametrize("init, nu", [("zeros", 0.25), ("sgd", 0.0)])
@pytest.mark.parametrize("maximize", [False, True])
def test_sparse_against_cooper(init, nu, maximize):
    # Cooper's sparse nuPI takes number gains; its "sgd" init agrees with ours for nu = 0 (else its xi
    # after a first observation is (1 - nu) e_0, ours e_0). No weight decay (Cooper's is another rule).
    nuPI, init_type = cooper_nupi()
    start = torch.randn(6, 3, generator=torch.Generator().manual_seed(19), dtype=torch.float64)
    us = upstream(ROWS, 20)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    # gains (and Kp (1 - nu), Ki + Kp (1 - nu)) exact in float32: Cooper makes number gains float32 tensors
    a = NuPI([ours], lr=0.1, Kp=0.75, Ki=1.25, nu=nu, init=init, maximize=maximize)
    b = nuPI([theirs], lr=0.1, Kp=0.75, Ki=1.25, ema_nu=nu, maximize=maximize,
             init_type=init_type.ZEROS if init == "zeros" else init_type.SGD)
    for rows, u in zip(ROWS, us, strict=True):
        embedding_step(a, ours, rows, u)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            embedding_step(b, theirs, rows, u)
        torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-14)
        sign = -1.0 if maximize else 1.0  # Cooper smooths the gradient, we the error
        torch.testing.assert_close(a.state[ours]["xi"], sign * b.state[theirs]["xi"], rtol=1e-13, atol=1e-14)


def test_checkpoint_round_trip_with_tensor_gains_and_sparse_state():
    kp_vec = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    ki_table = torch.tensor([[1.0], [0.5], [2.0], [1.5], [0.0], [1.0]], dtype=torch.float64)
    us = upstream(ROWS, 21)
    grads = gradients(len(ROWS), (3,), seed=22)

    def build(vec, table, kw):
        return NuPI([{"params": [vec], "Kp": kw[0], "nu": 0.3},
                     {"params": [table], "Ki": kw[1], "Kp": 0.9, "nu": 0.5}], lr=0.1)

    def run(opt, vec, table, steps):
        for rows, u, g in steps:
            vec.grad = g.clone()
            embedding_step(opt, table, rows, u)  # zero_grad, backward, step
        return vec.detach().clone(), table.detach().clone()

    steps = list(zip(ROWS, us, grads, strict=True))
    vec, table = torch.nn.Parameter(torch.ones(3, dtype=torch.float64)), torch.nn.Parameter(
        torch.zeros(6, 3, dtype=torch.float64))
    opt = build(vec, table, (kp_vec, ki_table))
    opt.zero_grad()
    run(opt, vec, table, steps[:3])
    buffer = io.BytesIO()
    torch.save({"vec": vec.detach().clone(), "table": table.detach().clone(), "opt": opt.state_dict()},
               buffer)
    want = run(opt, vec, table, steps[3:])
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    vec2, table2 = torch.nn.Parameter(saved["vec"]), torch.nn.Parameter(saved["table"])
    fresh = build(vec2, table2, (0.0, 1.0))  # number gains, replaced by the saved tensors
    fresh.load_state_dict(saved["opt"])
    assert torch.equal(fresh.param_groups[0]["Kp"], kp_vec)
    assert torch.equal(fresh.param_groups[1]["Ki"], ki_table)
    assert fresh.state[table2]["observed"].dtype == torch.bool
    got = run(fresh, vec2, table2, steps[3:])
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_gains_are_copied_at_construction():
    kp = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = NuPI([torch.nn.Parameter(torch.zeros(2))], Kp=kp)
    with torch.no_grad():
        kp.mul_(-1)
    assert opt.param_groups[0]["Kp"].tolist() == [1.0, 2.0] and not opt.param_groups[0]["Kp"].requires_grad


@pytest.mark.parametrize("gain, message", [
    (torch.tensor([1.0, -0.5, 2.0]), r"Kp must be a number >= 0 or a tensor of finite gains >= 0; got a "
                                     r"tensor with 1 negative entries \(smallest -0.5\)"),
    (torch.tensor([1.0, float("nan"), 2.0]), "got a tensor with 1 NaN or infinite entries"),
    (torch.tensor([float("inf"), 1.0, 2.0]), "got a tensor with 1 NaN or infinite entries"),
    (torch.tensor([True, False, True]), "got a tensor of dtype torch.bool"),
    (torch.ones(3, dtype=torch.complex64), "got a tensor of dtype torch.complex64"),
    ([1.0, 2.0, 3.0], r"got \[1.0, 2.0, 3.0\]"),
    (float("inf"), "got inf"),
    (float("nan"), "got nan"),
    (torch.ones(4), r"Kp of shape \(4,\) does not fit a parameter of shape \(3,\) in group 0; valid: a "
                    r"number, or a tensor of the shape of every parameter of its group or broadcastable"),
    (torch.ones(3, 1), r"Kp of shape \(3, 1\) does not fit a parameter of shape \(3,\)"),
])
def test_bad_gains_are_refused(gain, message):
    with pytest.raises(OptimlabError, match=message):
        NuPI([torch.nn.Parameter(torch.zeros(3))], Kp=gain)


def test_a_gains_tensor_must_fit_every_parameter_of_its_group():
    a, b, c = (torch.nn.Parameter(torch.zeros(s)) for s in ((2, 3), (3,), (4,)))
    NuPI([a, b], Ki=torch.ones(3))  # (3,) broadcasts to (2, 3) and (3,)
    with pytest.raises(OptimlabError, match=r"Ki of shape \(2, 3\) does not fit a parameter of shape \(3,\) "
                                            "in group 0.*give parameters of other shapes their own group"):
        NuPI([a, b], Ki=torch.ones(2, 3))
    with pytest.raises(OptimlabError, match=r"Kp of shape \(3,\) does not fit .* shape \(4,\) in group 1"):
        NuPI([{"params": [a, b]}, {"params": [c]}], Kp=torch.ones(3))
    opt = NuPI([{"params": [a, b]}, {"params": [c], "Kp": torch.ones(4)}], Kp=torch.ones(3))
    with pytest.raises(OptimlabError, match=r"Kp of shape \(3,\) does not fit .* shape \(1, 5\) in group 2"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1, 5))]})
    opt.param_groups[1]["Kp"] = torch.ones(2)  # changed after construction: refused when used
    c.grad = torch.ones(4)
    with pytest.raises(OptimlabError, match=r"Kp of shape \(2,\) does not fit .* shape \(4,\) in group 1"):
        opt.step()


def test_a_checkpoint_with_bad_gains_is_refused():
    p = torch.nn.Parameter(torch.zeros(3))
    saved = NuPI([p], Kp=torch.ones(3)).state_dict()
    saved["param_groups"][0]["Kp"] = torch.ones(5)
    opt = NuPI([p])
    with pytest.raises(OptimlabError, match=r"Kp of shape \(5,\) does not fit a parameter of shape \(3,\)"):
        opt.load_state_dict(saved)
    saved["param_groups"][0]["Kp"] = torch.tensor([1.0, -1.0, 0.0])
    with pytest.raises(OptimlabError, match="1 negative entries"):
        opt.load_state_dict(saved)

