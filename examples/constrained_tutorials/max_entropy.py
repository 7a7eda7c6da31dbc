"""The maximum-entropy distribution of a die whose mean roll is 4.5 (moment constraints).

Problem: over the faces x = 1..6, minimise the negative entropy f(p) = sum_i p_i log p_i subject to
sum_i p_i = 1 and sum_i x_i p_i = 4.5: one equality group h(p) = (sum p - 1, E_p[x] - 4.5) = 0 of
shape (2,). The distribution is parametrised by its logarithms, p = exp(theta), which keeps it
positive (so no inequality p >= 0 is needed and the entropy is always defined); the sum is a
constraint, not built in as with a softmax, so that both multipliers are well defined.

Sign convention (optimlab's): L(p, mu) = f(p) + mu . h(p), mu free. Known answer: stationarity
log p_i + 1 + mu_1 + mu_2 x_i = 0 makes p a Gibbs distribution p_i = exp(beta x_i) / Z(beta), with
beta the root of E_beta[x] = 4.5 (beta = 0.37105, p = 0.0544 ... 0.3475), and

    mu_1* = log Z(beta) - 1,    mu_2* = -beta.

The constraints enter as an augmented Lagrangian (penalty c = 1; SGD on theta and on mu, whose step
c * h is then the method of multipliers' one): plain gradient descent-ascent also converges here, but
slower. At a solution (h = 0) the augmented Lagrangian's multipliers are the Lagrangian's, so both
compare with mu*. Everything in float64, from the uniform distribution and mu = 0.

    python examples/constrained_tutorials/max_entropy.py
"""

from __future__ import annotations

import math
import time

import torch

from optimlab.constrained import ConstrainedOptimizer, Constraint, Problem, State

FACES = torch.arange(1, 7, dtype=torch.float64)
MEAN = 4.5


def gibbs(beta: float, faces: torch.Tensor = FACES) -> tuple[torch.Tensor, float]:
    """p_i = exp(beta x_i) / Z and log Z."""
    logits = beta * faces
    log_z = float(torch.logsumexp(logits, 0))
    return torch.exp(logits - log_z), log_z


def run(steps: int = 1500, lr: float = 0.3, dual_lr: float = 0.3, penalty: float = 1.0,
        formulation: str = "augmented_lagrangian", mean: float = MEAN, seed: int = 0) -> dict:
    """Maximise the entropy; return p, the multipliers (mu_1 for the sum, mu_2 for the mean) and the
    constraint values at the end."""
    torch.manual_seed(seed)
    theta = torch.nn.Parameter(torch.full((6,), -math.log(6.0), dtype=torch.float64))  # uniform

    def compute() -> State:
        p = theta.exp()
        h = torch.stack([p.sum() - 1.0, (p * FACES).sum() - mean])  # h = 0
        return State((p * theta).sum(), {"moments": h})  # f = sum p log p, the negative entropy

    kwargs = {"penalty": penalty} if formulation != "lagrangian" else {}
    problem = Problem(compute, {"moments": Constraint("==", 2, formulation=formulation, **kwargs)})
    problem = problem.double()
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([theta], lr=lr),
                               torch.optim.SGD(problem.dual_parameters(), lr=dual_lr))
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    seconds = time.perf_counter() - start
    p = theta.detach().exp()
    return {
        "p": p, "multipliers": problem.multipliers()["moments"],
        "entropy": float(-(p * p.log()).sum()),
        "sum_minus_1": float(p.sum() - 1.0), "mean_minus_target": float((p * FACES).sum() - mean),
        "steps": steps, "seconds": seconds,
    }


def _bisect_beta(mean: float = MEAN) -> float:
    """The Gibbs parameter with E_beta[x] = mean (for main's printout; the test has its own)."""
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        p, _ = gibbs(mid)
        lo, hi = (mid, hi) if float((p * FACES).sum()) < mean else (lo, mid)
    return 0.5 * (lo + hi)


def main() -> None:
    torch.set_num_threads(1)  # small tensors: one thread is fastest
    r = run()
    beta = _bisect_beta()
    p_star, log_z = gibbs(beta)
    mu_star = [log_z - 1.0, -beta]
    print(f"max-entropy die with mean {MEAN}: {r['steps']} steps in {r['seconds']:.2f} s")
    print(f"  p   {[round(v, 6) for v in r['p'].tolist()]}")
    print(f"  p*  {[round(v, 6) for v in p_star.tolist()]}  (Gibbs, beta = {beta:.6f})")
    print(f"  max |p - p*| {float((r['p'] - p_star).abs().max()):.2e}   entropy {r['entropy']:.8f} "
          f"(p*: {float(-(p_star * p_star.log()).sum()):.8f})")
    print(f"  mu  {[round(v, 6) for v in r['multipliers'].tolist()]}   mu* (log Z - 1, -beta) "
          f"{[round(v, 6) for v in mu_star]}")
    print(f"  constraints: sum p - 1 = {r['sum_minus_1']:.1e}, E[x] - {MEAN} = {r['mean_minus_target']:.1e}")


if __name__ == "__main__":
    main()
