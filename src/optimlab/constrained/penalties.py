"""Penalty-coefficient updaters: grow c where a constraint stays violated (multiplicatively or additively).

A coefficient c is a scalar for the whole group or one value per entry (the group's shape). An
updater looks at the strict violations observed at a step: an inequality entry is "violated" when
g > tolerance, an equality entry when |h| > tolerance. A per-entry coefficient changes only at the
violated (observed) entries; a scalar one changes when any observed entry is violated. With
``reset_satisfied``, inequality entries with g <= 0 go back to their initial coefficient.

The constrained optimizer applies the updater of each constraint itself every ``every`` steps.
"""

from __future__ import annotations

import math

import torch

from optimlab.errors import OptimlabError


class PenaltyUpdater:
    """Base class: subclasses define :meth:`grown` (the new value of a violated coefficient)."""

    def __init__(self, tolerance: float = 0.0, every: int = 1, max_value: float = math.inf,
                 reset_satisfied: bool = False):
        if not (isinstance(every, int) and every >= 1):
            raise OptimlabError(f"penalty updater: every must be an integer >= 1; got {every!r}")
        if not tolerance >= 0:
            raise OptimlabError(f"penalty updater: tolerance must be >= 0; got {tolerance!r}")
        self.tolerance, self.every = float(tolerance), every
        self.max_value, self.reset_satisfied = float(max_value), reset_satisfied

    def grown(self, c: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def update_(self, penalty: torch.Tensor, initial: torch.Tensor, violation: torch.Tensor,
                inequality: bool, indices: torch.Tensor | None = None) -> None:
        """Update ``penalty`` in place from the observed ``violation`` (entries at ``indices``)."""
        v = violation.detach()
        violated = (v > self.tolerance) if inequality else (v.abs() > self.tolerance)
        satisfied = (v <= 0) if (inequality and self.reset_satisfied) else None
        if penalty.dim() == 0:
            new = torch.where(violated.any(), self.grown(penalty).clamp_max(self.max_value), penalty)
            if satisfied is not None:
                new = torch.where(satisfied.all(), initial, new)
            penalty.copy_(new)
            return
        flat, flat0 = penalty.view(-1), initial.reshape(-1)
        idx = indices if indices is not None else slice(None)
        c = flat[idx].view(v.shape)
        new = torch.where(violated, self.grown(c).clamp_max(self.max_value), c)
        if satisfied is not None:
            new = torch.where(satisfied, flat0[idx].view(v.shape), new)
        flat[idx] = new.reshape(-1)


class MultiplicativeUpdater(PenaltyUpdater):
    """c <- min(c * factor, max_value) where violated (factor > 1)."""

    def __init__(self, factor: float = 2.0, tolerance: float = 0.0, every: int = 1,
                 max_value: float = math.inf, reset_satisfied: bool = False):
        super().__init__(tolerance, every, max_value, reset_satisfied)
        if not factor > 1:
            raise OptimlabError(f"multiplicative penalty updater: factor must be > 1; got {factor!r}")
        self.factor = float(factor)

    def grown(self, c):
        return c * self.factor


class AdditiveUpdater(PenaltyUpdater):
    """c <- min(c + increment, max_value) where violated (increment > 0)."""

    def __init__(self, increment: float = 1.0, tolerance: float = 0.0, every: int = 1,
                 max_value: float = math.inf, reset_satisfied: bool = False):
        super().__init__(tolerance, every, max_value, reset_satisfied)
        if not increment > 0:
            raise OptimlabError(f"additive penalty updater: increment must be > 0; got {increment!r}")
        self.increment = float(increment)

    def grown(self, c):
        return c + self.increment
