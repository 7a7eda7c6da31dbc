"""The nuPI optimizer against its special cases: gradient descent/ascent (Kp = 0) and the optimistic
gradient method (Kp = Ki = 1, nu = 0), and against the PI recursion written out here."""

import io

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
