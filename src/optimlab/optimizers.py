"""The optimizers by name, built on ``torch.optim`` with torch's own defaults.

A name may carry hyperparameters, Python-literal style: ``adam``, ``adam(betas=(0.9, 0.99))``,
``sgd(momentum=0.5, weight_decay=1e-4)``. The learning rate is given apart (``lr``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from optimlab.calls import format_call, parse_call
from optimlab.errors import OptimlabError
from optimlab.muon import MuonWithAdamW


@dataclass(frozen=True)
class OptimizerEntry:
    """An optimizer by name: how to build it and what it guarantees.

    ``factory(params, lr=lr, **options)`` builds it (a ``torch.optim.Optimizer`` class or any callable
    returning one); ``fixed`` are the hyperparameters that make the name (``momentum``: SGD with
    ``momentum=0.9``). Guarantees, which the vectorized engine relies on and nothing else assumes:

    * ``lr_linear``: every step is ``p <- p - lr * u`` with ``u`` (and the optimizer's state)
      independent of ``lr``, given the gradients;
    * ``elementwise``: a tensor stacked from several parameters steps as each of them would alone
      (no norm, factorization or shape taken over a whole tensor or over all parameters).

    Both hold for the torch.optim names declared so (tests probe every one); an entry that does not
    declare them is trained run by run in a vectorized study.
    """

    name: str
    factory: Callable[..., torch.optim.Optimizer]
    fixed: dict = field(default_factory=dict)
    lr_linear: bool = False
    elementwise: bool = False
    default_lr: float | None = None  # None: the factory's own default
    source: str = "user"  # torch.optim, a plugin's package, an import path: where it comes from

    def _parameters(self) -> dict[str, inspect.Parameter] | None:
        """Every parameter of the factory (of ``__init__`` for a class); None when unreadable (C)."""
        target = self.factory.__init__ if inspect.isclass(self.factory) else self.factory
        try:
            return dict(inspect.signature(target).parameters)
        except (TypeError, ValueError):
            return None

    def signature(self) -> dict[str, inspect.Parameter]:
        """The hyperparameters the factory takes by name (not params, not lr)."""
        return {k: p for k, p in (self._parameters() or {}).items() if k not in ("self", "params", "lr")
                and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}

    def takes_any_option(self) -> bool:
        params = self._parameters()
        return params is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def hyperparameters(self) -> dict[str, object]:
        """The hyperparameters it accepts (besides ``lr``) with their values for this name."""
        values = {k: (None if p.default is inspect.Parameter.empty else p.default)
                  for k, p in self.signature().items()}
        values.update(self.fixed)
        return values

    def lr(self) -> float:
        """Its default learning rate: the entry's, else the factory's own default."""
        if self.default_lr is not None:
            return self.default_lr
        p = (self._parameters() or {}).get("lr")
        if p is None or not isinstance(p.default, int | float) or isinstance(p.default, bool):
            raise OptimlabError(f"optimizer {self.name!r} has no default learning rate; give one (lr=...)")
        return float(p.default)

    def check_options(self, options: dict, label: str | None = None) -> None:
        """Refuse ``lr`` among the options and, unless the factory takes ``**kwargs``, names it lacks."""
        label = label or self.name
        if "lr" in options:
            raise OptimlabError(f"optimizer {label}: give the learning rate apart (--lr), not inside")
        valid = self.signature()
        unknown = sorted(set(options) - set(valid))
        if unknown and not self.takes_any_option():
            raise OptimlabError(
                f"optimizer {label!r} has no hyperparameter {', '.join(unknown)}; "
                f"valid: {', '.join(valid) or 'none'}"
            )
        defaults = self.hyperparameters()
        for k, v in options.items():  # of the kind of its default: betas=0.9 is not a pair
            d = defaults.get(k)
            if isinstance(d, tuple) and not isinstance(v, list | tuple):
                raise OptimlabError(f"optimizer {label}: {k} is a tuple like {d!r}; got {v!r}")
            if isinstance(d, bool) and not isinstance(v, bool):
                raise OptimlabError(f"optimizer {label}: {k} is True or False; got {v!r}")
            if isinstance(d, int | float) and not isinstance(d, bool) and (
                    isinstance(v, bool) or not isinstance(v, int | float)):
                raise OptimlabError(f"optimizer {label}: {k} is a number like {d!r}; got {v!r}")

    def build(self, params, lr: float | None = None, label: str | None = None,
              **options) -> torch.optim.Optimizer:
        """The optimizer over ``params`` at ``lr`` (None: :meth:`lr`) with ``options`` over ``fixed``."""
        label = label or self.name
        self.check_options(options, label)
        lr = self.lr() if lr is None else check_lr(lr)
        try:
            optimizer = self.factory(params, lr=lr, **{**self.fixed, **options})
        except (ValueError, TypeError, RuntimeError) as e:
            raise OptimlabError(f"optimizer {label}: {e}") from None
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise OptimlabError(f"optimizer {label}: its factory returned {type(optimizer).__name__}, not a "
                                "torch.optim.Optimizer")
        return optimizer

    @property
    def stackable(self) -> bool:
        return self.lr_linear and self.elementwise

    def why_not_stacked(self, label: str | None = None) -> str | None:
        """A one-line reason why the vectorized engine trains its runs one by one (None: it need not)."""
        label = label or self.name
        if not self.lr_linear:
            return (f"optimizer {label} is not declared lr-linear (an update p - lr * u with u independent "
                    "of lr), so its runs are trained one by one")
        if not self.elementwise:
            return (f"optimizer {label} does not act entry by entry (it takes norms or shapes of whole "
                    "tensors), so stacked runs would mix; its runs are trained one by one")
        return None


def _torch(name: str, cls, fixed: dict | None = None, linear: bool = True, elementwise: bool = True):
    return OptimizerEntry(name, cls, dict(fixed or {}), lr_linear=linear, elementwise=elementwise,
                          source="torch.optim")


# The torch.optim names. lr-linear and elementwise unless said: ASGD's step size
# lr / (1 + lambd * lr * t)^alpha, Rprop's step sizes clamped to step_sizes and Adafactor's
# min(lr, 1 / sqrt(t)) are not linear in lr; Muon orthogonalizes whole matrices.
OPTIMIZERS: dict[str, OptimizerEntry] = {e.name: e for e in (
    _torch("sgd", torch.optim.SGD),
    _torch("momentum", torch.optim.SGD, {"momentum": 0.9}),
    _torch("nesterov", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    _torch("adam", torch.optim.Adam),
    _torch("adamw", torch.optim.AdamW),
    _torch("amsgrad", torch.optim.Adam, {"amsgrad": True}),
    _torch("nadam", torch.optim.NAdam),
    _torch("radam", torch.optim.RAdam),
    _torch("adagrad", torch.optim.Adagrad),
    _torch("adadelta", torch.optim.Adadelta),
    _torch("adamax", torch.optim.Adamax),
    _torch("rmsprop", torch.optim.RMSprop),
    _torch("asgd", torch.optim.ASGD, linear=False),
    _torch("rprop", torch.optim.Rprop, linear=False),
    _torch("adafactor", torch.optim.Adafactor, linear=False, elementwise=False),
    OptimizerEntry("muon", MuonWithAdamW, lr_linear=True, elementwise=False,
                   source="torch.optim (Muon + AdamW)"),
)}


# optimizers of the local problem (optimlab.localflow), by name -> their hyperparameters and defaults.
# They need more than the parameters (the model, the batch, the loss): the training loop builds them.
LOCAL_FLOW: dict[str, dict] = {
    # SGD + curvature lr, each measured rate checked on its batch (optimlab.localflow.scheduler)
    "localflow-sgd": {"momentum": 0.0, "every": 10, "method": "hvp", "eps": 1e-4, "guard": "armijo",
                      "armijo": 0.25, "backtracks": 10},
    "exact-flow": {"rtol": 1e-6, "atol": 1e-9},  # linear models: the exact flow of each batch
}
LOCAL_FLOW_LR = 0.1


def optimizer_names() -> list[str]:
    return list(OPTIMIZERS) + list(LOCAL_FLOW)


def hyperparameters(name: str) -> dict[str, object]:
    """The hyperparameters ``name`` accepts (besides ``lr``) with their values for that name."""
    _check_name(name)
    if name in LOCAL_FLOW:
        return dict(LOCAL_FLOW[name])
    return OPTIMIZERS[name].hyperparameters()


def default_lr(name: str) -> float:
    """torch's default learning rate of the optimizer behind ``name`` (the local-flow ones: 0.1)."""
    _check_name(name)
    if name in LOCAL_FLOW:
        return LOCAL_FLOW_LR
    return OPTIMIZERS[name].lr()


def _check_name(name: str) -> None:
    if name not in OPTIMIZERS and name not in LOCAL_FLOW:
        raise OptimlabError(f"unknown optimizer {name!r}; valid: {', '.join(optimizer_names())}")


# a name (letters, digits, _ and -) or an import path (dotted.module:attribute.path), then (options)


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer name with hyperparameter overrides, e.g. ``adam(betas=(0.9, 0.99))``.

    The name may be an import path ``package.module:attribute`` (a class or factory of the user's):
    ``mypkg.optim:Lion(betas=(0.9, 0.99))``. Parsing checks the syntax only; what a name means is
    :mod:`optimlab.registry`'s to say (built-in names: :func:`build_optimizer` here).
    """

    name: str
    options: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> OptimizerSpec:
        """Parse ``name`` or ``name(key=literal, ...)``; errors name what is wrong and what is valid."""
        name, options = parse_call(text, "optimizer", "adam(betas=(0.9, 0.99))")
        if "lr" in options:
            raise OptimlabError(f"optimizer {text.strip()}: give the learning rate apart (--lr), not inside")
        return cls(name, options)

    @property
    def is_import_path(self) -> bool:
        return ":" in self.name

    def __str__(self) -> str:
        return format_call(self.name, self.options)


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
    """A built-in optimizer (:data:`OPTIMIZERS`) for ``params``; for any other name, an import path or
    a class, use :func:`optimlab.registry.build_optimizer`.

    ``spec`` is a name or an :class:`OptimizerSpec`; ``overrides`` take precedence over its options;
    ``lr=None`` means torch's default for that optimizer. Invalid values (e.g. a negative momentum)
    raise :class:`OptimlabError` naming the optimizer.
    """
    if isinstance(spec, str):
        spec = OptimizerSpec.parse(spec)
    _check_name(spec.name)
    if spec.name in LOCAL_FLOW:
        raise OptimlabError(f"{spec.name} is not a torch.optim optimizer of parameters alone: it needs the "
                            "model and the batch; train with it through optimlab.training (TrainConfig)")
    options = {**spec.options, **overrides}
    return OPTIMIZERS[spec.name].build(params, lr=lr, label=str(OptimizerSpec(spec.name, options)),
                                       **options)
