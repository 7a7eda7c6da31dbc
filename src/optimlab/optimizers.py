"""The optimizers by name, built on ``torch.optim`` with torch's own defaults.

A name may carry hyperparameters, Python-literal style: ``adam``, ``adam(betas=(0.9, 0.99))``,
``sgd(momentum=0.5, weight_decay=1e-4)``. The learning rate is given apart (``lr``).
"""

from __future__ import annotations

import ast
import inspect
import math
import re
from dataclasses import dataclass, field

import torch

from optimlab.errors import OptimlabError

# name -> (torch.optim class, the hyperparameters that make it that name)
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict]] = {
    "sgd": (torch.optim.SGD, {}),
    "momentum": (torch.optim.SGD, {"momentum": 0.9}),
    "nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "adam": (torch.optim.Adam, {}),
    "adamw": (torch.optim.AdamW, {}),
    "amsgrad": (torch.optim.Adam, {"amsgrad": True}),
    "nadam": (torch.optim.NAdam, {}),
    "radam": (torch.optim.RAdam, {}),
    "adagrad": (torch.optim.Adagrad, {}),
    "adadelta": (torch.optim.Adadelta, {}),
    "adamax": (torch.optim.Adamax, {}),
    "rmsprop": (torch.optim.RMSprop, {}),
}


# optimizers of the local problem (optimlab.localflow), by name -> their hyperparameters and defaults.
# They need more than the parameters (the model, the batch, the loss): the training loop builds them.
LOCAL_FLOW: dict[str, dict] = {
    "localflow-sgd": {"momentum": 0.0, "every": 10, "method": "hvp", "eps": 1e-4},  # SGD + curvature lr
    "exact-flow": {"rtol": 1e-6, "atol": 1e-9},  # linear models: the exact flow of each batch
}
LOCAL_FLOW_LR = 0.1


def optimizer_names() -> list[str]:
    return list(OPTIMIZERS) + list(LOCAL_FLOW)


def _signature(name: str) -> dict[str, object]:
    if name in LOCAL_FLOW:
        return dict(LOCAL_FLOW[name])
    cls = OPTIMIZERS[name][0]
    params = inspect.signature(cls.__init__).parameters
    return {k: p for k, p in params.items() if k not in ("self", "params", "lr")
            and p.kind is not inspect.Parameter.VAR_KEYWORD}


def hyperparameters(name: str) -> dict[str, object]:
    """The hyperparameters ``name`` accepts (besides ``lr``) with their values for that name."""
    _check_name(name)
    if name in LOCAL_FLOW:
        return dict(LOCAL_FLOW[name])
    values = {k: p.default for k, p in _signature(name).items()}
    values.update(OPTIMIZERS[name][1])
    return values


def default_lr(name: str) -> float:
    """torch's default learning rate of the optimizer behind ``name`` (the local-flow ones: 0.1)."""
    _check_name(name)
    if name in LOCAL_FLOW:
        return LOCAL_FLOW_LR
    lr = inspect.signature(OPTIMIZERS[name][0].__init__).parameters["lr"].default
    return float(lr)


def _check_name(name: str) -> None:
    if name not in OPTIMIZERS and name not in LOCAL_FLOW:
        raise OptimlabError(f"unknown optimizer {name!r}; valid: {', '.join(optimizer_names())}")


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer name with hyperparameter overrides, e.g. ``adam(betas=(0.9, 0.99))``."""

    name: str
    options: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> OptimizerSpec:
        """Parse ``name`` or ``name(key=literal, ...)``; errors name what is wrong and what is valid."""
        text = text.strip()
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_-]*)\s*(?:\((.*)\))?", text, flags=re.DOTALL)
        if match is None:
            raise OptimlabError(
                f"cannot read optimizer {text!r}; write a name or name(key=value, ...), "
                "e.g. adam(betas=(0.9, 0.99))"
            )
        name, inner = match.group(1), match.group(2)
        try:
            node = ast.parse(f"f({inner or ''})", mode="eval").body
        except SyntaxError:
            raise OptimlabError(
                f"cannot read optimizer {text!r}; write a name or name(key=value, ...), "
                "e.g. adam(betas=(0.9, 0.99))"
            ) from None
        if not isinstance(node, ast.Call) or node.args:
            raise OptimlabError(
                f"cannot read optimizer {text!r}; write a name or name(key=value, ...) with "
                "keyword arguments only"
            )
        options = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise OptimlabError(f"optimizer {text!r}: '**' is not allowed")
            try:
                options[kw.arg] = ast.literal_eval(kw.value)
            except ValueError:
                raise OptimlabError(
                    f"optimizer {text!r}: the value of {kw.arg} must be a literal "
                    "(number, True/False, tuple)"
                ) from None
        spec = cls(name, options)
        spec.validate()
        return spec

    def validate(self) -> None:
        _check_name(self.name)
        valid = _signature(self.name)
        unknown = sorted(set(self.options) - set(valid))
        if "lr" in self.options:
            raise OptimlabError(f"optimizer {self}: give the learning rate apart (--lr), not inside")
        if unknown:
            raise OptimlabError(
                f"optimizer {self.name!r} has no hyperparameter {', '.join(unknown)}; "
                f"valid: {', '.join(valid)}"
            )

    def __str__(self) -> str:
        if not self.options:
            return self.name
        inner = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items()))
        return f"{self.name}({inner})"


def check_lr(lr: object) -> float:
    """Return ``lr`` as a float, or raise :class:`OptimlabError` unless it is a finite number > 0."""
    try:
        value = float(lr)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise OptimlabError(f"learning rate {lr!r} is not a number; give a number > 0") from None
    if isinstance(lr, bool) or not math.isfinite(value) or value <= 0:
        raise OptimlabError(f"learning rate must be a finite number > 0; got {lr}")
    return value


def build_optimizer(
    spec: str | OptimizerSpec, params, lr: float | None = None, **overrides
) -> torch.optim.Optimizer:
    """A stock ``torch.optim`` optimizer for ``params``.

    ``spec`` is a name or an :class:`OptimizerSpec`; ``overrides`` take precedence over its options;
    ``lr=None`` means torch's default for that optimizer. Invalid values (e.g. a negative momentum)
    raise :class:`OptimlabError` naming the optimizer.
    """
    if isinstance(spec, str):
        spec = OptimizerSpec.parse(spec)
    spec = OptimizerSpec(spec.name, {**spec.options, **overrides})
    spec.validate()
    if spec.name in LOCAL_FLOW:
        raise OptimlabError(f"{spec.name} is not a torch.optim optimizer of parameters alone: it needs the "
                            "model and the batch; train with it through optimlab.training (TrainConfig)")
    cls, fixed = OPTIMIZERS[spec.name]
    lr = default_lr(spec.name) if lr is None else check_lr(lr)
    try:
        return cls(params, lr=lr, **{**fixed, **spec.options})
    except (ValueError, TypeError, RuntimeError) as e:
        raise OptimlabError(f"optimizer {spec}: {e}") from None
