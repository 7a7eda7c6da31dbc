"""The seed's projection picture: a batch's principal gradient direction q, pairs (q.theta, q.grad l_B).

    pic = projection_picture(model, loss_fn, x, y, radius=1.0, points=41)
    pic.slope, pic.r2          # the fitted g(eta) = slope * eta + intercept: slope ~ curvature along q
    save_picture(pic, "picture.png")

q is the top right singular vector of the (b, P) matrix of per-sample gradients at theta (``torch.func``:
vmap of grad over the batch), signed so that q . grad l_B(theta) >= 0. The parameters are sampled as
theta + t q on a line (t in [-radius, radius]) and, with ``spread`` > 0, moved off the line by Gaussian
noise of that size (the seed's cloud). For least squares the pairs lie on a line of slope q^T H q.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from optimlab.errors import OptimlabError


@dataclass
class Picture:
    """eta = q . theta_i and g = q . grad l_B(theta_i) (points,), q (P,), the linear fit and its R^2."""

    q: torch.Tensor
    eta: torch.Tensor
    g: torch.Tensor
    slope: float
    intercept: float
    r2: float
    singular_values: torch.Tensor


def _named(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


def _flatten(d: dict[str, torch.Tensor], batched: bool = False) -> torch.Tensor:
    if batched:
        return torch.cat([v.reshape(v.shape[0], -1) for v in d.values()], dim=1)
    return torch.cat([v.reshape(-1) for v in d.values()])


def _unflatten(vec: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vec[i:i + v.numel()].view_as(v)
        i += v.numel()
    return out


def per_sample_gradients(
    model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """(b, P) gradients of each sample's loss loss_fn(model(x_j), y_j) w.r.t. all parameters, flattened."""
    params = _named(model)

    def one(p, xj, yj):
        return loss_fn(functional_call(model, p, (xj.unsqueeze(0),)), yj.unsqueeze(0))

    return _flatten(vmap(grad(one), in_dims=(None, 0, 0))(params, x, y), batched=True)


def principal_direction(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor):
    """(q, singular values): the top right singular vector of the per-sample gradients, q . grad l_B >= 0."""
    G = per_sample_gradients(model, loss_fn, x, y)
    _, s, Vh = torch.linalg.svd(G, full_matrices=False)
    q = Vh[0]
    if float(q @ G.mean(dim=0)) < 0:
        q = -q
    return q, s


def batch_gradient(model: nn.Module, loss_fn: Callable, x, y, flat_params: torch.Tensor) -> torch.Tensor:
    """grad l_B at the flattened parameters ``flat_params`` (P,), flattened (P,)."""
    like = _named(model)

    def loss(p):
        return loss_fn(functional_call(model, p, (x,)), y)

    return _flatten(grad(loss)(_unflatten(flat_params, like)))


def projection_picture(
    model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, radius: float = 1.0,
    points: int = 41, spread: float = 0.0, seed: int = 0, q: torch.Tensor | None = None,
) -> Picture:
    """The pairs (q . theta_i, q . grad l_B(theta_i)) around the model's theta and their linear fit.

    ``loss_fn(output, target)`` is the mean batch loss. theta_i = theta + t_i q (+ spread * N(0, I)).
    """
    if not (points >= 3 and 0 < radius < math.inf and 0 <= spread < math.inf):
        raise OptimlabError(f"picture: need points >= 3, a finite radius > 0 and a finite spread >= 0; got "
                            f"{points}, {radius}, {spread}")
    if q is None:
        q, s = principal_direction(model, loss_fn, x, y)
    else:
        s = torch.empty(0)
    theta = _flatten(_named(model))
    gen = torch.Generator().manual_seed(seed)
    ts = torch.linspace(-radius, radius, points, dtype=theta.dtype)
    etas, gs = [], []
    for t in ts:
        th = theta + t * q
        if spread > 0:
            th = th + spread * torch.randn(th.shape, generator=gen, dtype=th.dtype).to(th.device)
        etas.append(q @ th)
        gs.append(q @ batch_gradient(model, loss_fn, x, y, th))
    eta, g = torch.stack(etas).double().cpu(), torch.stack(gs).double().cpu()
    A = torch.stack([eta, torch.ones_like(eta)], dim=1)
    coef = torch.linalg.lstsq(A, g.unsqueeze(1)).solution.squeeze(1)
    resid = g - A @ coef
    total = ((g - g.mean()) ** 2).sum()
    r2 = 1.0 - float((resid ** 2).sum() / total) if float(total) > 0 else 1.0
    return Picture(q=q.detach(), eta=eta, g=g, slope=float(coef[0]), intercept=float(coef[1]), r2=r2,
                   singular_values=s.detach())


def save_picture(
    picture: Picture, path, title: str = "projection on the principal gradient direction"
) -> None:
    """Scatter of (eta, g) with the fitted line, as a PNG at ``path`` (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=100)
    ax = fig.add_subplot()
    ax.plot(picture.eta.numpy(), picture.g.numpy(), "bx", label="samples")
    line = picture.slope * picture.eta + picture.intercept
    ax.plot(picture.eta.numpy(), line.numpy(), "r-",
            label=f"g = {picture.slope:.4g} eta + {picture.intercept:.3g}, R^2 = {picture.r2:.4f}")
    ax.set_xlabel(r"$\Pi_q(\theta) = q \cdot \theta$")
    ax.set_ylabel(r"$\Pi_q(\nabla l_B) = q \cdot \nabla l_B(\theta)$")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
