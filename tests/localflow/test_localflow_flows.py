"""The closed forms and the small b x C ODE against the full-space gradient flow integrated by scipy."""

import math

import numpy as np
import pytest
import torch
from scipy.special import lambertw

from optimlab.localflow import (
    classification_flow,
    flow_factor,
    least_squares_flow,
    logistic_one_sample_flow,
)
from optimlab.localflow.flows import classification_flow_coefficients, solve_log_equation

F64 = torch.float64


def test_flow_factor_limits_without_cancellation():
    h = 0.7
    lam = torch.tensor([0.0, 1e-300, 1e-14, 1e-3, 1.0, 1e3, 1e300, -1e-12], dtype=F64)
    got = flow_factor(lam, h)
    x = h * lam
    # independent: the series h (1 - x/2 + x^2/6 - x^3/24) where x is small, the plain formula elsewhere
    series = h * (1 - x / 2 + x**2 / 6 - x**3 / 24)
    plain = (1 - torch.exp(-x)) / lam
    expected = torch.where(x.abs() < 1e-3, series, plain)
    assert torch.allclose(got, expected, rtol=1e-13, atol=0)
    assert got[0] == h and math.isclose(float(got[-2]), 1 / 1e300, rel_tol=1e-15)


@pytest.mark.parametrize("b,p,h", [(5, 8, 0.01), (5, 8, 3.0), (12, 4, 1.0), (1, 6, 20.0)])
def test_least_squares_closed_form_matches_full_space_flow(reference, b, p, h):
    g = torch.Generator().manual_seed(b * 100 + p)
    X = torch.randn(b, p, generator=g, dtype=F64)
    y = torch.randn(b, generator=g, dtype=F64)
    theta = torch.randn(p, generator=g, dtype=F64)
    got = least_squares_flow(X, y, theta, h).numpy()
    ref = reference.least_squares(X.numpy(), y.numpy(), theta.numpy(), h)
    assert np.max(np.abs(got - ref)) < 1e-8


@pytest.mark.parametrize("y", [0, 1])
@pytest.mark.parametrize("u0,h", [(0.3, 0.5), (-2.0, 5.0), (4.0, 2.0), (-25.0, 1.0), (30.0, 3.0)])
def test_logistic_one_sample_closed_form_matches_full_space_flow(reference, y, u0, h):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, generator=g, dtype=F64)
    theta = torch.randn(6, generator=g, dtype=F64)
    theta = theta + (u0 - x @ theta) / (x @ x) * x  # put x . theta at u0
    got = logistic_one_sample_flow(x, y, theta, h).numpy()
    ref = reference.logistic(x.numpy()[None], [y], theta.numpy(), h)
    assert np.max(np.abs(got - ref)) < 1e-8


def test_newton_solve_agrees_with_scipy_lambertw_and_survives_overflow():
    u0 = torch.tensor([-3.0, -0.5, 0.0, 0.5, 2.0, 5.0], dtype=F64)
    ah = torch.tensor([0.1, 1.0, 5.0, 0.3, 40.0, 2.0], dtype=F64)
    delta = solve_log_equation(ah, u0)
    c = (u0 + torch.exp(u0) + ah).numpy()
    u_ref = c - lambertw(np.exp(c)).real  # u(h) = c - W(e^c)
    assert np.max(np.abs((u0 + delta).numpy() - u_ref)) < 1e-10
    # e^u0 and e^c overflow here; the flow barely moves (u0 = 800) or moves by a h (u0 = -800)
    big = solve_log_equation(torch.tensor([5.0, 5.0], dtype=F64), torch.tensor([800.0, -800.0], dtype=F64))
    assert torch.isfinite(big).all() and big[0] == 0.0 and abs(float(big[1]) - 5.0) < 1e-12


@pytest.mark.parametrize("C,b,h,one_class", [(3, 6, 0.7, False), (4, 3, 8.0, False), (3, 5, 2.0, True),
                                             (2, 1, 1.5, False)])
def test_softmax_small_ode_matches_full_space_flow(reference, C, b, h, one_class):
    p = 5
    g = torch.Generator().manual_seed(C * 10 + b)
    X = torch.randn(b, p, generator=g, dtype=F64)
    W = 0.5 * torch.randn(C, p, generator=g, dtype=F64)
    labels = torch.zeros(b, dtype=torch.long) if one_class else torch.randint(0, C, (b,), generator=g)
    got = classification_flow(X, labels, W, h, rtol=1e-12, atol=1e-14).numpy()
    ref = reference.softmax(X.numpy(), labels.numpy(), W.numpy(), h)
    assert np.max(np.abs(got - ref)) < 1e-8


def test_one_class_softmax_batch_is_well_posed():
    """A batch of one class has no finite minimiser but a finite flow: the logit margin grows like log t."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(4, 5, generator=g, dtype=F64)
    W = torch.zeros(3, 5, dtype=F64)
    labels = torch.ones(4, dtype=torch.long)
    for h in (1.0, 1e2, 1e4):
        Z, stats = classification_flow_coefficients(X, torch.eye(3, dtype=F64)[labels], W, h, rtol=1e-8)
        W_h = W - Z.T @ X / 4
        assert torch.isfinite(W_h).all() and stats["steps"] < 2000
    margins = (X @ W_h.T)[:, 1] - (X @ W_h.T)[:, [0, 2]].max(dim=1).values
    assert (margins > 0).all() and margins.max() < 10 * math.log(1e4)


def test_binary_sigmoid_small_ode_matches_full_space_flow(reference):
    g = torch.Generator().manual_seed(11)
    X = torch.randn(7, 4, generator=g, dtype=F64)
    theta = torch.randn(1, 4, generator=g, dtype=F64)
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    got = classification_flow(X, labels, theta, 3.0, rtol=1e-12, atol=1e-14)[0].numpy()
    ref = reference.logistic(X.numpy(), labels.numpy(), theta[0].numpy(), 3.0)
    assert np.max(np.abs(got - ref)) < 1e-8
