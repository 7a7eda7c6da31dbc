"""``lls``: a synthetic linear least-squares problem whose solution and conditioning are known.

Loss per sample: l_j(theta) = 1/2 (x_j . theta - y_j)^2, no bias. The training design X (n x p) is
built so that its Hessian H = X^T X / n = V diag(s) V^T exactly, with eigenvalues s spaced
geometrically from 1 down to 1 / cond (so ``cond`` is H's condition number and SGD on the full batch
is stable for learning rates below 2). Targets: y = X theta_true + noise * e, e ~ N(0, 1).
The test set is drawn from the same population (Gaussian rows with covariance H).
"""

from __future__ import annotations

import math

import torch

from optimlab.data.tensors import Dataset
from optimlab.errors import OptimlabError

LLS_DEFAULTS = {"n": 1000, "p": 50, "noise": 0.1, "cond": 100.0, "seed": 0, "n_test": 250}


def make_lls(
    n: int = 1000,
    p: int = 50,
    noise: float = 0.1,
    cond: float = 100.0,
    seed: int = 0,
    n_test: int = 250,
) -> Dataset:
    """Build the problem; ``extras`` holds ``theta_true``, ``theta_star`` (the exact minimiser of the
    training loss, shape (p,)), ``optimal_loss`` (the training loss there) and ``hessian_eigenvalues``.
    """
    if not (isinstance(n, int) and isinstance(p, int) and isinstance(n_test, int)):
        raise OptimlabError(f"lls: n, p and n_test must be integers (got n={n!r}, p={p!r}, "
                            f"n_test={n_test!r})")
    if p < 1 or n < p:
        raise OptimlabError(f"lls: need 1 <= p <= n so that the solution is unique; got n={n}, p={p}")
    if n_test < 1:
        raise OptimlabError(f"lls: n_test must be >= 1; got {n_test}")
    if not (math.isfinite(cond) and cond >= 1):
        raise OptimlabError(f"lls: cond is the Hessian's condition number and must be >= 1; got {cond}")
    if not (math.isfinite(noise) and noise >= 0):
        raise OptimlabError(f"lls: noise must be a finite number >= 0; got {noise}")
    g = torch.Generator().manual_seed(int(seed))
    f64 = torch.float64
    eig = torch.logspace(0.0, -math.log10(cond), p, dtype=f64) if p > 1 else torch.ones(1, dtype=f64)
    V, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=f64))
    Q, _ = torch.linalg.qr(torch.randn(n, p, generator=g, dtype=f64))  # orthonormal columns
    X = math.sqrt(n) * Q @ torch.diag(eig.sqrt()) @ V.T  # X^T X / n = V diag(eig) V^T
    theta_true = torch.randn(p, generator=g, dtype=f64) / math.sqrt(p)
    y = X @ theta_true + noise * torch.randn(n, generator=g, dtype=f64)
    X_test = torch.randn(n_test, p, generator=g, dtype=f64) @ torch.diag(eig.sqrt()) @ V.T
    y_test = X_test @ theta_true + noise * torch.randn(n_test, generator=g, dtype=f64)
    theta_star = torch.linalg.lstsq(X, y.unsqueeze(1)).solution.squeeze(1)
    optimal_loss = 0.5 * torch.mean((X @ theta_star - y) ** 2)
    f32 = torch.float32
    return Dataset(
        name=f"lls:n={n},p={p},noise={noise:g},cond={cond:g},seed={seed},n_test={n_test}",
        x_train=X.to(f32),
        y_train=y.to(f32),
        x_test=X_test.to(f32),
        y_test=y_test.to(f32),
        task="regression",
        source="synthetic",
        extras={
            "theta_true": theta_true.to(f32),
            "theta_star": theta_star.to(f32),
            "optimal_loss": float(optimal_loss),
            "hessian_eigenvalues": eig.to(f32),
        },
    )
