"""Exact local flows of linear models on one batch, as plain tensor functions (no nn.Module).

Every function here integrates the batch's own gradient flow d theta / dt = -grad l_B(theta) over the
time ``h`` for a linear model u = x . theta, with the mean batch loss l_B = (1/b) sum_j l_j. Inputs X are
(b, p) rows of features (append a column of ones yourself for a bias); the returned parameters are the
flow's value at time h. All arithmetic runs in float64; results come back in the dtype of theta / W.
"""

from __future__ import annotations

import math

import torch

from optimlab.errors import OptimlabError

F64 = torch.float64


def flow_factor(lam: torch.Tensor, h: float) -> torch.Tensor:
    """f_h(lambda) = (1 - exp(-h lambda)) / lambda, with f_h(0) = h, computed without cancellation.

    The learning rate with which one SGD step equals the exact flow along a direction of curvature
    lambda. Elementwise; negative lambda gives values larger than h (growth), as the flow does.
    """
    x = h * lam
    safe = torch.where(x == 0, torch.ones_like(x), x)
    ratio = torch.where(x == 0, torch.ones_like(x), -torch.expm1(-safe) / safe)
    return h * ratio


def least_squares_flow(X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, h: float) -> torch.Tensor:
    """The exact flow of l_B = 1/(2b) |X theta - y|^2 over time h.

    X (b, p), y (b,), theta (p,). With r = X theta - y and G = X X^T / b = V diag(lam) V^T,
    theta(h) = theta - (1/b) X^T V diag(f_h(lam)) V^T r  (the residual obeys dr/dt = -G r).
    """
    b = X.shape[0]
    X64, y64, t64 = X.detach().to(F64), y.detach().to(F64), theta.detach().to(F64)
    lam, V = torch.linalg.eigh(X64 @ X64.T / b)
    lam = lam.clamp_min(0.0)  # G is positive semidefinite; drop round-off below zero
    r = X64 @ t64 - y64
    z = V @ (flow_factor(lam, h) * (V.T @ r))
    return (t64 - X64.T @ z / b).to(theta.dtype)


def solve_log_equation(ah: torch.Tensor, u0: torch.Tensor, iters: int = 100) -> torch.Tensor:
    """delta >= 0 with delta + e^u0 (e^delta - 1) = ah, elementwise (ah >= 0), by Newton in float64.

    This is u + e^u = u0 + e^u0 + ah written for the increment delta = u - u0, i.e. u = c - W(e^c) with
    c = u0 + e^u0 + ah (Lambert's W). For u0 > 0 the equation is divided by e^u0 so nothing overflows.
    F is convex and increasing in delta; Newton started right of the root decreases monotonically to it.
    """
    ah, u0 = ah.to(F64), u0.to(F64)
    pos = u0 > 0
    s = torch.exp(torch.where(pos, -u0, u0))  # e^-|u0| in (0, 1]
    # right of the root: delta* <= ah and delta* <= log(1 + ah e^-u0)
    delta = torch.minimum(ah, torch.log1p(ah * torch.exp(-u0)))
    for _ in range(iters):
        em1 = torch.expm1(delta)
        f = torch.where(pos, s * (delta - ah) + em1, delta + s * em1 - ah)
        df = torch.where(pos, s + em1 + 1, 1 + s * (em1 + 1))
        step = f / df
        delta = (delta - step).clamp_min(0.0)
        if bool((step.abs() <= 4e-16 * (1 + delta.abs())).all()):
            break
    return delta


def logistic_one_sample_flow(x: torch.Tensor, y: int | float, theta: torch.Tensor, h: float) -> torch.Tensor:
    """The exact flow of one sample's logistic loss l = -y log s(u) - (1-y) log(1-s(u)), u = x . theta.

    x, theta (p,), y in {0, 1}. The flow moves theta along x only: du/dt = -a (sigmoid(u) - y), a = |x|^2,
    which separates (u + e^u = const + a t for y = 1, mirrored for y = 0); solved by Newton
    (:func:`solve_log_equation`). theta(h) = theta + x (u(h) - u0) / a.
    """
    x64, t64 = x.detach().to(F64), theta.detach().to(F64)
    a = x64 @ x64
    if float(a) == 0.0:
        return theta.clone()
    sign = 1.0 if float(y) == 1.0 else -1.0
    u0 = x64 @ t64
    delta = solve_log_equation(a * h, sign * u0)
    return (t64 + x64 * (sign * delta) / a).to(theta.dtype)


# Dormand-Prince 5(4) tableau
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4, strict=True))


def _probabilities(U: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(U) if U.shape[1] == 1 else torch.softmax(U, dim=1)


def classification_flow_coefficients(
    X: torch.Tensor, Y: torch.Tensor, W: torch.Tensor, h: float,
    rtol: float = 1e-8, atol: float = 1e-10, max_steps: int = 100_000,
) -> tuple[torch.Tensor, dict]:
    """Z(h) of the small b x C problem, by adaptive Dormand-Prince RK45 with error control.

    X (b, p), Y (b, C) targets (one-hot for softmax, C >= 2; 0/1 column for sigmoid, C = 1), W (C, p)
    the weights (u = W x). The flow is W(t) = W - (1/b) Z(t)^T X with

        dZ/dt = P(U0 - G Z) - Y,   Z(0) = 0,   U0 = X W^T (b, C),   G = X X^T / b,

    P the row softmax (sigmoid if C = 1): U(t) = U0 - G Z(t) exactly, so Z alone is integrated. Each
    step's local error estimate e must satisfy max |e| / (atol + rtol max(|Z|, |Z_new|)) <= 1.
    Returns Z(h) (b, C) in float64 and statistics {"steps", "rejected", "evaluations"}.
    """
    X64, Y64 = X.detach().to(F64), Y.detach().to(F64)
    b = X64.shape[0]
    G = X64 @ X64.T / b
    U0 = X64 @ W.detach().to(F64).T

    def rhs(Z: torch.Tensor) -> torch.Tensor:
        return _probabilities(U0 - G @ Z) - Y64

    lam_max = float(torch.linalg.matrix_norm(G, ord=2)) if b > 0 else 0.0
    Z = torch.zeros_like(U0)
    t, dt = 0.0, min(h, 1.0 / max(0.5 * lam_max, 1e-300))
    k1 = rhs(Z)
    stats = {"steps": 0, "rejected": 0, "evaluations": 1}
    while t < h:
        if stats["steps"] + stats["rejected"] >= max_steps:
            raise OptimlabError(
                f"exact flow: the b x C ODE needed more than {max_steps} steps to reach t={h:g} at "
                f"rtol={rtol:g}; loosen the tolerance or lower the learning rate"
            )
        dt = min(dt, h - t)
        ks = [k1]
        for i in range(1, 7):
            Zi = Z + dt * sum(a * k for a, k in zip(_A[i], ks, strict=False))
            ks.append(rhs(Zi))
        stats["evaluations"] += 6
        Z_new = Zi  # stage 7 sits at the 5th-order solution (FSAL)
        err = dt * sum(e * k for e, k in zip(_E, ks, strict=True))
        scale = atol + rtol * torch.maximum(Z.abs(), Z_new.abs())
        ratio = float((err.abs() / scale).max()) if err.numel() else 0.0
        if ratio <= 1.0:
            t = h if h - t - dt <= 1e-15 * h else t + dt
            Z, k1 = Z_new, ks[6]
            stats["steps"] += 1
        else:
            stats["rejected"] += 1
        if not math.isfinite(ratio):
            raise OptimlabError("exact flow: the b x C ODE produced non-finite values; check the batch")
        dt *= min(5.0, max(0.2, 0.9 * (ratio if ratio > 0 else 1e-10) ** -0.2))
    return Z, stats


def classification_flow(
    X: torch.Tensor, labels: torch.Tensor, W: torch.Tensor, h: float, rtol: float = 1e-8, atol: float = 1e-10,
) -> torch.Tensor:
    """The flow of the mean cross-entropy (C >= 2 rows of W) or logistic loss (C = 1) over time h.

    X (b, p), labels (b,) class indices in [0, C) (0/1 when C = 1), W (C, p). Returns W(h) (C, p).
    """
    Y = labels_to_targets(labels, W.shape[0])
    Z, _ = classification_flow_coefficients(X, Y, W, h, rtol=rtol, atol=atol)
    return (W.detach().to(F64) - Z.T @ X.detach().to(F64) / X.shape[0]).to(W.dtype)


def labels_to_targets(labels: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """(b,) labels -> (b, C) targets: one-hot for C >= 2 outputs, the 0/1 column for one output."""
    labels = labels.reshape(-1)
    if labels.is_floating_point():
        if not bool(((labels == 0) | (labels == 1)).all()) or num_outputs != 1:
            raise OptimlabError(
                "exact flow: classification labels must be integer class indices (or 0/1 for a model "
                "with one output)"
            )
        return labels.to(F64).unsqueeze(1)
    if num_outputs == 1:
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise OptimlabError(
                f"exact flow: a model with one output is binary logistic regression; labels must be 0 or "
                f"1, got {sorted(set(labels.tolist()))[:5]}"
            )
        return labels.to(F64).unsqueeze(1)
    if bool(((labels < 0) | (labels >= num_outputs)).any()):
        raise OptimlabError(
            f"exact flow: labels must lie in 0..{num_outputs - 1} for a model with {num_outputs} outputs; "
            f"got min {int(labels.min())}, max {int(labels.max())}"
        )
    return torch.nn.functional.one_hot(labels.long(), num_outputs).to(F64)
