"""The min-norm solution of an underdetermined linear system, by gradient descent-ascent.

Problem: minimise f(x) = ||x||^2 subject to h(x) = A x - b = 0, with A of shape (m, n), m < n, of full
row rank: one equality group of shape (m,). Sign convention (optimlab's): the Lagrangian is
L(x, mu) = f(x) + mu . h(x), minimised over x and maximised over mu (mu is free for equalities).

Known answer: stationarity 2 x + A^T mu = 0 and feasibility A x = b give

    x*  = A^T (A A^T)^{-1} b          (the min-norm solution, A's pseudo-inverse times b)
    mu* = -2 (A A^T)^{-1} b

The example runs simultaneous gradient descent on x (SGD) and ascent on mu (NuPI; ``kp=0`` is plain
gradient ascent) in float64 from x = 0, mu = 0, and compares both with the closed form.

    python examples/constrained_tutorials/min_norm.py
"""

from __future__ import annotations

import time

import torch

from optimlab.constrained import ConstrainedOptimizer, Constraint, NuPI, Problem, State


def make_system(m: int = 8, n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (m, n) system, rows of norm about 1, and a right-hand side: float64."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g, dtype=torch.float64) / n**0.5
    b = torch.randn(m, generator=g, dtype=torch.float64)
    return a, b


def closed_form(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x*, mu*) of min ||x||^2 s.t. A x = b, for L = ||x||^2 + mu . (A x - b)."""
    y = torch.linalg.solve(a @ a.T, b)
    return a.T @ y, -2.0 * y


def run(m: int = 8, n: int = 32, steps: int = 500, lr: float = 0.2, dual_lr: float = 0.5,
        kp: float = 0.0, seed: int = 0) -> dict:
    """Solve one system; return the iterates, the closed form and the errors (relative, max-norm)."""
    torch.manual_seed(seed)
    a, b = make_system(m, n, seed)
    x = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))

    def compute() -> State:
        return State(x.pow(2).sum(), {"system": a @ x - b})  # h = A x - b = 0

    problem = Problem(compute, {"system": Constraint("==", m)}).double()
    opt = ConstrainedOptimizer(problem, torch.optim.SGD([x], lr=lr),
                               NuPI(problem.dual_parameters(), lr=dual_lr, Kp=kp))
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    seconds = time.perf_counter() - start
    x_star, mu_star = closed_form(a, b)
    x_hat, mu_hat = x.detach().clone(), problem.multipliers()["system"]
    return {
        "x": x_hat, "mu": mu_hat, "x_star": x_star, "mu_star": mu_star,
        "x_error": float((x_hat - x_star).norm() / x_star.norm()),
        "mu_error": float((mu_hat - mu_star).norm() / mu_star.norm()),
        "feasibility": float((a @ x_hat - b).abs().max()),
        "objective": float(x_hat.pow(2).sum()), "objective_star": float(x_star.pow(2).sum()),
        "m": m, "n": n, "steps": steps, "seconds": seconds,
    }


def main() -> None:
    torch.set_num_threads(1)  # small tensors: one thread is fastest
    r = run()
    print(f"min ||x||^2 s.t. Ax = b, A of shape ({r['m']}, {r['n']}), {r['steps']} steps in "
          f"{r['seconds']:.2f} s")
    print(f"  ||x||^2      {r['objective']:.10f}   closed form {r['objective_star']:.10f}")
    print(f"  x  rel. error {r['x_error']:.2e}   mu rel. error {r['mu_error']:.2e}   "
          f"max |Ax - b| {r['feasibility']:.2e}")
    print(f"  mu  {[round(v, 6) for v in r['mu'].tolist()]}")
    print(f"  mu* {[round(v, 6) for v in r['mu_star'].tolist()]}  (-2 (A A^T)^-1 b)")


if __name__ == "__main__":
    main()
