"""Independent references for the local-flow tests: the full-space gradient flow integrated by scipy."""

import numpy as np
import pytest
from scipy.integrate import solve_ivp


def _integrate(rhs, theta0, h):
    sol = solve_ivp(lambda t, th: rhs(th), (0.0, h), np.asarray(theta0, dtype=np.float64),
                    method="DOP853", rtol=1e-12, atol=1e-14)
    assert sol.success, sol.message
    return sol.y[:, -1]


def full_least_squares(X, y, theta0, h):
    """theta(h) of d theta/dt = -(1/b) X^T (X theta - y), in the full p-dimensional space."""
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    return _integrate(lambda th: -X.T @ (X @ th - y) / len(y), theta0, h)


def full_softmax(X, labels, W0, h):
    """W(h) (C, p) of dW/dt = -(1/b) (softmax(X W^T) - Y)^T X in the full C*p-dimensional space."""
    X, W0 = np.asarray(X, np.float64), np.asarray(W0, np.float64)
    C, p = W0.shape
    Y = np.eye(C)[np.asarray(labels)]

    def rhs(w):
        U = X @ w.reshape(C, p).T
        P = np.exp(U - U.max(axis=1, keepdims=True))
        P /= P.sum(axis=1, keepdims=True)
        return (-(P - Y).T @ X / len(X)).ravel()

    return _integrate(rhs, W0.ravel(), h).reshape(C, p)


def full_logistic(X, labels, theta0, h):
    """theta(h) (p,) of d theta/dt = -(1/b) X^T (sigmoid(X theta) - y) in the full space."""
    X, y = np.asarray(X, np.float64), np.asarray(labels, np.float64)

    def rhs(th):
        u = X @ th
        s = np.where(u >= 0, 1 / (1 + np.exp(-np.abs(u))), np.exp(-np.abs(u)) / (1 + np.exp(-np.abs(u))))
        return -X.T @ (s - y) / len(y)

    return _integrate(rhs, theta0, h)


@pytest.fixture
def reference():
    """The scipy reference integrators (rtol 1e-12, atol 1e-14, DOP853)."""

    class R:
        least_squares = staticmethod(full_least_squares)
        softmax = staticmethod(full_softmax)
        logistic = staticmethod(full_logistic)
        integrate = staticmethod(_integrate)

    return R


@pytest.fixture(scope="session")
def mnist01():
    """Binary MNIST digits 0/1 from the bundled set, float64 images (N, 1, 28, 28), labels 0/1."""
    from optimlab.data import load_dataset

    ds = load_dataset("mnist-10k:0,1", device="cpu")
    return ds.x_train.double(), ds.y_train
