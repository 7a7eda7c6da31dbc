"""Constraints by name for the command line and run settings: ``"l2norm<=1"`` and the like.

A text is ``NAME <= BOUND``, ``NAME >= BOUND`` or ``NAME == BOUND``; it becomes the violation
g(theta) = NAME(model) - BOUND (for ``>=``: BOUND - NAME(model)), an inequality g <= 0 or an equality.
Names: ``l2norm``, the squared L2 norm of all the model's parameters (seed 001's constraint, written
|theta|^2 <= 1 there), and ``l1norm``, the sum of their absolute values; names installed plugins add
(:func:`add_measure`); or a measure of the user's by import path, ``mypkg.measures:spectral<=1``: a
function ``measure(model) -> scalar tensor``, differentiable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from optimlab.errors import OptimlabError
from optimlab.imports import import_object, is_import_path

MEASURES: dict[str, Callable[[nn.Module], torch.Tensor]] = {
    "l2norm": lambda model: sum(p.pow(2).sum() for p in model.parameters()),
    "l1norm": lambda model: sum(p.abs().sum() for p in model.parameters()),
}
# names added by installed plugins (optimlab.registry fills it when it loads them)
ADDED: dict[str, Callable[[nn.Module], torch.Tensor]] = {}
_PATTERN = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_.]*(?::[A-Za-z_][A-Za-z0-9_.]*)?)\s*(<=|>=|==)\s*([^\s]+)\s*$")


def add_measure(name: str, measure: Callable[[nn.Module], torch.Tensor]) -> None:
    """Make ``name`` a constraint measure (a plugin's)."""
    ADDED[name] = measure


def measure_of(name: str) -> Callable[[nn.Module], torch.Tensor]:
    """The function behind a measure's name or import path."""
    if name in MEASURES:
        return MEASURES[name]
    if name in ADDED:
        return ADDED[name]
    if is_import_path(name):
        fn = import_object(name, "constraint measure")
        if not callable(fn):
            raise OptimlabError(f"constraint measure {name!r} is {type(fn).__name__}, not a function "
                                "measure(model) -> tensor")
        return fn
    raise OptimlabError(f"unknown constraint {name!r}; valid: {', '.join([*MEASURES, *ADDED])}, or an "
                        "import path package.module:function of a measure(model)")


@dataclass(frozen=True)
class NamedConstraint:
    """``measure(model) <op> bound``; ``violation(model)`` is g (<= 0 or == 0 when satisfied)."""

    measure: str
    op: str
    bound: float

    @property
    def text(self) -> str:
        """As written, normalized: e.g. ``l2norm<=1``."""
        return f"{self.measure}{self.op}{self.bound:g}"

    @property
    def key(self) -> str:
        """An identifier for records and the problem: e.g. ``l2norm_le_1``, ``l1norm_ge_0p5``."""
        op = {"<=": "le", ">=": "ge", "==": "eq"}[self.op]
        bound = f"{self.bound:g}".replace("-", "m").replace(".", "p").replace("+", "")
        return f"{re.sub(r'[^A-Za-z0-9_]', '_', self.measure)}_{op}_{bound}"

    @property
    def kind(self) -> str:
        return "==" if self.op == "==" else "<="

    def violation(self, model: nn.Module) -> torch.Tensor:
        value = measure_of(self.measure)(model)
        return self.bound - value if self.op == ">=" else value - self.bound


def parse_constraint(text: str) -> NamedConstraint:
    """Parse ``"l2norm<=1"``; errors say what is valid."""
    match = _PATTERN.match(text) if isinstance(text, str) else None
    if match is None:
        raise OptimlabError(
            f"cannot read constraint {text!r}; write NAME<=BOUND, NAME>=BOUND or NAME==BOUND, "
            f"e.g. l2norm<=1 (names: {', '.join(MEASURES)})"
        )
    name, op, bound = match.groups()
    measure_of(name)  # known, or refused with what is valid
    try:
        value = float(bound)
    except ValueError:
        raise OptimlabError(f"constraint {text!r}: the bound {bound!r} is not a number") from None
    if not math.isfinite(value):
        raise OptimlabError(f"constraint {text!r}: the bound must be finite")
    return NamedConstraint(name, op, value)
