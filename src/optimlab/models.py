"""The small models by name: ``logreg``, ``mlp``, ``cnn`` (classification) and ``linear`` (``lls``),
and DeepOBS's test-problem networks ``deepobs-2c2d``, ``deepobs-mlp``, ``deepobs-logreg`` (classification).

Every classifier maps a batch of inputs (N, *input_shape) to logits (N, num_classes); ``linear`` maps
(N, p) to predictions (N,).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from optimlab.data.quadratic import QuadraticDeep
from optimlab.errors import OptimlabError


class LogisticRegression(nn.Sequential):
    """Multinomial logistic regression: flatten, one Linear layer (softmax is in the loss)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


class MLP(nn.Sequential):
    """One hidden ReLU layer: flatten, Linear(d, hidden), ReLU, Linear(hidden, num_classes)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 100):
        if isinstance(hidden, bool) or not (isinstance(hidden, int) and hidden >= 1):
            raise OptimlabError(f"mlp: hidden must be a positive integer; got {hidden!r}")
        d = math.prod(input_shape)
        super().__init__(
            nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )


def _images(input_shape: tuple[int, ...], model: str, instead: str) -> tuple[int, int, int]:
    """(C, H, W) of images of at least 4x4 pixels, else the error that says which model to use."""
    if len(input_shape) != 3 or input_shape[1] < 4 or input_shape[2] < 4:
        raise OptimlabError(f"{model} needs images (C, H, W) of at least 4x4 pixels; this data set has "
                            f"inputs of shape {tuple(input_shape)}; use {instead} for it")
    return tuple(input_shape)


class CNN(nn.Module):
    """Seed 004's network: two conv(3x3, pad 1)+ReLU+maxpool(2) blocks (64, 128 channels), then
    Linear(128 * H/4 * W/4, 256), ReLU, Linear(256, num_classes). Input (N, C, H, W), any C."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        c, h, w = _images(input_shape, "cnn", "logreg or mlp")
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


def _deepobs_init(module: nn.Module, std: float, bias: float) -> nn.Module:
    """DeepOBS's initialization: every Conv2d/Linear weight truncated normal (mean 0, ``std``, cut at
    2 std), every bias the constant ``bias``; from the global RNG, in the order of the layers."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.constant_(m.bias, bias)
    return module


class TwoConvTwoDense(nn.Module):
    """DeepOBS's ``2c2d`` (MNIST, Fashion-MNIST): two conv(5x5, pad 2)+ReLU+maxpool(2, stride 2) blocks
    (32, 64 channels), then Linear(64 * H/4 * W/4, 1024), ReLU, Linear(1024, num_classes). Input
    (N, C, H, W), any C (28x28: 3,274,634 parameters for 10 classes). Weights truncated normal std
    0.05 (cut at 2 std), biases 0.05."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        c, h, w = _images(input_shape, "deepobs-2c2d", "deepobs-logreg or deepobs-mlp")
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2, stride=2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 1024), nn.ReLU(),
            nn.Linear(1024, num_classes),
        )
        _deepobs_init(self, std=0.05, bias=0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DeepOBSMLP(nn.Sequential):
    """DeepOBS's ``mlp`` (MNIST, Fashion-MNIST): flatten, Linear d-1000-500-100-num_classes with ReLU
    between: (N, *input_shape) -> (N, num_classes) (784 inputs: 1,336,610 parameters for 10 classes).
    Weights truncated normal std 0.03 (cut at 2 std), biases 0."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        d = math.prod(input_shape)
        super().__init__(
            nn.Flatten(), nn.Linear(d, 1000), nn.ReLU(), nn.Linear(1000, 500), nn.ReLU(),
            nn.Linear(500, 100), nn.ReLU(), nn.Linear(100, num_classes),
        )
        _deepobs_init(self, std=0.03, bias=0.0)


class DeepOBSLogReg(nn.Sequential):
    """DeepOBS's ``logreg`` (MNIST, Fashion-MNIST): flatten, one Linear(d, num_classes), weights and
    biases 0."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))
        nn.init.zeros_(self[1].weight)
        nn.init.zeros_(self[1].bias)


# the arguments a model factory may take from the data rather than from its options
DATA_ARGUMENTS = ("input_shape", "num_classes")


@dataclass(frozen=True)
class ModelEntry:
    """A model by name: a factory of ``nn.Module`` and the kind of data it is for.

    The factory is called with its options as keyword arguments, and with ``input_shape`` (per sample)
    and ``num_classes`` when its signature names them; ``task``: ``"classification"``,
    ``"regression"`` or None (any).
    """

    name: str
    factory: Callable[..., nn.Module]
    task: str | None = None
    source: str = "optimlab"

    def _parameters(self) -> dict[str, inspect.Parameter] | None:
        """The factory's parameters, or None when its signature cannot be read."""
        try:
            return dict(inspect.signature(self.factory).parameters)
        except (TypeError, ValueError):
            return None

    def options(self) -> list[str] | None:
        """The options it takes (None: any, through ``**kwargs``)."""
        params = self._parameters()
        if params is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None
        return [k for k, p in params.items() if k not in DATA_ARGUMENTS and p.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]

    def build(self, input_shape: tuple[int, ...], num_classes: int = 0, task: str = "classification",
              **options) -> nn.Module:
        """A fresh model for data of ``input_shape`` and ``task``, from the global RNG (seed first)."""
        valid = self.options()
        unknown = sorted(set(options) - set(valid)) if valid is not None else []
        if unknown:
            raise OptimlabError(f"model {self.name!r} has no option {', '.join(unknown)}; "
                                f"valid: {', '.join(valid) or 'none'}")
        if self.task is not None and self.task != task:
            raise OptimlabError(f"model {self.name!r} is for {self.task}, but this data set is a {task} "
                                "problem")
        params = self._parameters() or {}
        given = {"input_shape": tuple(input_shape), "num_classes": num_classes}
        args = {k: v for k, v in given.items() if k in params}
        try:
            model = self.factory(**args, **options)
        except OptimlabError:
            raise
        except Exception as e:  # the user's factory: its own error, said as one line
            raise OptimlabError(f"model {self.name!r}: its factory raised {type(e).__name__}: {e}") from None
        if not isinstance(model, nn.Module):
            raise OptimlabError(f"model {self.name!r}: its factory returned {type(model).__name__}, not a "
                                "torch.nn.Module")
        return model


MODELS: dict[str, ModelEntry] = {e.name: e for e in (
    ModelEntry("logreg", LogisticRegression, "classification"),
    ModelEntry("mlp", MLP, "classification"),
    ModelEntry("cnn", CNN, "classification"),
    ModelEntry("linear", LinearRegression, "regression"),
    ModelEntry("quadratic-deep", QuadraticDeep, "objective"),
    ModelEntry("deepobs-2c2d", TwoConvTwoDense, "classification"),
    ModelEntry("deepobs-mlp", DeepOBSMLP, "classification"),
    ModelEntry("deepobs-logreg", DeepOBSLogReg, "classification"),
)}


def model_names() -> list[str]:
    return list(MODELS)


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int = 0, task: str = "classification",
    **options,
) -> nn.Module:
    """A fresh built-in model ``name`` for inputs of ``input_shape`` (per sample) and the given task
    (any other name or an import path: :func:`optimlab.registry.build_model`).

    Initialized from the global RNG (torch's default initializers; the ``deepobs-*`` models: DeepOBS's):
    seed before calling for a reproducible initialization. Unknown names, unknown options and a model
    that does not fit the task raise :class:`OptimlabError` with the valid choices.
    """
    if name not in MODELS:
        raise OptimlabError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    entry = MODELS[name]
    if entry.task != task:
        fitting = [n for n, e in MODELS.items() if e.task == task]
        raise OptimlabError(
            f"model {name!r} is for {entry.task}, but this data set is a {task} problem; "
            f"use one of: {', '.join(fitting)}"
        )
    return entry.build(input_shape, num_classes, task, **options)
