"""The constrained-training tutorials (examples/constrained_tutorials) against their known answers.

Each truth is computed here, independently of the example: the min-norm problem's KKT system solved
directly and the pseudo-inverse; the max-entropy Gibbs parameter by bisection in plain floats; the
fairness rates recounted from the trained model's predictions, and the best per-group thresholds of
the unconstrained model found by brute force; the sparsity budget's density by sampling the gates,
and the accuracy from the weights and the test-time gates written out. Small step counts and data.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

TUTORIALS = Path(__file__).resolve().parents[2] / "examples" / "constrained_tutorials"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"constrained_tutorial_{name}", TUTORIALS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- min-norm solution of A x = b --------------------------------------------------------------------

@pytest.mark.parametrize("m, n, seed, kp, steps", [(8, 32, 0, 0.0, 300), (5, 20, 1, 1.0, 400)])
def test_min_norm_matches_the_kkt_solution(m, n, seed, kp, steps):
    tutorial = load("min_norm")
    r = tutorial.run(m=m, n=n, steps=steps, kp=kp, seed=seed)
    a, b = tutorial.make_system(m, n, seed)
    # KKT of L = |x|^2 + mu.(Ax - b): [[2I, A^T], [A, 0]] [x; mu] = [0; b], solved as one linear system
    kkt = torch.zeros(n + m, n + m, dtype=torch.float64)
    kkt[:n, :n] = 2.0 * torch.eye(n, dtype=torch.float64)
    kkt[:n, n:], kkt[n:, :n] = a.T, a
    sol = torch.linalg.solve(kkt, torch.cat([torch.zeros(n, dtype=torch.float64), b]))
    x_star, mu_star = sol[:n], sol[n:]
    torch.testing.assert_close(x_star, torch.linalg.pinv(a) @ b, rtol=1e-10, atol=1e-12)  # min norm
    assert (r["x"] - x_star).norm() / x_star.norm() < 1e-9
    assert (r["mu"] - mu_star).norm() / mu_star.norm() < 1e-9
    assert (a @ r["x"] - b).abs().max() < 1e-9
    # optimlab's sign (L = f + mu . h): mu* = -2 (A A^T)^-1 b
    assert (mu_star + 2.0 * torch.linalg.solve(a @ a.T, b)).abs().max() < 1e-10


# -- max-entropy die -------------------------------------------------------------------------------

def gibbs_truth(mean: float) -> tuple[list[float], list[float], float]:
    """p*, (mu_1*, mu_2*) = (log Z - 1, -beta) and the entropy, with beta by bisection (plain floats)."""
    faces = range(1, 7)

    def mean_at(beta: float) -> float:
        w = [math.exp(beta * i) for i in faces]
        return sum(i * wi for i, wi in zip(faces, w, strict=True)) / sum(w)

    lo, hi = -20.0, 20.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean_at(mid) < mean else (lo, mid)
    beta = 0.5 * (lo + hi)
    z = sum(math.exp(beta * i) for i in faces)
    p = [math.exp(beta * i) / z for i in faces]
    return p, [math.log(z) - 1.0, -beta], math.log(z) - beta * mean


@pytest.mark.parametrize("mean", [4.5, 3.5, 2.0])
def test_max_entropy_is_the_gibbs_distribution(mean):
    r = load("max_entropy").run(steps=1200, mean=mean)
    p_star, mu_star, entropy_star = gibbs_truth(mean)
    if mean == 4.5:
        assert abs(-mu_star[1] - 0.371049) < 1e-6  # the die's beta
    assert max(abs(a - b) for a, b in zip(r["p"].tolist(), p_star, strict=True)) < 1e-5
    assert max(abs(a - b) for a, b in zip(r["multipliers"].tolist(), mu_star, strict=True)) < 1e-4
    assert abs(r["entropy"] - entropy_star) < 1e-6
    assert abs(r["sum_minus_1"]) < 1e-5 and abs(r["mean_minus_target"]) < 1e-5


# -- demographic parity with proxy constraints -----------------------------------------------------

@pytest.fixture(scope="module")
def fairness():
    tutorial = load("fairness_rates")
    return tutorial.run(n=2000, steps=600), tutorial.run(n=2000, steps=600, constrained=False), tutorial


def recount(r) -> tuple[float, float, float, torch.Tensor]:
    """(rate of group 0, of group 1, accuracy, scores), from the model's own predictions."""
    with torch.no_grad():
        scores = r["model"](r["x"]).squeeze(1)
    pred, g = scores > 0, r["group"]
    rate0 = pred[g == 0].sum().item() / (g == 0).sum().item()
    rate1 = pred[g == 1].sum().item() / (g == 1).sum().item()
    return rate0, rate1, (pred == r["y"].bool()).float().mean().item(), scores


def test_fairness_strict_constraint_holds_only_when_constrained(fairness):
    constrained, unconstrained, _ = fairness
    tol, n1 = 0.05, int((constrained["group"] == 1).sum())
    r0, r1, acc, _ = recount(constrained)
    assert abs(r0 - constrained["rates"][0]) < 1e-6 and abs(r1 - constrained["rates"][1]) < 1e-6
    assert abs(r0 - r1) <= tol + 1.0 / n1  # the strict (hard-prediction) rates: within one prediction
    last = constrained["gap_history"][-100:]  # settled on the boundary, not swinging across it
    assert min(last) > tol - 0.01 and max(last) <= tol + 2.0 / n1
    u0, u1, u_acc, _ = recount(unconstrained)
    assert abs(u0 - u1) > 0.3  # without the constraint: violated by far
    assert acc == pytest.approx(constrained["accuracy"]) and u_acc > acc + 0.05  # parity costs accuracy
    lam = constrained["multipliers"]
    assert lam[0] > 0.1 and lam[1] == 0.0  # only r_0 - r_1 <= tol is active (group 0 is favoured)


def test_fairness_accuracy_is_near_the_best_group_thresholds(fairness):
    """Brute force: the best accuracy of per-group thresholds on the unconstrained model's scores with
    |r_0 - r_1| <= 0.05 (a classifier of the same linear family); the constrained model is close."""
    constrained, unconstrained, tutorial = fairness
    _, _, acc, _ = recount(constrained)
    _, _, _, scores = recount(unconstrained)
    y, g = unconstrained["y"].bool(), unconstrained["group"]
    per_group = []
    for k in (0, 1):
        s, t = scores[g == k], y[g == k]
        order = torch.argsort(s, descending=True)
        hits = torch.cat([torch.zeros(1), t[order].float().cumsum(0)])  # positives among the top j
        j = torch.arange(len(s) + 1, dtype=torch.float32)
        correct = hits + ((~t).sum() - (j - hits))  # top j predicted positive
        per_group.append((j / len(s), correct))
    (rate0, c0), (rate1, c1) = per_group
    ok = (rate0[:, None] - rate1[None, :]).abs() <= 0.05
    best = ((c0[:, None] + c1[None, :]) / len(y))[ok].max().item()
    assert 0.7 < best < 0.85
    assert tutorial.best_group_thresholds(scores, y, g) == pytest.approx(best, abs=1e-6)  # its printout
    assert acc > best - 0.02


# -- L0 sparsity budget on mnist-10k ---------------------------------------------------------------

@pytest.fixture(scope="module")
def sparsity(mnist10k):
    data = mnist10k
    tutorial = load("sparsity_budget")
    return (tutorial.run(epochs=10, data=data), tutorial.run(epochs=10, constrained=False, data=data),
            tutorial, data)


def test_sparsity_budget_is_met_and_accuracy_kept(sparsity):
    constrained, unconstrained, tutorial, data = sparsity
    budget = constrained["budget"]
    gates = constrained["model"].gates
    # the expected density by sampling the training-time gates (4000 x 784 draws): an independent estimate
    torch.manual_seed(123)
    gates.train()
    with torch.no_grad():
        sampled = (gates(4000) > 0).float().mean().item()
    gates.eval()
    assert abs(sampled - constrained["density"]) < 0.005
    assert constrained["density"] <= budget + 0.005 and sampled <= budget + 0.01
    assert unconstrained["density"] > 0.7  # the unconstrained gated model is far over budget
    # test accuracy from the weights and the test-time gates, written out
    with torch.no_grad():
        z = (torch.sigmoid(gates.log_alpha) * 1.2 - 0.1).clamp(0, 1)
        lin = constrained["model"].linear
        logits = (data.x_test.flatten(1) * z) @ lin.weight.T + lin.bias
        acc = (logits.argmax(1) == data.y_test).float().mean().item()
    assert acc == pytest.approx(constrained["accuracy"], abs=1e-6)
    assert (z > 0).float().mean().item() <= budget + 0.02  # the test-time gates too, nearly
    assert acc >= 0.88 and acc >= unconstrained["accuracy"] - 0.01
