"""Seed 001's problem against Cooper 1.0 (``pip install cooper-optim``; skipped when absent).

Logistic regression on a slice of the bundled MNIST digits, squared L2 norm of the parameters <= 1,
Lagrangian formulation, simultaneous gradient descent-ascent with SGD on both sides, the same
initialization and the same batches: after 100 steps the parameters and the multiplier agree with
Cooper's to rtol 1e-5 (float32; they agree to about 1e-7), and so does every step's report.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from optimlab.constrained import ConstrainedOptimizer, Constraint, Problem, State
from optimlab.data import epoch_batches
from optimlab.models import build_model

cooper = pytest.importorskip("cooper", minversion="1.0")

STEPS, BATCH, SLICE = 100, 128, 1280
PRIMAL_LR, DUAL_LR = 0.1, 0.05


def squared_norm(model):
    linear = model[1]
    return linear.weight.pow(2).sum() + linear.bias.pow(2).sum()


def batches(n):
    order = torch.Generator().manual_seed(0)
    out = []
    while len(out) < n:
        out.extend(epoch_batches(SLICE, BATCH, order))
    return out[:n]


def cooper_run(model, x, y, plan):
    class NormConstrainedLogisticRegression(cooper.ConstrainedMinimizationProblem):  # as in seed 001
        def __init__(self):
            super().__init__()
            self.norm_constraint = cooper.Constraint(
                constraint_type=cooper.ConstraintType.INEQUALITY,
                formulation_type=cooper.formulations.Lagrangian,
                multiplier=cooper.multipliers.DenseMultiplier(num_constraints=1),
            )

        def compute_cmp_state(self, model, inputs, targets):
            loss = F.cross_entropy(model(inputs), targets)
            state = cooper.ConstraintState(violation=squared_norm(model) - 1.0)
            return cooper.CMPState(loss=loss, observed_constraints={self.norm_constraint: state})

    cmp = NormConstrainedLogisticRegression()
    opt = cooper.optim.SimultaneousOptimizer(
        cmp=cmp, primal_optimizers=torch.optim.SGD(model.parameters(), lr=PRIMAL_LR),
        dual_optimizers=torch.optim.SGD(cmp.dual_parameters(), lr=DUAL_LR, maximize=True))
    reports = []
    for idx in plan:
        _, state, store, _ = opt.roll(compute_cmp_state_kwargs={"model": model, "inputs": x[idx],
                                                                "targets": y[idx]})
        reports.append((state.loss.item(), store.lagrangian.item(),
                        store.multiplier_values[cmp.norm_constraint].item(),
                        state.observed_constraints[cmp.norm_constraint].violation.item()))
    return cmp.norm_constraint.multiplier.weight.detach()[0], reports


def optimlab_run(model, x, y, plan):
    def compute(xb, yb):
        return State(F.cross_entropy(model(xb), yb), {"norm": squared_norm(model) - 1.0})

    problem = Problem(compute, {"norm": Constraint("<=")})
    opt = ConstrainedOptimizer(problem, torch.optim.SGD(model.parameters(), lr=PRIMAL_LR),
                               torch.optim.SGD(problem.dual_parameters(), lr=DUAL_LR))
    reports = []
    for idx in plan:
        r = opt.step(x[idx], y[idx])
        reports.append((r.loss.item(), r.lagrangian.item(), r.multipliers["norm"].item(),
                        r.violations["norm"].item()))
    return problem.multipliers()["norm"], reports


def test_seed_001_matches_cooper_after_100_steps(mnist10k):
    x, y = mnist10k.x_train[:SLICE], mnist10k.y_train[:SLICE]
    torch.manual_seed(0)
    model = build_model("logreg", mnist10k.input_shape, mnist10k.num_classes)
    theirs, ours = copy.deepcopy(model), copy.deepcopy(model)
    plan = batches(STEPS)
    lam_theirs, rep_theirs = cooper_run(theirs, x, y, plan)
    lam_ours, rep_ours = optimlab_run(ours, x, y, plan)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lam_ours, lam_theirs, rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.tensor(rep_ours), torch.tensor(rep_theirs), rtol=1e-5, atol=1e-7)
    # the run is the seed's story: infeasible start, the multiplier rises, the violation falls
    violations = [r[3] for r in rep_ours]
    assert violations[0] > 1.5 and abs(violations[-1]) < 0.2 * violations[0]
    assert lam_ours.item() > 0.1 and (torch.tensor(rep_ours)[:, 2] >= 0).all()
