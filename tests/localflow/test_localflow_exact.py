"""ExactFlow, the optimizer: against the full-space flow, against SGD for tiny h, its protocol, bad input."""

import numpy as np
import pytest
import torch
from torch import nn

from optimlab.data import make_lls
from optimlab.errors import OptimlabError
from optimlab.localflow import ExactFlow
from optimlab.models import MLP, LinearRegression, LogisticRegression

F64 = torch.float64


def _lls_model(p, seed=0, bias=False):
    torch.manual_seed(seed)
    return LinearRegression((p,), bias=bias).double()


def test_least_squares_step_is_the_full_space_flow(reference):
    ds = make_lls(n=64, p=10, cond=1e3, seed=1)
    X, y = ds.x_train[:8].double(), ds.y_train[:8].double()
    model = _lls_model(10, bias=True)
    theta0 = torch.cat([model.linear.weight[0], model.linear.bias]).detach().numpy()
    loss = ExactFlow(model, lr=2.0).step(X, y)
    Xa = np.hstack([X.numpy(), np.ones((8, 1))])
    ref = reference.least_squares(Xa, y.numpy(), theta0, 2.0)
    got = torch.cat([model.linear.weight[0], model.linear.bias]).detach().numpy()
    assert np.max(np.abs(got - ref)) < 1e-8
    assert abs(float(loss) - 0.5 * np.mean((Xa @ theta0 - y.numpy()) ** 2)) < 1e-12


@pytest.mark.parametrize("h", [0.05, 10.0])
def test_logreg_on_binary_mnist_is_the_full_space_flow(reference, mnist01, h):
    x, y = mnist01[0][:6], mnist01[1][:6]
    torch.manual_seed(0)
    model = LogisticRegression((1, 28, 28), 2).double()
    W0 = torch.cat([model[1].weight, model[1].bias[:, None]], dim=1).detach().numpy()
    ExactFlow(model, lr=h, rtol=1e-12, atol=1e-14).step(x, y)
    Xa = np.hstack([x.reshape(6, -1).numpy(), np.ones((6, 1))])
    ref = reference.softmax(Xa, y.numpy(), W0, h)
    got = torch.cat([model[1].weight, model[1].bias[:, None]], dim=1).detach().numpy()
    assert np.max(np.abs(got - ref)) < 1e-8


def test_binary_logistic_one_sample_uses_the_closed_form(reference, mnist01):
    x, y = mnist01[0][:1].reshape(1, -1), mnist01[1][:1]
    model = nn.Linear(784, 1).double()
    with torch.no_grad():
        model.weight.mul_(0.1)
    theta0 = torch.cat([model.weight[0], model.bias]).detach().numpy()
    opt = ExactFlow(model, lr=0.3)
    opt.step(x, y)
    assert "ode_steps" not in opt.state[model.weight]  # no ODE was integrated
    ref = reference.logistic(np.hstack([x.numpy(), [[1.0]]]), y.numpy(), theta0, 0.3)
    assert np.max(np.abs(torch.cat([model.weight[0], model.bias]).detach().numpy() - ref)) < 1e-8


def _sgd_difference(make_model, x, y, loss_fn, h):
    a, b = make_model(), make_model()
    ExactFlow(a, lr=h, rtol=1e-12, atol=1e-16).step(x, y)
    sgd = torch.optim.SGD(b.parameters(), lr=h)
    sgd.zero_grad()
    loss_fn(b(x), y).backward()
    sgd.step()
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return max(float((pa - pb).detach().abs().max()) for pa, pb in pairs)


@pytest.mark.parametrize("case", ["lls", "softmax"])
def test_tiny_h_agrees_with_sgd_to_second_order(case, mnist01):
    if case == "lls":
        ds = make_lls(n=64, p=10, seed=2)
        x, y = ds.x_train[:8].double(), ds.y_train[:8].double()
        make = lambda: _lls_model(10, seed=3, bias=True)  # noqa: E731
        loss_fn = lambda out, t: 0.5 * torch.mean((out - t) ** 2)  # noqa: E731
    else:
        x, y = mnist01[0][:8], mnist01[1][:8]

        def make():
            torch.manual_seed(4)
            return LogisticRegression((1, 28, 28), 2).double()

        loss_fn = nn.functional.cross_entropy
    d1 = _sgd_difference(make, x, y, loss_fn, 1e-3)
    d2 = _sgd_difference(make, x, y, loss_fn, 1e-4)
    assert d1 > 0 and 60 < d1 / d2 < 160  # O(h^2): ten times smaller h, a hundred times closer


def test_exact_flow_never_overshoots_where_sgd_diverges():
    ds = make_lls(n=256, p=20, cond=100.0, seed=5)
    x, y = ds.x_train.double(), ds.y_train.double()
    model = _lls_model(20)
    opt = ExactFlow(model, lr=100.0)
    losses = [float(opt.step(x[i:i + 32], y[i:i + 32])) for _ in range(3) for i in range(0, 256, 32)]
    assert all(np.isfinite(losses)) and max(losses[8:]) < 0.3 * losses[0]
    sgd_model = _lls_model(20)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=100.0)
    for i in range(0, 96, 32):
        sgd.zero_grad()
        (0.5 * torch.mean((sgd_model(x[i:i + 32]) - y[i:i + 32]) ** 2)).backward()
        sgd.step()
    assert not float((0.5 * (sgd_model(x) - y) ** 2).mean().detach()) < 1e3  # SGD has blown up (or is NaN)


def test_state_dict_round_trip():
    model = _lls_model(4)
    opt = ExactFlow(model, lr=0.5, rtol=1e-9)
    opt.step(torch.randn(3, 4, dtype=F64), torch.randn(3, dtype=F64))
    other = ExactFlow(_lls_model(4), lr=1.0)
    other.load_state_dict(opt.state_dict())
    assert other.param_groups[0]["lr"] == 0.5 and other.param_groups[0]["rtol"] == 1e-9
    assert other.state[other.layer.weight]["steps"] == 1


@pytest.mark.parametrize("h", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_flow_time_is_refused(h):
    with pytest.raises(OptimlabError, match="finite and > 0"):
        ExactFlow(_lls_model(3), lr=h)
    opt = ExactFlow(_lls_model(3), lr=0.1)
    opt.param_groups[0]["lr"] = h  # e.g. set by a scheduler
    with pytest.raises(OptimlabError, match="finite and > 0"):
        opt.step(torch.randn(2, 3, dtype=F64), torch.randn(2, dtype=F64))


@pytest.mark.parametrize("model", [
    MLP((4,), 3), nn.Sequential(nn.Linear(4, 3), nn.ReLU()), nn.Sequential(nn.Conv1d(1, 1, 1)),
    nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1)),
])
def test_non_linear_models_are_refused(model):
    with pytest.raises(OptimlabError, match="needs a linear model"):
        ExactFlow(model, lr=0.1)


def test_step_without_the_batch_is_refused():
    opt = ExactFlow(_lls_model(3), lr=0.1)
    with pytest.raises(OptimlabError, match=r"opt.step\(x, y\)"):
        opt.step()
    with pytest.raises(OptimlabError, match=r"opt.step\(x, y\)"):
        opt.step(lambda: torch.tensor(0.0))


def test_bad_labels_are_refused():
    model = nn.Linear(3, 4).double()
    with pytest.raises(OptimlabError, match=r"labels must lie in 0\.\.3"):
        ExactFlow(model, lr=0.1).step(torch.randn(2, 3, dtype=F64), torch.tensor([0, 4]))
    with pytest.raises(OptimlabError, match="labels must be 0 or"):
        ExactFlow(nn.Linear(3, 1).double(), lr=0.1).step(torch.randn(2, 3, dtype=F64), torch.tensor([0, 2]))


def test_one_class_softmax_batch_is_handled(reference):
    """One class in the batch: the flow is finite and well defined (no finite minimiser is needed)."""
    torch.manual_seed(6)
    model = nn.Linear(5, 3).double()
    x, y = torch.randn(4, 5, dtype=F64), torch.full((4,), 2)
    W0 = torch.cat([model.weight, model.bias[:, None]], dim=1).detach().numpy()
    before = ExactFlow(model, lr=1.5, rtol=1e-12, atol=1e-14).step(x, y)
    ref = reference.softmax(np.hstack([x.numpy(), np.ones((4, 1))]), y.numpy(), W0, 1.5)
    got = torch.cat([model.weight, model.bias[:, None]], dim=1).detach().numpy()
    assert np.max(np.abs(got - ref)) < 1e-8
    assert float(nn.functional.cross_entropy(model(x), y).detach()) < float(before)


def test_float32_logreg_at_huge_h_stays_float32_and_decreases_the_loss(mnist01):
    x, y = mnist01[0][:64].float(), mnist01[1][:64]
    torch.manual_seed(0)
    model = LogisticRegression((1, 28, 28), 2)
    opt = ExactFlow(model, lr=100.0, rtol=1e-6, atol=1e-8)
    before = opt.step(x, y)
    after = nn.functional.cross_entropy(model(x), y).detach()
    assert model[1].weight.dtype == torch.float32 and torch.isfinite(model[1].weight).all()
    assert float(after) < 1e-2 * float(before)
    assert opt.state[model[1].weight]["ode_steps"] < 200
