"""Assembling the primal and dual Lagrangians of one evaluation, with as few tensor operations as possible.

L_primal = f + sum over groups of the formulation's primal term (multipliers detached);
L_dual   = sum over groups of sum(lambda * s.detach()) (s: the formulation's dual signal).
One backward pass of L_primal + L_dual gives the primal gradients (theta is only in L_primal) and
the dual ones (lambda is only in L_dual).

With ``fuse=True``, a Lagrangian group without a proxy enters once as sum(lambda * g), whose
gradients are the same (lambda dg for theta, g for lambda) and whose value is its primal term; the
scalar ones are stacked into a single product, so ten such groups cost three tensor operations and
three autograd nodes instead of twenty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from optimlab.constrained.formulations import Lagrangian
from optimlab.constrained.problem import Observed
from optimlab.errors import OptimlabError


@dataclass(slots=True)
class Terms:
    """``primal``: L_primal (its value is the primal Lagrangian); ``dual``: L_dual of the groups not
    fused into ``primal`` (None if none); ``multipliers``: name -> detached copy of the values used;
    ``violations``: name -> the detached (strict) violations."""

    primal: torch.Tensor
    dual: torch.Tensor | None
    multipliers: dict[str, torch.Tensor]
    violations: dict[str, torch.Tensor]

    @property
    def total(self) -> torch.Tensor:
        return self.primal if self.dual is None else self.primal + self.dual


def _sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum() if t.dim() else t


def assemble(loss: torch.Tensor | None, observed: Sequence[Observed], fuse: bool,
             with_dual: bool = True, scale: float = 1) -> Terms:
    """The Lagrangians of an evaluation (see the module docstring). ``scale``: the factor of the terms
    of groups observed by entries (the number of ranks under data parallelism; ``distributed``)."""
    primal, dual, values, violations = loss, None, {}, {}
    scalar_w, scalar_g, scalar_names = [], [], []
    for ob in observed:
        c = ob.constraint
        mult = c.multiplier
        both = ob.primal and ob.dual
        if fuse and both and c.scalar_lagrangian and ob.strict is None:
            scalar_w.append(mult)
            scalar_g.append(ob.value)
            scalar_names.append(ob.name)
            continue
        violations[ob.name] = ob.true_value
        form = c.formulation
        if mult is None:
            term = form.primal_term(ob.value, None, c.penalty_at(ob.indices), c.inequality)
            if scale != 1 and ob.indices is not None:
                term = term * scale
        else:
            lam = mult.value(ob.indices, ob.features)
            if lam.shape != ob.value.shape:
                lam = _reshape_implicit(ob, lam, ob.value)
            pen = c.penalty_at(ob.indices) if form.uses_penalty else None
            if ob.separate_strict:  # the dual side observes entries of its own
                lam_d = mult.value(ob.strict_indices, ob.strict_features)
                if lam_d.shape != ob.strict.shape:
                    lam_d = _reshape_implicit(ob, lam_d, ob.strict)
                pen_d = c.penalty_at(ob.strict_indices) if form.uses_penalty else None
            else:
                lam_d, pen_d = lam, pen
            # the stored weight (or its view) is about to change in place: copy it; lookups are new tensors
            stored = ob.dual_indices is None and mult.explicit_weight() is not None
            values[ob.name] = lam_d.detach().clone() if stored else lam_d.detach()
            by_entries = ob.indices is not None or ob.features is not None
            if fuse and both and ob.strict is None and type(form) is Lagrangian:
                term = _sum(lam * ob.value)
                if scale != 1 and by_entries:
                    term = term * scale
            else:
                term = form.primal_term(ob.value, lam.detach(), pen, c.inequality) if ob.primal else None
                if term is not None and scale != 1 and by_entries:
                    term = term * scale
                if with_dual and ob.dual:
                    d = _sum(lam_d * form.dual_signal(ob.true_value, pen_d))
                    if scale != 1 and (ob.dual_indices is not None or ob.dual_features is not None):
                        d = d * scale
                    dual = d if dual is None else dual + d
        if term is not None and ob.primal:
            primal = term if primal is None else primal + term
    if scalar_w:
        if len(scalar_w) == 1:
            lam = scalar_w[0].weight
            term = lam * scalar_g[0]
            values[scalar_names[0]] = lam.detach().clone()
            violations[scalar_names[0]] = scalar_g[0].detach()
        else:
            lam, g = _stacked(scalar_w), torch.stack(scalar_g)
            term = torch.dot(lam, g) if lam.dtype == g.dtype else (lam * g).sum()
            values.update(zip(scalar_names, lam.detach().clone().unbind(), strict=True))
            violations.update(zip(scalar_names, g.detach().unbind(), strict=True))
        primal = term if primal is None else primal + term
    if primal is None and dual is not None:  # only multipliers move at this step
        primal = dual.detach() * 0
    if primal is None:
        raise OptimlabError("nothing to minimise at this step: no loss and no constraint observed")
    return Terms(primal, dual, values, violations)


def _stacked(mults: list) -> torch.Tensor:
    """The scalar multipliers as one vector: a slice of the problem's buffer when they lie side by
    side in it (one autograd node), else stacked."""
    first = mults[0]
    if first.flat is not None:
        start = first.span[0]
        if all(m.flat is not None and m.flat[0] is first.flat[0] and m.span[0] == start + k
               for k, m in enumerate(mults)):
            return first.flat[0][start:start + len(mults)]
    return torch.stack([m.weight for m in mults])


def _reshape_implicit(ob: Observed, lam: torch.Tensor, violation: torch.Tensor) -> torch.Tensor:
    if lam.numel() == violation.numel() and lam.dim() == violation.dim() + 1 and lam.shape[-1] == 1:
        return lam.reshape(violation.shape)
    raise OptimlabError(
        f"the multiplier of {ob.name!r} has shape {tuple(lam.shape)} but its violation has shape "
        f"{tuple(violation.shape)}: an implicit multiplier must give one value per observed entry"
    )
