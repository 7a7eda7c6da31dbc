"""How a constraint group enters the Lagrangian: Lagrangian, quadratic penalty, augmented Lagrangian.

Notation for one group: g the differentiable (surrogate) violation that drives the primal update,
g_s the strict violation that drives the dual update (g_s = g unless a proxy is given), lambda the
multiplier (>= 0 for inequalities), c >= 0 the penalty coefficient. Inequalities are g <= 0,
equalities h = 0 (written g here too). Each formulation gives

* ``primal_term(g, lam, c)``: a scalar added to the loss and minimised over the primal parameters,
  with ``lam`` already detached;
* ``dual_signal(g_s, c)``: the tensor s (no gradient) whose product sum(lambda * s) the dual
  optimizer maximises, so the gradient of lambda is s.

=====================  ===========================================  ==================
formulation            primal term                                  dual signal s
=====================  ===========================================  ==================
lagrangian             sum(lam * g)                                 g_s
quadratic penalty      c/2 sum(relu(g)^2)  (equality: c/2 sum g^2)  (no multiplier)
augmented Lagrangian   1/(2c) sum(relu(lam + c g)^2 - lam^2)         c * g_s
                       (equality: sum(lam * g + c/2 g^2))
=====================  ===========================================  ==================

The augmented Lagrangian's dual step is scaled by c: SGD with lr 1 on it is the method of
multipliers, lambda <- relu(lambda + c g_s). Its inequality term is evaluated in a form with no
division by c where lambda + c g > 0 (lam * g + c/2 g^2), and equals -lam^2/(2c) elsewhere, which is 0
whenever c = 0 (lambda >= 0 then forces lambda = 0): no NaN at c = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from optimlab.errors import OptimlabError


def _sum(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 0 else t.sum()


class Formulation:
    """A stateless rule; one instance may serve many constraints."""

    name = ""
    uses_multiplier = True
    uses_penalty = False

    def primal_term(self, g: torch.Tensor, lam: torch.Tensor | None, c: torch.Tensor | None,
                    inequality: bool) -> torch.Tensor:
        raise NotImplementedError

    def dual_signal(self, g_strict: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Lagrangian(Formulation):
    """L = f + sum(lambda * g): gradient descent on theta, ascent on lambda with gradient g_s."""

    name = "lagrangian"

    def primal_term(self, g, lam, c, inequality):
        return _sum(lam * g)

    def dual_signal(self, g_strict, c):
        return g_strict


class QuadraticPenalty(Formulation):
    """f + c/2 sum(relu(g)^2) for inequalities, f + c/2 sum(h^2) for equalities; no multiplier.

    Only approximately feasible: at a fixed c the minimiser violates active constraints by O(1/c).
    """

    name = "quadratic_penalty"
    uses_multiplier = False
    uses_penalty = True

    def primal_term(self, g, lam, c, inequality):
        v = F.relu(g) if inequality else g
        return 0.5 * _sum(c * v * v)


class AugmentedLagrangian(Formulation):
    """The augmented Lagrangian with the method-of-multipliers dual step (scaled by c).

    Inequality: 1/(2c) sum(relu(lam + c g)^2 - lam^2); equality: sum(lam * g + c/2 g^2). The
    primal gradient is relu(lam + c g) * dg (equality: (lam + c g) * dg); the dual signal is c * g_s.
    """

    name = "augmented_lagrangian"
    uses_penalty = True

    def primal_term(self, g, lam, c, inequality):
        if not inequality:
            return _sum(lam * g + 0.5 * c * g * g)
        active = lam + c * g > 0
        safe_c = torch.where(c > 0, c, torch.ones_like(c))
        inside = lam * g + 0.5 * c * g * g
        outside = -lam * lam / (2 * safe_c)
        return _sum(torch.where(active, inside, outside))

    def dual_signal(self, g_strict, c):
        return c * g_strict


FORMULATIONS: dict[str, type[Formulation]] = {
    "lagrangian": Lagrangian,
    "quadratic_penalty": QuadraticPenalty,
    "penalty": QuadraticPenalty,
    "augmented_lagrangian": AugmentedLagrangian,
    "augmented": AugmentedLagrangian,
}


def make_formulation(spec: str | Formulation) -> Formulation:
    """A formulation from its name (``lagrangian``, ``quadratic_penalty``/``penalty``,
    ``augmented_lagrangian``/``augmented``) or an instance."""
    if isinstance(spec, Formulation):
        return spec
    if isinstance(spec, type) and issubclass(spec, Formulation):
        return spec()
    if isinstance(spec, str) and spec in FORMULATIONS:
        return FORMULATIONS[spec]()
    raise OptimlabError(f"unknown formulation {spec!r}; valid: {', '.join(FORMULATIONS)}")
