"""The small models by name: ``logreg``, ``mlp``, ``cnn`` (classification) and ``linear`` (``lls``).

Every classifier maps a batch of inputs (N, *input_shape) to logits (N, num_classes); ``linear`` maps
(N, p) to predictions (N,).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from optimlab.errors import OptimlabError


class LogisticRegression(nn.Sequential):
    """Multinomial logistic regression: flatten, one Linear layer (softmax is in the loss)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


class MLP(nn.Sequential):
    """One hidden ReLU layer: flatten, Linear(d, hidden), ReLU, Linear(hidden, num_classes)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 100):
        if not (isinstance(hidden, int) and hidden >= 1):
            raise OptimlabError(f"mlp: hidden must be a positive integer; got {hidden!r}")
        d = math.prod(input_shape)
        super().__init__(
            nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )


class CNN(nn.Module):
    """Seed 004's network: two conv(3x3, pad 1)+ReLU+maxpool(2) blocks (64, 128 channels), then
    Linear(128 * H/4 * W/4, 256), ReLU, Linear(256, num_classes). Input (N, C, H, W), any C."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        if len(input_shape) != 3 or input_shape[1] < 4 or input_shape[2] < 4:
            raise OptimlabError(
                f"cnn needs images (C, H, W) of at least 4x4 pixels; this data set has inputs of "
                f"shape {tuple(input_shape)}; use logreg or mlp for it"
            )
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 64, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * (h // 4) * (w // 4), 256), nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LinearRegression(nn.Module):
    """theta . x (no bias unless asked): (N, p) -> (N,). The model of the ``lls`` problem."""

    def __init__(self, input_shape: tuple[int, ...], bias: bool = False):
        super().__init__()
        if len(input_shape) != 1:
            raise OptimlabError(
                f"linear needs feature vectors (p,); this data set has inputs of shape "
                f"{tuple(input_shape)}"
            )
        self.linear = nn.Linear(input_shape[0], 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


# name -> (class, task it solves, options it takes)
MODELS = {
    "logreg": (LogisticRegression, "classification", ()),
    "mlp": (MLP, "classification", ("hidden",)),
    "cnn": (CNN, "classification", ()),
    "linear": (LinearRegression, "regression", ("bias",)),
}


def model_names() -> list[str]:
    return list(MODELS)


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int = 0, task: str = "classification",
    **options,
) -> nn.Module:
    """A fresh model ``name`` for inputs of ``input_shape`` (per sample) and the given task.

    Initialized by torch's default initializers from the global RNG: seed before calling for a
    reproducible initialization. Unknown names, unknown options and a model that does not fit the
    task raise :class:`OptimlabError` with the valid choices.
    """
    if name not in MODELS:
        raise OptimlabError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    cls, model_task, valid = MODELS[name]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise OptimlabError(
            f"model {name!r} has no option {', '.join(unknown)}; valid: {', '.join(valid) or 'none'}"
        )
    if model_task != task:
        fitting = [n for n, (_, t, _) in MODELS.items() if t == task]
        raise OptimlabError(
            f"model {name!r} is for {model_task}, but this data set is a {task} problem; "
            f"use one of: {', '.join(fitting)}"
        )
    if task == "classification":
        return cls(tuple(input_shape), num_classes, **options)
    return cls(tuple(input_shape), **options)
