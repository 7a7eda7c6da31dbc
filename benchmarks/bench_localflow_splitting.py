"""Splitting error of one epoch of local flows, and of one epoch of SGD, against the full-batch flow.

Least squares (``lls``, condition number 1e3 by default), l(theta) = 1/(2n) |X theta - y|^2, no bias.
From the same start theta0 and with the same batch order (batch b, k = n / b steps), for each h:

* the full-batch gradient flow over T = k h, in closed form: theta(T) = theta0 - V f_T(L) V^T grad l(theta0)
  with X^T X / n = V diag(L) V^T and f_T(lambda) = (1 - exp(-T lambda)) / lambda (``flow_factor``);
* one epoch of exact local flows (``least_squares_flow`` of each batch over time h): the Lie-Trotter
  splitting of that flow;
* one epoch of SGD at learning rate h (an Euler step of each local flow).

Error: |theta - theta_flow| / |theta_flow - theta0| (relative to the flow's displacement). Expected:
first order in h for both while h lambda_max(batch) << 1; SGD blows up past h = 2 / lambda_max(batch),
the local flows' error levels off (each batch's flow ends in that batch's own minimiser).

Run: python benchmarks/bench_localflow_splitting.py [--dataset lls:...] [--batch-size 50] [--seeds 0 1 2]
                                                   [--out DIR] [--figures docs/figures]
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from optimlab.data import epoch_batches, load_dataset
from optimlab.localflow import flow_factor, least_squares_flow

F64 = torch.float64


def full_flow(X: torch.Tensor, y: torch.Tensor, theta0: torch.Tensor, T: float) -> torch.Tensor:
    """The full-batch gradient flow of 1/(2n) |X theta - y|^2 from theta0 over time T (closed form)."""
    lam, V = torch.linalg.eigh(X.T @ X / X.shape[0])
    grad = X.T @ (X @ theta0 - y) / X.shape[0]
    return theta0 - V @ (flow_factor(lam.clamp_min(0.0), T) * (V.T @ grad))


def epoch(X, y, theta0, h: float, batches: list[torch.Tensor], exact: bool) -> torch.Tensor:
    """One epoch of exact local flows (``exact``) or of SGD steps, over the given batches."""
    theta = theta0.clone()
    for idx in batches:
        Xb, yb = X[idx], y[idx]
        if exact:
            theta = least_squares_flow(Xb, yb, theta, h)
        else:
            theta = theta - h * Xb.T @ (Xb @ theta - yb) / len(idx)
    return theta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="lls:n=1000,p=50,cond=1000,noise=0.1,seed=0")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="each seed draws theta0 ~ N(0, I) and the batch order")
    p.add_argument("--h-from", type=float, default=1e-5)
    p.add_argument("--h-to", type=float, default=1e2)
    p.add_argument("--points", type=int, default=29)
    p.add_argument("--out", default="runs/bench_localflow_splitting")
    p.add_argument("--figures", default=None, help="also copy the figure into this folder")
    args = p.parse_args()
    torch.set_num_threads(1)

    data = load_dataset(args.dataset, device="cpu")
    X, y = data.x_train.to(F64), data.y_train.to(F64)
    n = X.shape[0]
    hs = np.logspace(math.log10(args.h_from), math.log10(args.h_to), args.points)
    lam_batch = []
    errors = {name: np.zeros((len(args.seeds), len(hs))) for name in ("local flows", "SGD")}
    for s, seed in enumerate(args.seeds):
        gen = torch.Generator().manual_seed(seed)
        theta0 = torch.randn(X.shape[1], generator=gen, dtype=F64)
        batches = list(epoch_batches(n, args.batch_size, gen))
        lam_batch += [float(torch.linalg.eigvalsh(X[i].T @ X[i] / len(i))[-1]) for i in batches]
        for j, h in enumerate(hs):
            ref = full_flow(X, y, theta0, h * len(batches))
            scale = float((ref - theta0).norm())
            for name, exact in (("local flows", True), ("SGD", False)):
                err = float((epoch(X, y, theta0, h, batches, exact) - ref).norm()) / scale
                errors[name][s, j] = err if math.isfinite(err) else np.inf

    steps = len(batches)
    print(f"{args.dataset}, batch {args.batch_size} ({steps} steps per epoch, T = {steps} h), seeds "
          f"{args.seeds}; largest batch curvature lambda_max(X_B^T X_B / b) = {max(lam_batch):.3g} "
          f"(SGD stable for h < {2 / max(lam_batch):.3g}); full Hessian lambda_max = "
          f"{float(torch.linalg.eigvalsh(X.T @ X / n)[-1]):.3g}")
    print("relative error |theta_epoch - theta_flow(T)| / |theta_flow(T) - theta0|, median over seeds")
    print(f"{'h':>10}{'local flows':>14}{'SGD':>14}{'SGD / flows':>14}")
    med = {k: np.median(v, axis=0) for k, v in errors.items()}
    for j, h in enumerate(hs):
        a, b = med["local flows"][j], med["SGD"][j]
        print(f"{h:>10.3g}{a:>14.3e}{b:>14.3e}{b / a:>14.3g}")
    small = hs <= 1e-3
    for name in errors:
        slope = np.polyfit(np.log10(hs[small]), np.log10(med[name][small]), 1)[0]
        print(f"{name}: log-log slope for h <= 1e-3: {slope:.3f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "localflow_splitting.png"
    plot(hs, errors, figure, f"{data.name.split(',n_test')[0]}, batch {args.batch_size}")
    print(f"figure: {figure}")
    if args.figures:
        Path(args.figures).mkdir(parents=True, exist_ok=True)
        shutil.copy(figure, Path(args.figures) / figure.name)


def plot(hs, errors: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.6), dpi=80)
    ax = fig.add_subplot()
    for (name, e), style in zip(errors.items(), ("o-", "s-"), strict=True):
        finite = np.where(np.isfinite(e), e, np.nan)
        ax.plot(hs, np.nanmedian(finite, axis=0), style, ms=3, label=name)
        ax.fill_between(hs, np.nanmin(finite, axis=0), np.nanmax(finite, axis=0), alpha=0.2)
    ax.plot(hs, hs / hs[0] * np.nanmedian(errors["local flows"][:, 0]), "k:", lw=1, label="slope 1")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(top=1e3)
    ax.set_xlabel("h (flow time per batch = learning rate)")
    ax.set_ylabel("relative error after one epoch")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


if __name__ == "__main__":
    main()
