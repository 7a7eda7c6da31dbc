"""CurvatureScheduler: against the exact flow of a quadratic, the analytic Rayleigh quotient, its own
secant/HVP pair, the per-epoch reduction and replay, and its fallbacks."""

import math

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from torch import nn

from optimlab.errors import OptimlabError
from optimlab.localflow import CurvatureScheduler, EpochLR, epoch_lrs
from optimlab.models import LinearRegression, LogisticRegression

F64 = torch.float64


class Quadratic(nn.Module):
    """l(theta) = 1/2 (theta - c)^T A (theta - c), a model with one parameter vector."""

    def __init__(self, A, c, theta0):
        super().__init__()
        self.A, self.c = A, c
        self.theta = nn.Parameter(theta0.clone())

    def loss(self):
        d = self.theta - self.c
        return 0.5 * d @ self.A @ d


def _quadratic(seed=0, p=5):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=F64))
    eig = torch.logspace(1, -1, p, dtype=F64)
    return Q @ torch.diag(eig) @ Q.T, torch.randn(p, generator=g, dtype=F64), Q, eig


@pytest.mark.parametrize("h", [0.01, 0.5, 50.0])
def test_step_is_the_exact_flow_along_the_gradient(reference, h):
    A, c, _, _ = _quadratic()
    theta0 = torch.zeros(5, dtype=F64)
    model = Quadratic(A, c, theta0)
    opt = torch.optim.SGD(model.parameters(), lr=h)
    sched = CurvatureScheduler(opt)
    sched.step(model.loss)
    opt.step()
    # reference: the flow restricted to the line theta0 - s q, ds/dt = q . grad l(theta0 - s q)
    An, cn = A.numpy(), c.numpy()
    g0 = An @ (theta0.numpy() - cn)
    q = g0 / np.linalg.norm(g0)
    s = reference.integrate(lambda s: np.array([q @ (An @ (theta0.numpy() - s[0] * q - cn))]), [0.0], h)
    assert np.max(np.abs(model.theta.detach().numpy() - (theta0.numpy() - s[0] * q))) < 1e-8


def test_on_an_eigendirection_the_step_is_the_full_exact_flow():
    A, c, Q, eig = _quadratic(seed=1)
    theta0 = c + 0.7 * Q[:, 2]  # theta0 - c along one eigenvector: the gradient flow stays on that line
    model = Quadratic(A, c, theta0)
    opt = torch.optim.SGD(model.parameters(), lr=3.0)
    sched = CurvatureScheduler(opt)
    sched.step(model.loss)
    opt.step()
    exact = c.numpy() + expm(-3.0 * A.numpy()) @ (theta0 - c).numpy()
    assert np.max(np.abs(model.theta.detach().numpy() - exact)) < 1e-12
    assert abs(sched.last_curvature - float(eig[2])) < 1e-12


def _lls_batch(seed=0, b=16, p=6):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(b, p, generator=g, dtype=F64) * torch.logspace(0, -1, p, dtype=F64)
    y = torch.randn(b, generator=g, dtype=F64)
    torch.manual_seed(seed)
    return X, y, LinearRegression((p,)).double()


@pytest.mark.parametrize("method", ["hvp", "secant"])
def test_curvature_is_the_rayleigh_quotient_for_least_squares(method):
    X, y, model = _lls_batch()
    sched = CurvatureScheduler(torch.optim.SGD(model.parameters(), lr=1.0), method=method)
    theta = model.linear.weight.detach()[0].clone()
    sched.step(lambda: 0.5 * torch.mean((model(X) - y) ** 2))
    g = X.T @ (X @ theta - y) / len(y)
    q = g / g.norm()
    rayleigh = float(q @ (X.T @ X / len(y)) @ q)
    assert abs(sched.last_curvature - rayleigh) < 1e-9 * rayleigh
    assert torch.allclose(model.linear.weight.grad[0], g, atol=1e-14)  # .grad holds the batch gradient
    assert math.isclose(sched.get_last_lr()[0], (1 - math.exp(-rayleigh)) / rayleigh, rel_tol=1e-12)


def test_secant_agrees_with_hvp_on_logistic_regression(mnist01):
    x, y = mnist01[0][:32], mnist01[1][:32]
    torch.manual_seed(0)
    model = LogisticRegression((1, 28, 28), 2).double()
    closure = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    lams = {}
    for method in ("hvp", "secant"):
        sched = CurvatureScheduler(torch.optim.SGD(model.parameters(), lr=1.0), method=method, eps=1e-6)
        sched.step(closure)
        lams[method] = sched.last_curvature
    assert lams["hvp"] > 0 and abs(lams["secant"] - lams["hvp"]) < 1e-5 * lams["hvp"]


def test_momentum_every_k_records_and_replay():
    X, y, model = _lls_batch(seed=2, b=40)
    h, k, steps_per_epoch = 0.8, 3, 5
    opt = torch.optim.SGD(model.parameters(), lr=h, momentum=0.9)
    sched = CurvatureScheduler(opt, every=k)
    for _epoch in range(2):
        for i in range(steps_per_epoch):
            xb, yb = X[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8]
            sched.step(lambda xb=xb, yb=yb: 0.5 * torch.mean((model(xb) - yb) ** 2))
            assert opt.param_groups[0]["lr"] == sched.get_last_lr()[0] < h
            opt.step()
    events = [r["event"] for r in sched.records]
    assert events == ["measured" if s % k == 0 else "kept" for s in range(10)]
    for r in sched.records:
        if r["event"] == "measured":
            lam = r["curvature"]
            assert math.isclose(r["lr"], -math.expm1(-h * lam) / lam, rel_tol=1e-12)
    hs = sched.epoch_lrs(steps_per_epoch)
    lrs = [r["lr"] for r in sched.records]
    assert hs == [float(np.median(lrs[:5])), float(np.median(lrs[5:]))]
    # plain SGD replays one lr per epoch
    replay = torch.optim.SGD(LinearRegression((6,)).double().parameters(), lr=123.0)
    epoch_sched = EpochLR(replay, hs)
    seen = []
    for _ in range(3):
        seen.append(replay.param_groups[0]["lr"])
        replay.step()
        epoch_sched.step()
    assert seen == [hs[0], hs[1], hs[1]]


def test_epoch_reduction_is_the_median_of_each_block():
    assert epoch_lrs([1.0, 5.0, 2.0, 4.0, 4.0, 9.0, 7.0], 3) == [2.0, 4.0, 7.0]
    with pytest.raises(OptimlabError, match="steps_per_epoch"):
        epoch_lrs([1.0], 0)


class _SquareWithNaNCurvature(torch.autograd.Function):
    """x^2 whose gradient 2x is right but whose second derivative is NaN (a broken double backward)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * _TwoXNaNGrad.apply(x)


class _TwoXNaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def test_nan_curvature_falls_back_to_h_and_is_recorded():
    theta = nn.Parameter(torch.tensor([1.0, -2.0], dtype=F64))
    opt = torch.optim.SGD([theta], lr=0.25)
    sched = CurvatureScheduler(opt)
    sched.step(lambda: _SquareWithNaNCurvature.apply(theta).sum())
    assert sched.records[-1]["event"] == "nan-curvature" and sched.get_last_lr() == [0.25]
    opt.step()
    assert torch.equal(theta.detach(), torch.tensor([0.5, -1.0], dtype=F64))  # SGD with lr = h
    # the secant sees a NaN loss at theta + eps q: same fallback
    calls = []

    def closure():
        calls.append(1)
        return (theta * theta).sum() * (1.0 if len(calls) == 1 else float("nan"))

    secant = CurvatureScheduler(torch.optim.SGD([theta], lr=0.25), method="secant")
    secant.step(closure)
    assert secant.records[-1]["event"] == "nan-curvature" and secant.get_last_lr() == [0.25]


def test_non_positive_curvature_gives_h():
    theta = nn.Parameter(torch.tensor([1.0, 2.0], dtype=F64))
    sched = CurvatureScheduler(torch.optim.SGD([theta], lr=0.5))
    sched.step(lambda: -(theta * theta).sum() + theta[0])  # concave: lambda = -2
    assert sched.last_curvature == pytest.approx(-2.0, rel=1e-14) and sched.get_last_lr() == [0.5]
    assert sched.records[-1]["event"] == "measured"


def test_zero_gradient_falls_back_to_h():
    theta = nn.Parameter(torch.zeros(3, dtype=F64))
    sched = CurvatureScheduler(torch.optim.SGD([theta], lr=0.5))
    sched.step(lambda: (theta * theta).sum())
    assert sched.records[-1]["event"] == "zero-gradient" and sched.get_last_lr() == [0.5]


def test_state_dict_round_trip():
    X, y, model = _lls_batch()
    sched = CurvatureScheduler(torch.optim.SGD(model.parameters(), lr=0.3), every=2)
    for _ in range(3):
        sched.step(lambda: 0.5 * torch.mean((model(X) - y) ** 2))
    other = CurvatureScheduler(torch.optim.SGD(model.parameters(), lr=9.0))
    other.load_state_dict(sched.state_dict())
    assert other.state_dict() == sched.state_dict() and other.step_count == 3 and other.every == 2


@pytest.mark.parametrize("kwargs,match", [
    ({"every": 0}, "every"), ({"method": "bfgs"}, "unknown method"), ({"eps": -1.0}, "eps"),
    ({"guard": "trust"}, "unknown guard 'trust'; valid: armijo, none"), ({"armijo": 0.0}, r"in \(0, 1\)"),
    ({"armijo": 1.0}, r"in \(0, 1\)"), ({"armijo": True}, "armijo"), ({"backtracks": 0}, "integer >= 1"),
    ({"backtracks": 2.5}, "backtracks"),
])
def test_bad_settings_are_refused(kwargs, match):
    theta = nn.Parameter(torch.zeros(2))
    with pytest.raises(OptimlabError, match=match):
        CurvatureScheduler(torch.optim.SGD([theta], lr=0.1), **kwargs)


@pytest.mark.parametrize("h", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_flow_time_is_refused(h):
    theta = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([theta], lr=0.1)
    opt.param_groups[0]["lr"] = h
    with pytest.raises(OptimlabError, match="finite and > 0"):
        CurvatureScheduler(opt)


@pytest.mark.parametrize("method", ["hvp", "secant"])
def test_any_model_mlp_at_a_huge_lr_where_plain_sgd_diverges(mnist01, method):
    from optimlab.models import MLP

    x, y = mnist01[0][:256].float(), mnist01[1][:256]

    def train(schedule):
        torch.manual_seed(0)
        model = MLP((1, 28, 28), 2, hidden=32)
        opt = torch.optim.SGD(model.parameters(), lr=50.0, momentum=0.5 if schedule else 0.0)
        sched = CurvatureScheduler(opt, every=2, method=method) if schedule else None
        for i in range(0, 256, 32):
            closure = lambda i=i: nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32])  # noqa: E731
            if sched:
                sched.step(closure)
            else:
                opt.zero_grad()
                closure().backward()
            opt.step()
        with torch.no_grad():
            return float(nn.functional.cross_entropy(model(x), y)), sched

    loss, sched = train(True)
    plain, _ = train(False)
    assert loss < 0.1 and all(0 < r["lr"] < 50.0 for r in sched.records)
    assert not plain < 1.0  # plain SGD at lr 50 is far off (or NaN)


class Hyperbola(nn.Module):
    """l(theta) = sqrt(1 + theta^2): a gradient that tends to sign(theta), a curvature (1 + theta^2)^-1.5
    that collapses away from 0 (as a saturated logistic loss's does)."""

    def __init__(self, theta0: float):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([theta0], dtype=F64))

    def loss(self):
        return torch.sqrt(1 + self.theta ** 2).sum()


def test_the_guard_keeps_a_collapsing_curvature_finite():
    def run(guard):
        model = Hyperbola(2.0)
        sched = CurvatureScheduler(torch.optim.SGD(model.parameters(), lr=100.0), guard=guard)
        losses = []
        for _ in range(12):
            losses.append(float(sched.step(model.loss)))
            torch.optim.SGD.step(sched.optimizer)
        return losses, sched.records, float(model.theta.detach())

    # unguarded the rate is about min(1/lambda, h) = min((1 + theta^2)^1.5, 100): theta 2 -> -8 -> 82.3
    # -> -17.7 -> ..., bouncing between the walls, the loss 4x to 37x the initial one for good
    losses, records, theta = run("none")
    assert losses[1] > 3.5 * losses[0] and all(v > 3.5 * losses[0] for v in losses[1:])
    # guarded, each step falls by at least a quarter of the linear model's decrease: monotone, to the
    # minimum l(0) = 1
    losses, records, theta = run("armijo")
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] == pytest.approx(1, abs=1e-9)
    assert abs(theta) < 1e-4
    assert records[0]["event"] == "guarded" and records[0]["backtracks"] >= 1
    assert all(math.isfinite(r["lr"]) and r["lr"] <= 100.0 for r in records)
    # the first rate, by hand: f_h(lambda) at theta = 2 (lambda = 5^-1.5), halved until the check holds
    lam, g = 5 ** -1.5, 2 / math.sqrt(5)
    lr = (1 - math.exp(-100 * lam)) / lam
    halvings = 0
    while math.sqrt(1 + (2 - lr * g) ** 2) > math.sqrt(5) - 0.25 * lr * g * g:
        lr, halvings = lr / 2, halvings + 1
    assert records[0]["backtracks"] == halvings and records[0]["lr"] == pytest.approx(lr, rel=1e-12)


@pytest.mark.parametrize("h", [0.5, 100.0])
def test_on_a_quadratic_the_guard_never_bites(h):
    def run(guard):
        X, y, model = _lls_batch()
        sched = CurvatureScheduler(torch.optim.SGD(model.parameters(), lr=h), every=1, guard=guard)
        for _ in range(20):
            sched.step(lambda: 0.5 * torch.mean((model(X) - y) ** 2))
            sched.optimizer.step()
        return [p.detach().clone() for p in model.parameters()], sched.records

    guarded, records = run("armijo")
    plain, _ = run("none")
    assert {r["event"] for r in records} == {"measured"} and all(r["backtracks"] == 0 for r in records)
    assert all(torch.equal(a, b) for a, b in zip(guarded, plain, strict=True))


def test_the_check_leaves_dropout_draws_and_batchnorm_statistics_as_they_were(mnist01):
    x, y = mnist01[0][:256].float(), mnist01[1][:256]

    def run(guard):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.BatchNorm1d(32), nn.ReLU(),
                              nn.Dropout(0.5), nn.Linear(32, 2))
        sched = CurvatureScheduler(torch.optim.SGD(model.parameters(), lr=1e-3), every=2, guard=guard,
                                   model=model)
        for i in range(0, 256, 32):
            sched.step(lambda i=i: nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32]))
            sched.optimizer.step()
        return model.state_dict(), torch.get_rng_state()

    (guarded, rng), (plain, plain_rng) = run("armijo"), run("none")
    assert all(torch.equal(guarded[k], plain[k]) for k in plain) and torch.equal(rng, plain_rng)


def test_a_checkpoint_from_before_the_guard_resumes_unguarded():
    X, y, model = _lls_batch()
    sched = CurvatureScheduler(torch.optim.SGD(model.parameters(), lr=0.3))
    old = {k: v for k, v in sched.state_dict().items() if k not in ("guard", "armijo", "backtracks")}
    sched.load_state_dict(old)
    assert sched.guard == "none"
