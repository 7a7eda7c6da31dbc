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
