"""Rate-constrained classification with proxy constraints: demographic parity on two groups.

Data: a synthetic two-group set (``make_data``). Each point has two features and a group bit; group 1
(35 % of the points) lies 1.5 lower along the informative feature, so it has fewer positive labels.
Model: logistic regression on (features, group bit), full batch, cross-entropy.

Constraint: the positive-prediction rates r_0, r_1 of the two groups within ``tolerance`` (0.05) of
each other, |r_0 - r_1| <= 0.05, written as the inequality group of shape (2,)

    g = (r_0 - r_1 - 0.05,  r_1 - r_0 - 0.05) <= 0      (optimlab's sign convention: g <= 0 feasible)

The rate of hard predictions, mean(1[logit > 0]), has no useful gradient, so the model is driven by a
differentiable surrogate, the sigmoid rate mean(sigmoid(logit)), while the multipliers are driven by
the true (strict) rate: ``Violation(value=surrogate g, strict=hard-prediction g)`` (proxy
constraints, Cotter et al. 2019). Adam (lr 0.03) on the model, gradient ascent (lr 0.02; NuPI with
``kp=0``) on the multipliers, 1000 simultaneous full-batch steps on 4000 points.

Known answer: at the end the strict constraint holds on the training set, |r_0 - r_1| <= 0.05 (up
to one prediction, a rate step of 1/n_group), while the same model trained without the constraint
has a gap of about 0.48. Accuracy is the price: about 0.79 against 0.91, close to the best one can
get by choosing a threshold per group on the unconstrained model's scores (0.80 here), which the
linear model can represent and which the test computes by brute force.

    python examples/constrained_tutorials/fairness_rates.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from optimlab.constrained import ConstrainedOptimizer, Constraint, NuPI, Problem, State, Violation


def make_data(n: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs (n, 3): two features and the group bit, labels (n,) in {0, 1}, group (n,) in {0, 1})."""
    g = torch.Generator().manual_seed(seed)
    group = (torch.rand(n, generator=g) < 0.35).long()
    x = torch.randn(n, 2, generator=g)
    x[:, 0] += torch.where(group == 1, -1.0, 0.5)
    score = 2.0 * x[:, 0] + 1.0 * x[:, 1]
    labels = (torch.rand(n, generator=g) < torch.sigmoid(2.0 * score)).float()
    return torch.cat([x, group[:, None].float()], 1), labels, group


def group_rates(z: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """(mean of z over group 0, mean over group 1)."""
    return torch.stack([z[group == 0].mean(), z[group == 1].mean()])


def best_group_thresholds(scores: torch.Tensor, labels: torch.Tensor, group: torch.Tensor,
                          tolerance: float = 0.05) -> float:
    """The best training accuracy of "positive iff score > t_group" over all pairs of per-group
    thresholds with |r_0 - r_1| <= tolerance (exhaustive; a reference for the constrained model)."""
    counts = []
    for k in (0, 1):
        s, t = scores[group == k], labels[group == k].bool()
        sorted_t = t[torch.argsort(s, descending=True)].double()
        tp = torch.cat([torch.zeros(1, dtype=torch.float64), sorted_t.cumsum(0)])  # top j positive
        j = torch.arange(len(s) + 1, dtype=torch.float64)
        counts.append((j / len(s), tp + (len(s) - t.sum()) - (j - tp)))  # (rate, correct)
    (r0, c0), (r1, c1) = counts
    feasible = (r0[:, None] - r1[None, :]).abs() <= tolerance
    return float(((c0[:, None] + c1[None, :]) / len(labels))[feasible].max())


def run(n: int = 4000, steps: int = 1000, lr: float = 0.03, dual_lr: float = 0.02, kp: float = 0.0,
        tolerance: float = 0.05, constrained: bool = True, seed: int = 0) -> dict:
    """Train on ``make_data(n, seed)``; return the model, the data, the final training accuracy, the
    hard-prediction rates of both groups, their gap r_0 - r_1, the multipliers and the gap at every
    step."""
    x, y, group = make_data(n, seed)
    x_test, y_test, group_test = make_data(n, seed + 1000)  # held out, for the report
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)

    def compute() -> State:
        logits = model(x).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        if not constrained:
            return State(loss)
        soft = group_rates(torch.sigmoid(logits), group)  # differentiable surrogate
        hard = group_rates((logits > 0).float(), group).detach()  # the true rates
        gap, hard_gap = soft[0] - soft[1], hard[0] - hard[1]
        return State(loss, {"parity": Violation(
            value=torch.stack([gap - tolerance, -gap - tolerance]),
            strict=torch.stack([hard_gap - tolerance, -hard_gap - tolerance]))})

    adam = torch.optim.Adam(model.parameters(), lr=lr)
    if constrained:
        problem = Problem(compute, {"parity": Constraint("<=", 2)})
        opt = ConstrainedOptimizer(problem, adam, NuPI(problem.dual_parameters(), lr=dual_lr, Kp=kp))
    else:
        problem = Problem(compute)
        opt = ConstrainedOptimizer(problem, adam, scheme="unconstrained")
    history = []  # the strict gap r_0 - r_1 at every step (constrained runs)
    start = time.perf_counter()
    for _ in range(steps):
        result = opt.step()
        if constrained:
            history.append(result.violations["parity"][0] + tolerance)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        pred = (model(x).squeeze(1) > 0).float()
        pred_test = (model(x_test).squeeze(1) > 0).float()
    rates, rates_test = group_rates(pred, group), group_rates(pred_test, group_test)
    return {
        "model": model, "x": x, "y": y, "group": group,
        "accuracy": float((pred == y).float().mean()), "rates": rates.tolist(),
        "gap": float(rates[0] - rates[1]),
        "test_accuracy": float((pred_test == y_test).float().mean()),
        "test_gap": float(rates_test[0] - rates_test[1]),
        "multipliers": problem.multipliers()["parity"].tolist() if constrained else None,
        "gap_history": torch.stack(history).tolist() if history else [],
        "steps": steps, "seconds": seconds,
    }


def main() -> None:
    torch.set_num_threads(1)  # small tensors: one thread is fastest
    c, u = run(), run(constrained=False)
    print(f"demographic parity |r_0 - r_1| <= 0.05, {c['steps']} full-batch steps each "
          f"({c['seconds']:.2f} s constrained, {u['seconds']:.2f} s unconstrained)")
    for name, r in (("constrained  ", c), ("unconstrained", u)):
        print(f"  {name} train: rates {r['rates'][0]:.4f} / {r['rates'][1]:.4f}, gap {r['gap']:+.4f}, "
              f"accuracy {r['accuracy']:.4f}   held out: gap {r['test_gap']:+.4f}, "
              f"accuracy {r['test_accuracy']:.4f}")
    with torch.no_grad():
        scores = u["model"](u["x"]).squeeze(1)
    reference = best_group_thresholds(scores, u["y"], u["group"])
    print(f"  multipliers {[round(v, 4) for v in c['multipliers']]}; strict constraint "
          f"{'holds' if abs(c['gap']) <= 0.05 + 1e-6 else 'VIOLATED'} on the training set")
    print(f"  reference: per-group thresholds on the unconstrained scores with |gap| <= 0.05, best "
          f"training accuracy {reference:.4f}")


if __name__ == "__main__":
    main()
