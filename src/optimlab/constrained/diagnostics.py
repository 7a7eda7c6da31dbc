"""KKT diagnostics of a step: feasibility, complementary slackness, stationarity, and a stopping test.

All three are measured on what the step observed, at the point where it started:

* feasibility: max over observed entries of relu(g) (inequalities) and |h| (equalities), strict
  violations where given; 0 when nothing is observed;
* complementary slackness: max over observed inequality entries with a multiplier of |lambda * g|;
* stationarity: the Euclidean norm, over all primal parameters, of the gradient of the primal
  Lagrangian that the primal step used (f + the formulation terms, multipliers fixed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from optimlab.errors import OptimlabError


@dataclass(frozen=True)
class KKT:
    """The three measures (0-d tensors on the problem's device; ``float(...)`` to read them)."""

    feasibility: torch.Tensor
    complementary_slackness: torch.Tensor
    stationarity: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {"feasibility": float(self.feasibility),
                "complementary_slackness": float(self.complementary_slackness),
                "stationarity": float(self.stationarity)}


@dataclass(frozen=True)
class Tolerances:
    """Stop when feasibility, complementary slackness and stationarity are all at most these."""

    feasibility: float = 1e-4
    complementary_slackness: float = 1e-4
    stationarity: float = 1e-4

    def __post_init__(self) -> None:
        for name in ("feasibility", "complementary_slackness", "stationarity"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise OptimlabError(f"tolerance {name} must be a number >= 0; got {v!r}")

    def met(self, kkt: KKT) -> bool:
        ok = ((kkt.feasibility <= self.feasibility)
              & (kkt.complementary_slackness <= self.complementary_slackness)
              & (kkt.stationarity <= self.stationarity))
        return bool(ok)


def _max(values: list[torch.Tensor], device) -> torch.Tensor:
    if not values:
        return torch.zeros((), device=device)
    return torch.stack(values).max()


def measure(observed: Sequence, multipliers: dict[str, torch.Tensor],
            grads: Sequence[torch.Tensor], device) -> KKT:
    """KKT measures from the step's observations (``problem.Observed``), the multiplier values
    used (by name) and the gradients of the primal parameters."""
    feas, slack = [], []
    for ob in observed:
        g = ob.true_value
        if g.numel() == 0:
            continue
        if ob.constraint.inequality:
            feas.append(g.clamp_min(0).max())
            lam = multipliers.get(ob.name)
            if lam is not None:
                slack.append((lam * g).abs().max())
        else:
            feas.append(g.abs().max())
    if grads:
        norms = torch._foreach_norm(list(grads)) if hasattr(torch, "_foreach_norm") else [
            torch.linalg.vector_norm(g) for g in grads]
        stat = torch.linalg.vector_norm(torch.stack(list(norms)))
    else:
        stat = torch.zeros((), device=device)
    return KKT(_max(feas, device), _max(slack, device), stat)
