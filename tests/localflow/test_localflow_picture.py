"""The projection picture: q against the SVD of hand-written per-sample gradients, the fitted slope
against the Rayleigh quotient q^T H q for least squares, and the PNG."""

import numpy as np
import torch
from torch import nn

from optimlab.localflow import principal_direction, projection_picture, save_picture
from optimlab.models import LinearRegression, LogisticRegression

F64 = torch.float64


def _squared(out, t):
    return 0.5 * torch.mean((out - t) ** 2)


def _lls(seed=0, b=12, p=7):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(b, p, generator=g, dtype=F64)
    y = torch.randn(b, generator=g, dtype=F64)
    torch.manual_seed(seed)
    return X, y, LinearRegression((p,)).double()


def test_principal_direction_is_the_top_singular_vector_of_per_sample_gradients():
    X, y, model = _lls()
    theta = model.linear.weight.detach()[0]
    per_sample = X * (X @ theta - y)[:, None]  # grad of 1/2 (x_j . theta - y_j)^2, by hand
    v = np.linalg.svd(per_sample.numpy())[2][0]
    q, s = principal_direction(model, _squared, X, y)
    assert abs(abs(float(q.numpy() @ v)) - 1) < 1e-12
    assert float(q @ per_sample.mean(dim=0)) >= 0  # signed along the batch gradient
    assert np.allclose(s.numpy(), np.linalg.svd(per_sample.numpy())[1], rtol=1e-12)


def test_least_squares_picture_is_a_line_of_slope_rayleigh_quotient():
    X, y, model = _lls()
    pic = projection_picture(model, _squared, X, y, radius=2.0, points=21)
    H = X.T @ X / len(y)
    rayleigh = float(pic.q @ H @ pic.q)
    assert abs(pic.slope - rayleigh) < 1e-10 * rayleigh and pic.r2 > 1 - 1e-12
    # the seed's cloud: noise n off the line adds q^T H n_perp to g, so R^2 drops below 1, slightly
    cloud = projection_picture(model, _squared, X, y, radius=2.0, points=21, spread=0.05, seed=1)
    assert 0.9 < cloud.r2 < 1 - 1e-9


def test_logistic_picture_and_png(tmp_path, mnist01):
    x, y = mnist01[0][:16], mnist01[1][:16]
    torch.manual_seed(0)
    model = LogisticRegression((1, 28, 28), 2).double()
    pic = projection_picture(model, nn.functional.cross_entropy, x, y, radius=0.5, points=15)
    assert pic.eta.shape == pic.g.shape == (15,) and pic.slope > 0 and 0 < pic.r2 <= 1
    assert bool((pic.g.diff() >= -1e-12).all())  # a convex loss: q . grad is monotone along q
    path = tmp_path / "picture.png"
    save_picture(pic, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
