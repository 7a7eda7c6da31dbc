"""A constraint group (its kind, shape, formulation, multiplier, penalty) and what a step observes of it.

Sign convention: an inequality group is g(theta) <= 0 and an equality group h(theta) = 0; a
"violation" is the value of g or h (positive means infeasible for an inequality). A requirement
c(theta) >= eps is written eps - c(theta) <= 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from optimlab.constrained.formulations import Formulation, Lagrangian, make_formulation
from optimlab.constrained.multipliers import (
    MULTIPLIER_KINDS,
    DenseMultiplier,
    ImplicitMultiplier,
    IndexedMultiplier,
    Multiplier,
)
from optimlab.constrained.penalties import PenaltyUpdater
from optimlab.errors import OptimlabError

KINDS = {"<=": "inequality", "ineq": "inequality", "inequality": "inequality",
         "==": "equality", "=": "equality", "eq": "equality", "equality": "equality"}


@dataclass(slots=True)
class Violation:
    """What one step observed of a constraint group, when more than a plain tensor is needed.

    ``value``: the differentiable violation g (drives the primal update), of the group's shape, or
    of ``indices``' shape when only some entries are observed. ``strict``: the true violation, same
    shape, possibly non-differentiable, used for the dual update, the diagnostics and the penalty
    updaters instead of ``value`` (proxy constraints). ``indices``: 1-D long tensor of the observed
    entries in the flattened group (sampled constraints). ``features``: the input of an implicit
    multiplier, one row per observed entry.

    ``strict_indices`` / ``strict_features`` (Cooper's ``strict_constraint_features``): where the
    strict measurement observes other entries than the differentiable one, the entries of ``strict``
    (its shape is then that of ``strict_indices``) / the implicit multiplier's input for them. The
    dual update, the reported multipliers and violations, the diagnostics and the penalty updaters
    then use these entries; the primal update uses ``indices``/``features``. They need ``strict``.

    ``contributes_to_primal_update`` / ``contributes_to_dual_update`` (Cooper's flags, per step):
    False leaves the group's term out of the primal Lagrangian (the model's step ignores it) / out of
    the dual one (its multipliers get no gradient, so their optimizer leaves them and its state
    alone). The violation is reported either way; penalty updaters still see it.
    """

    value: torch.Tensor
    strict: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    features: torch.Tensor | None = None
    strict_indices: torch.Tensor | None = None
    strict_features: torch.Tensor | None = None
    contributes_to_primal_update: bool = True
    contributes_to_dual_update: bool = True


@dataclass
class State:
    """What the problem's ``compute`` returns for one batch.

    ``loss``: scalar tensor, or None for a feasibility problem. ``violations``: constraint name ->
    tensor g (the group's shape) or :class:`Violation`; a constraint left out is not observed at
    this step (its multiplier does not move). ``misc``: anything to pass through (e.g. accuracy).
    """

    loss: torch.Tensor | None = None
    violations: dict[str, torch.Tensor | Violation] = field(default_factory=dict)
    misc: dict[str, Any] = field(default_factory=dict)


class Constraint(nn.Module):
    """A group of constraints of any shape: ``Constraint("<=")`` is one scalar g(theta) <= 0.

    ``kind``: ``"<="`` / ``"inequality"`` / ``"ineq"`` or ``"=="`` / ``"equality"`` / ``"eq"``.
    ``shape``: the shape of the group (of its violation tensor when fully observed); an int n means
    (n,). ``formulation``: ``"lagrangian"`` (default), ``"quadratic_penalty"`` or
    ``"augmented_lagrangian"`` (or a :class:`Formulation`). ``multiplier``: ``"dense"`` (default),
    ``"indexed"`` (entries observed by index; ``IndexedMultiplier(n, dual_step="sparse" | "lazy")`` for
    a dual step that touches only the observed entries), or an :class:`ImplicitMultiplier` /
    ``nn.Module`` predicting multipliers from features. ``init``: initial multiplier value(s) (>= 0 for an
    inequality). ``penalty``: the penalty coefficient c >= 0 of the penalty formulations, a number
    (one for the group) or a tensor of the group's shape (one per entry). ``updater``: a
    :class:`PenaltyUpdater` the optimizer applies to c.

    State (``state_dict``): the multiplier's parameters and the buffers ``penalty`` and
    ``penalty_init`` (the initial coefficient, for ``reset_satisfied``).
    """

    def __init__(
        self,
        kind: str = "<=",
        shape: Sequence[int] | int = (),
        *,
        formulation: str | Formulation = "lagrangian",
        multiplier: str | Multiplier | nn.Module = "dense",
        init: float | torch.Tensor = 0.0,
        penalty: float | torch.Tensor | None = None,
        updater: PenaltyUpdater | None = None,
    ):
        super().__init__()
        if not isinstance(kind, str) or kind.strip().lower() not in KINDS:
            raise OptimlabError(
                f"unknown constraint type {kind!r}; valid: '<=' (inequality g <= 0) or '==' "
                "(equality h = 0), also written 'inequality'/'ineq' and 'equality'/'eq'. Write "
                "c(theta) >= eps as the inequality eps - c(theta) <= 0"
            )
        self.kind = KINDS[kind.strip().lower()]
        self.inequality = self.kind == "inequality"
        try:
            self.shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise OptimlabError(f"constraint shape must be a tuple of ints; got {shape!r}") from None
        self.formulation = make_formulation(formulation)
        self.multiplier = self._make_multiplier(multiplier, init)
        if self.multiplier is not None:
            self.multiplier.nonnegative = self.inequality
        # the shape a plain violation tensor must have (None: it needs indices or features)
        kind = self.multiplier.kind if self.multiplier is not None else "dense"
        self.plain_shape = torch.Size(self.shape) if kind == "dense" else None
        self.scalar_lagrangian = (type(self.formulation) is Lagrangian and kind == "dense"
                                  and self.shape == () and self.multiplier is not None)
        self._set_penalty(penalty, updater)

    def _make_multiplier(self, spec, init) -> Multiplier | None:
        form = self.formulation
        if not form.uses_multiplier:
            if not (isinstance(spec, str) and spec == "dense"):
                raise OptimlabError(f"the {form.name} formulation has no multiplier; drop multiplier=")
            return None
        if isinstance(spec, Multiplier):
            w = spec.explicit_weight()
            if w is not None and tuple(w.shape) != self.shape:
                raise OptimlabError(
                    f"the multiplier has shape {tuple(w.shape)} but the constraint has shape "
                    f"{self.shape}; declare Constraint(kind, {tuple(w.shape)}, ...) or give a multiplier "
                    "of the constraint's shape"
                )
            if w is not None and self.inequality and bool((w < 0).any()):
                raise OptimlabError("inequality multipliers must start >= 0; the multiplier given has "
                                    f"negative values (min {w.min().item():.4g})")
            return spec
        if isinstance(spec, nn.Module):
            return ImplicitMultiplier(spec)
        if spec == "dense":
            mult = DenseMultiplier(self.shape, init)
        elif spec == "indexed":
            if len(self.shape) != 1:
                raise OptimlabError(
                    f"an indexed multiplier needs a 1-D constraint group, Constraint(kind, n); "
                    f"got shape {self.shape}"
                )
            mult = IndexedMultiplier(self.shape[0], init)
        else:
            raise OptimlabError(
                f"unknown multiplier {spec!r}; valid: {', '.join(MULTIPLIER_KINDS)} (an "
                "ImplicitMultiplier or a torch.nn.Module for implicit)"
            )
        if self.inequality and bool((mult.weight < 0).any()):
            raise OptimlabError(f"inequality multipliers must start >= 0; got init {init!r}")
        return mult

    def _set_penalty(self, penalty, updater) -> None:
        form = self.formulation
        self.updater = updater
        if not form.uses_penalty:
            if penalty is not None or updater is not None:
                raise OptimlabError(
                    f"the {form.name} formulation has no penalty coefficient; use "
                    "formulation='augmented_lagrangian' or 'quadratic_penalty' to give penalty= or updater="
                )
            return
        if updater is not None and not isinstance(updater, PenaltyUpdater):
            raise OptimlabError(f"updater must be a PenaltyUpdater; got {type(updater).__name__}")
        c = torch.as_tensor(1.0 if penalty is None else penalty, dtype=torch.float32)
        if c.dim() and tuple(c.shape) != self.shape:
            raise OptimlabError(
                f"penalty coefficient has shape {tuple(c.shape)}; give a number or a tensor of the "
                f"constraint's shape {self.shape}"
            )
        if not bool(torch.isfinite(c).all()) or bool((c < 0).any()):
            raise OptimlabError(f"penalty coefficients must be finite and >= 0; got {penalty!r}")
        self.register_buffer("penalty", c.clone())
        self.register_buffer("penalty_init", c.clone())

    def penalty_at(self, indices: torch.Tensor | None) -> torch.Tensor | None:
        """The penalty coefficient for the observed entries (None without a penalty formulation)."""
        if not self.formulation.uses_penalty:
            return None
        c = self.penalty
        if indices is None or c.dim() == 0:
            return c
        return c.reshape(-1)[indices]

    def signature(self) -> list:
        """What makes a checkpoint of this constraint loadable: kind, shape, formulation, multiplier."""
        mult = self.multiplier.kind if self.multiplier is not None else "none"
        return [self.kind, list(self.shape), self.formulation.name, mult]

    def extra_repr(self) -> str:
        return f"{self.kind}, shape={self.shape}, formulation={self.formulation.name}"
