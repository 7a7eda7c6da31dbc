"""Constraints by name for the command line and run settings: ``"l2norm<=1"`` and the like.

A text is ``NAME <= BOUND``, ``NAME >= BOUND`` or ``NAME == BOUND``; it becomes the violation
g(theta) = NAME(model) - BOUND (for ``>=``: BOUND - NAME(model)), an inequality g <= 0 or an equality.
Names: ``l2norm``, the squared L2 norm of all the model's parameters (seed 001's constraint, written
|theta|^2 <= 1 there), and ``l1norm``, the sum of their absolute values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from optimlab.errors import OptimlabError

MEASURES: dict[str, Callable[[nn.Module], torch.Tensor]] = {
    "l2norm": lambda model: sum(p.pow(2).sum() for p in model.parameters()),
    "l1norm": lambda model: sum(p.abs().sum() for p in model.parameters()),
}
_PATTERN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==)\s*([^\s]+)\s*$")


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
        return f"{self.measure}_{op}_{bound}"

    @property
    def kind(self) -> str:
        return "==" if self.op == "==" else "<="

    def violation(self, model: nn.Module) -> torch.Tensor:
        value = MEASURES[self.measure](model)
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
    if name not in MEASURES:
        raise OptimlabError(f"unknown constraint {name!r}; valid: {', '.join(MEASURES)}")
    try:
        value = float(bound)
    except ValueError:
        raise OptimlabError(f"constraint {text!r}: the bound {bound!r} is not a number") from None
    if not math.isfinite(value):
        raise OptimlabError(f"constraint {text!r}: the bound must be finite")
    return NamedConstraint(name, op, value)
