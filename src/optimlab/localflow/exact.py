"""``ExactFlow``: a torch.optim optimizer for linear models that steps by the batch's exact gradient flow.

    opt = ExactFlow(model, lr=h)            # model: one nn.Linear, optionally after nn.Flatten
    loss = opt.step(x, y)                   # theta <- theta(h), the flow of l_B from theta over time h

SGD's step theta - h grad l_B(theta) is one Euler step of d theta/dt = -grad l_B(theta); this optimizer
takes the exact solution at time h instead (``flows``): closed form for least squares, Lambert-W closed
form for binary logistic regression with one sample, an adaptive RK45 solve of the small b x C problem
for logistic and softmax regression with any batch. Why ``step(x, y)`` and not a closure: the exact flow
of a linear model needs the batch's inputs X (the flow lives in their row space), which no loss value or
gradient carries; the model is given at construction so the optimizer knows which layer is theta.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from optimlab.errors import OptimlabError
from optimlab.localflow import flows

LOSSES = ("squared", "logistic", "cross_entropy")


def linear_layer(model: nn.Module) -> nn.Linear:
    """The one nn.Linear of a linear model, or OptimlabError.

    Accepted: nn.Linear; nn.Sequential of nn.Flatten / nn.Identity layers then one nn.Linear; optimlab's
    ``LinearRegression`` (``models.linear``). Anything else (hidden layers, activations, convolutions,
    extra parameters) is refused, since its gradient flow has no small exact form.
    """
    from optimlab.models import LinearRegression

    layer = None
    if isinstance(model, nn.Linear):
        layer = model
    elif isinstance(model, LinearRegression):
        layer = model.linear
    elif isinstance(model, nn.Sequential) and len(model) >= 1 and isinstance(model[-1], nn.Linear):
        if all(isinstance(m, (nn.Flatten, nn.Identity)) for m in list(model)[:-1]):
            layer = model[-1]
    if layer is None or len(list(model.parameters())) != len(list(layer.parameters())):
        kinds = sorted({type(m).__name__ for m in model.modules() if m is not model})
        raise OptimlabError(
            f"ExactFlow needs a linear model (one nn.Linear, optionally after nn.Flatten); got "
            f"{type(model).__name__} with layers {', '.join(kinds) or 'none'}. For other models use "
            f"torch.optim.SGD with optimlab.localflow.CurvatureScheduler"
        )
    return layer


def check_flow_time(h) -> float:
    """h as a float, or OptimlabError unless it is a finite number > 0."""
    try:
        value = float(h)
    except (TypeError, ValueError):
        raise OptimlabError(f"the flow time h (learning rate) must be a number; got {h!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise OptimlabError(f"the flow time h (learning rate) must be finite and > 0; got {value}")
    return value


class ExactFlow(torch.optim.Optimizer):
    """Exact local gradient flow of a linear model over time ``lr`` per batch.

    ``loss``: ``"squared"`` (l_j = 1/2 (u_j - y_j)^2, one output, float targets), ``"logistic"`` (one
    output, labels 0/1, l_j = BCE with logits), ``"cross_entropy"`` (C >= 2 outputs, integer labels);
    ``None`` infers it: C >= 2 outputs -> cross_entropy; one output -> squared for float targets,
    logistic for integer targets. A bias is handled by appending 1 to every x. ``rtol``/``atol`` bound
    the local error of the RK45 solve (classification with b > 1); the other cases are closed forms
    (exact to round-off). State per step: ``steps`` and the ODE statistics of the last step.
    """

    def __init__(self, model: nn.Module, lr: float = 0.1, loss: str | None = None,
                 rtol: float = 1e-8, atol: float = 1e-10):
        self.layer = linear_layer(model)
        self.model = model
        check_flow_time(lr)
        if loss is not None and loss not in LOSSES:
            raise OptimlabError(f"ExactFlow: unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
        if not (rtol > 0 and atol > 0):
            raise OptimlabError(f"ExactFlow: rtol and atol must be > 0; got {rtol}, {atol}")
        super().__init__(self.layer.parameters(), dict(lr=lr, loss=loss, rtol=rtol, atol=atol))

    def _loss_kind(self, y: torch.Tensor, group: dict) -> str:
        outputs = self.layer.out_features
        kind = group["loss"] or (
            "cross_entropy" if outputs > 1 else ("squared" if y.is_floating_point() else "logistic")
        )
        if kind == "cross_entropy" and outputs < 2:
            raise OptimlabError("ExactFlow: cross_entropy needs a model with >= 2 outputs; use 'logistic'")
        if kind in ("squared", "logistic") and outputs != 1:
            raise OptimlabError(f"ExactFlow: loss {kind!r} needs a model with one output; got {outputs}")
        return kind

    @torch.no_grad()
    def step(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """Move the model to the flow's value at time h on the batch (x, y); returns l_B before the step.

        x: the model's inputs (b, ...), flattened to (b, p); y: (b,) targets (float) or labels (int).
        """
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            raise OptimlabError(
                "ExactFlow.step needs the batch itself, opt.step(x, y): the exact flow of a linear model "
                "lives in the span of the batch's inputs, which a closure or a gradient does not carry"
            )
        group = self.param_groups[0]
        h = check_flow_time(group["lr"])
        weight, bias = self.layer.weight, self.layer.bias
        X = x.reshape(x.shape[0], -1).to(torch.float64)
        if X.shape[1] != weight.shape[1]:
            raise OptimlabError(f"ExactFlow: inputs have {X.shape[1]} features, the model expects "
                                f"{weight.shape[1]}")
        if y.shape[0] != X.shape[0] or X.shape[0] == 0:
            raise OptimlabError(f"ExactFlow: need a non-empty batch with one target per input; got "
                                f"{X.shape[0]} inputs, {y.shape[0]} targets")
        if not bool(torch.isfinite(X).all()):
            raise OptimlabError("ExactFlow: the batch has non-finite inputs")
        if bias is not None:
            X = torch.cat([X, torch.ones_like(X[:, :1])], dim=1)
            theta = torch.cat([weight, bias.unsqueeze(1)], dim=1).to(torch.float64)  # (C, p+1)
        else:
            theta = weight.to(torch.float64)
        kind = self._loss_kind(y, group)
        U = X @ theta.T
        stats: dict = {}
        if kind == "squared":
            t = y.to(torch.float64).reshape(-1)
            loss = 0.5 * torch.mean((U[:, 0] - t) ** 2)
            new = flows.least_squares_flow(X, t, theta[0], h).unsqueeze(0)
        else:
            Y = flows.labels_to_targets(y, theta.shape[0])
            if kind == "logistic":
                loss = torch.nn.functional.binary_cross_entropy_with_logits(U, Y)
            else:
                loss = torch.nn.functional.cross_entropy(U, Y.argmax(dim=1))
            if kind == "logistic" and X.shape[0] == 1:
                new = flows.logistic_one_sample_flow(X[0], float(Y[0, 0]), theta[0], h).unsqueeze(0)
            else:
                Z, stats = flows.classification_flow_coefficients(
                    X, Y, theta, h, rtol=group["rtol"], atol=group["atol"])
                new = theta - Z.T @ X / X.shape[0]
        p = weight.shape[1]
        weight.copy_(new[:, :p])
        if bias is not None:
            bias.copy_(new[:, p])
        state = self.state[weight]
        state["steps"] = state.get("steps", 0) + 1
        state.update({f"ode_{k}": v for k, v in stats.items()})
        return loss.to(weight.dtype)
