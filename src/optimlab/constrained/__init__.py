"""Constrained training: minimise f(theta) subject to g(theta) <= 0 and h(theta) = 0 with multipliers.

    problem = Problem(compute, {"norm": Constraint("<=")})      # compute(*batch) -> (loss, {"norm": g})
    opt = ConstrainedOptimizer(problem, primal=torch.optim.Adam(model.parameters(), lr=1e-3),
                               dual=torch.optim.SGD(problem.dual_parameters(), lr=1e-3))
    result = opt.step(x, y)   # loss, violations, multipliers, Lagrangian (and KKT measures if asked)

Constraints are groups of any shape, of kind ``"<="`` (g <= 0) or ``"=="`` (h = 0), each with its
formulation (Lagrangian, quadratic penalty, augmented Lagrangian), multiplier (dense, indexed with a
dense, sparse or lazy dual step, implicit) and penalty coefficient (with an optional updater). See
``optimizer`` for the schemes, ``flat`` for the one buffer of dense multipliers and ``distributed``
for data-parallel training.
"""

from optimlab.constrained.constraints import Constraint, State, Violation
from optimlab.constrained.diagnostics import KKT, Tolerances
from optimlab.constrained.formulations import (
    AugmentedLagrangian,
    Formulation,
    Lagrangian,
    QuadraticPenalty,
)
from optimlab.constrained.multipliers import DenseMultiplier, ImplicitMultiplier, IndexedMultiplier
from optimlab.constrained.nupi import NuPI
from optimlab.constrained.optimizer import SCHEMES, ConstrainedOptimizer, StepResult
from optimlab.constrained.penalties import AdditiveUpdater, MultiplicativeUpdater, PenaltyUpdater
from optimlab.constrained.problem import Problem

__all__ = [
    "KKT",
    "SCHEMES",
    "AdditiveUpdater",
    "AugmentedLagrangian",
    "ConstrainedOptimizer",
    "Constraint",
    "DenseMultiplier",
    "Formulation",
    "ImplicitMultiplier",
    "IndexedMultiplier",
    "Lagrangian",
    "MultiplicativeUpdater",
    "NuPI",
    "PenaltyUpdater",
    "Problem",
    "QuadraticPenalty",
    "State",
    "StepResult",
    "Tolerances",
    "Violation",
]
