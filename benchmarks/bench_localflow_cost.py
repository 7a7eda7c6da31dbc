"""Cost per step of the local-flow optimizers against plain SGD, timed in the same run.

Cases (``CASES``), each a model on a data set with a batch size, and its ways of stepping:

* sgd: ``zero_grad``, forward, ``backward``, ``torch.optim.SGD.step`` (the baseline);
* hvp/k, secant/k: SGD under ``CurvatureScheduler(every=k, method=...)`` (k = 1: the curvature measured
  every step; k = 10: every 10 steps, the cost amortized over the 10);
* exact-flow h: ``ExactFlow(model, lr=h).step(x, y)`` (linear models; its cost grows with h for
  classification, where it integrates a b x C ODE by adaptive RK45).

Each repeat times a block of ``--steps`` steps of every way, interleaved, on the same batches; the
block's seconds per step are divided by the SGD block's of the same repeat, and the table gives the
median over repeats of the ms per step and of that ratio. Models start from the same initialization;
the learning rate is small (``LR``) so that training stays in a regular regime.

Run: python benchmarks/bench_localflow_cost.py [--repeats 11] [--steps 100] [--cases ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from optimlab.data import epoch_batches, load_dataset
from optimlab.localflow import CurvatureScheduler, ExactFlow
from optimlab.models import build_model
from optimlab.training import loss_function

LR = 0.01
SCHEDULED = ["hvp/1", "hvp/10", "secant/1", "secant/10"]
# case -> (data set, model, batch size, ways besides sgd)
CASES = {
    "logreg": ("fashion-mnist", "logreg", 128, SCHEDULED + ["exact-flow 0.01", "exact-flow 1"]),
    "mlp": ("fashion-mnist", "mlp", 128, SCHEDULED),
    "lls": ("lls:n=1000,p=50,cond=1000,noise=0.1,seed=0", "linear", 50, ["hvp/1", "hvp/10", "exact-flow 1"]),
}


def stepper(way: str, data, model_name: str):
    """A function doing one step of ``way`` on the batch (x, y), on its own freshly initialized model."""
    torch.manual_seed(0)
    model = build_model(model_name, data.input_shape, data.num_classes, data.task)
    loss_fn = loss_function(data.task)
    if way.startswith("exact-flow"):
        opt = ExactFlow(model, lr=float(way.split()[1]))
        return lambda x, y: opt.step(x, y)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    if way == "sgd":
        def step(x, y):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        return step
    method, every = way.split("/")
    sched = CurvatureScheduler(opt, every=int(every), method=method)

    def scheduled(x, y):
        sched.step(lambda: loss_fn(model(x), y))
        opt.step()
    return scheduled


def time_case(case: str, repeats: int, steps: int) -> dict:
    name, model_name, batch, others = CASES[case]
    data = load_dataset(name, device="cpu")
    gen = torch.Generator().manual_seed(0)
    batches = []
    while len(batches) < steps:
        batches += list(epoch_batches(data.num_train, batch, gen, drop_last=True))
    batches = batches[:steps]
    x, y = data.x_train, data.y_train
    ways = {w: stepper(w, data, model_name) for w in ["sgd"] + others}
    for step in ways.values():  # warm-up
        for idx in batches[:10]:
            step(x[idx], y[idx])
    seconds = {w: [] for w in ways}
    for r in range(repeats):
        order = list(ways)[r % len(ways):] + list(ways)[:r % len(ways)]  # rotate: no fixed position
        for w in order:
            start = time.perf_counter()
            for idx in batches:
                ways[w](x[idx], y[idx])
            seconds[w].append((time.perf_counter() - start) / steps)
    return {w: {"ms": 1e3 * statistics.median(s),
                "ratio": statistics.median(a / b for a, b in zip(s, seconds["sgd"], strict=True)),
                "ratio_min": min(a / b for a, b in zip(s, seconds["sgd"], strict=True)),
                "ratio_max": max(a / b for a, b in zip(s, seconds["sgd"], strict=True))}
            for w, s in seconds.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--steps", type=int, default=100, help="steps per timed block (a multiple of 10)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench_localflow_cost")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats}, "
          f"{args.steps} steps per block, load average at start {os.getloadavg()[0]:.2f}")
    results = {}
    for case in args.cases:
        name, model_name, batch, _ = CASES[case]
        results[case] = time_case(case, args.repeats, args.steps)
        print(f"\n{case}: {model_name} on {name.split(',')[0]}, batch {batch}")
        print(f"{'way':<18}{'ms/step':>9}{'x sgd':>8}{'(min':>7}{'max)':>7}")
        for w, t in results[case].items():
            print(f"{w:<18}{t['ms']:>9.3f}{t['ratio']:>8.2f}{t['ratio_min']:>7.2f}{t['ratio_max']:>6.2f})")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost.json").write_text(json.dumps(results, indent=1))
    print(f"numbers: {out / 'cost.json'}")


if __name__ == "__main__":
    main()
