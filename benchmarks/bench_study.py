"""Time per epoch of a study's runs, one after another against trained together, on Fashion-MNIST.

For each model (``logreg``, ``mlp``; ``--models usercnn``: the user's BatchNorm CNN of
``examples/own_code``, ``mycode.nets:SmallCNN`` by import path, 8 and 16 channels) and optimizer
(``sgd``, ``adam``): 15 runs, 5 learning rates
(log-spaced, ``LRS``) x 3 seeds, batch 128, one epoch (test accuracy evaluated before and after,
``eval_train`` off unless ``--eval-train``), trained by every way of ``WAYS``:

* sequential: ``optimlab.training.train`` of each config, one after another;
* vectorized: ``optimlab.engine.group.train_group`` of the 15 configs, one pass (the CNN stacked
  too: a study does so only with ``[executor] stack = "always"`` on the CPU);
* processes: ``optimlab.study.run_study`` with the ``processes`` executor, one worker per core each
  training whole runs, into a study store in a temporary folder; the workers' start-up (importing
  torch, loading the data) is part of its time, as it is of a real study.

Loading the data is excluded; both ways run once on a small slice first (warm-up). Each repeat runs
the ways interleaved; the median seconds per epoch of the 15 runs is reported, with each way's speed-up
over sequential and the target of the vectorized way (>= 2x for logreg, >= 1.5x for the MLP; none for
the CNN, which a study trains one by one on the CPU because stacked it is measured slower). A way
is a function ``(configs, data) -> list[RunResult]``: add one to ``WAYS`` for another column.

The last column compares the ways' final test losses. They agree to ~1e-7, except at the largest
learning rates (Adam 1e-2, SGD 0.1 on the MLP), where a whole epoch amplifies summation-order
differences of the batched kernels (up to a few 1e-2 after 469 steps): ``train`` itself drifts the
same way when its Linear layers compute ``(w @ x.T).T`` instead of ``x @ w.T``.

Run: python benchmarks/bench_study.py [--threads 1] [--repeats 3] [--epochs 1]
                                      [--models logreg mlp usercnn] [--optimizers sgd adam] [--eval-train]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from optimlab.data import Dataset, load_dataset
from optimlab.engine.group import train_group
from optimlab.study import ExecutorSpec, load_results, parse_study, run_study
from optimlab.training import RunResult, TrainConfig, train

OWN_CODE = Path(__file__).resolve().parent.parent / "examples" / "own_code"
sys.path.insert(0, str(OWN_CODE))  # the user's package, as a study's python_path puts it

SEEDS = (0, 1, 2)
LRS = {"sgd": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1), "adam": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)}
TARGETS = {"logreg": 2.0, "mlp": 1.5, "usercnn": None}  # vectorized over sequential
# name in this benchmark -> (the model setting, its options)
MODELS = {"logreg": ("logreg", {}), "mlp": ("mlp", {}), "usercnn": ("mycode.nets:SmallCNN", {"channels": 8})}
BATCH = 128


def sequential(configs: list[TrainConfig], data: Dataset) -> list[RunResult]:
    return [train(c, data=data, keep_model=False) for c in configs]


def vectorized(configs: list[TrainConfig], data: Dataset) -> list[RunResult]:
    return train_group(configs, data=data, keep_models=False)


def processes(configs: list[TrainConfig], data: Dataset) -> list:
    """The same runs as a study on worker processes (they load the data themselves)."""
    c = configs[0]
    text = (f'name = "bench"\npython_path = ["{OWN_CODE}"]\ndataset = "{c.dataset}"\nmodel = "{c.model}"\n'
            f'batch_size = {c.batch_size}\nepochs = {c.epochs}\neval_train = {str(c.eval_train).lower()}\n'
            f'device = "cpu"\nvalidation = 0\noptimizers = ["{c.optimizer}"]\n'
            f'learning_rates = {sorted({x.lr for x in configs})}\n'
            f'seeds = {sorted({x.seed for x in configs})}\n'
            + ("[model_options]\n" if c.model_options else "")
            + "".join(f"{k} = {v}\n" for k, v in c.model_options.items()))
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_study(parse_study(text), out=tmp,
                            executor=ExecutorSpec(kind="processes", workers=os.cpu_count()))
        evals = load_results(outcome.store).evals
    finals = evals.sort_values("step").groupby(["lr", "seed"]).last()
    return [SimpleNamespace(final={"test_loss": finals.loc[(x.lr, x.seed)].test_loss}) for x in configs]


WAYS = {"sequential": sequential, "vectorized": vectorized, "processes": processes}


def study(model: str, optimizer: str, epochs: int, eval_train: bool) -> list[TrainConfig]:
    """The 15 configs: learning rates x seeds of one model and optimizer."""
    name, options = MODELS[model]
    return [TrainConfig(dataset="fashion-mnist", model=name, model_options=options, optimizer=optimizer,
                        lr=lr, seed=seed, batch_size=BATCH, epochs=epochs, eval_train=eval_train,
                        device="cpu")
            for seed in SEEDS for lr in LRS[optimizer]]


def warm_up(data: Dataset, models: list[str], optimizers: list[str]) -> None:
    """Every way once on 1024 samples: first-call costs (kernels, vmap set-up) out of the timings."""
    part = Dataset(data.name, data.x_train[:1024], data.y_train[:1024], data.x_test[:256],
                   data.y_test[:256], data.task, data.classes)
    for m in models:
        for o in optimizers:
            for way in (sequential, vectorized):  # processes: start-up is part of its cost
                way(study(m, o, 1, False)[:4], part)


def largest_difference(a: list[RunResult], b: list[RunResult]) -> float:
    """Largest relative difference of the final test losses of two ways' runs (they agree to
    ~1e-7 but for the largest learning rates, where a whole epoch of chaotic training amplifies
    summation-order differences: see the note in the module docstring)."""
    return max(abs(x.final["test_loss"] - y.final["test_loss"]) / abs(y.final["test_loss"])
               for x, y in zip(a, b, strict=True))


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--models", nargs="+", default=["logreg", "mlp"], choices=sorted(TARGETS))
    p.add_argument("--optimizers", nargs="+", default=["sgd", "adam"], choices=sorted(LRS))
    p.add_argument("--eval-train", action="store_true", help="also evaluate on the training set")
    p.add_argument("--train-samples", type=int, default=None,
                   help="train on the first N training images only (the CNN: an epoch of all 60,000 "
                   "takes minutes a way); leaves out the processes way")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    data = load_dataset("fashion-mnist", device="cpu")
    if args.train_samples:  # the workers would load the whole named set: processes left out
        WAYS.pop("processes")
        data = Dataset(data.name, data.x_train[:args.train_samples], data.y_train[:args.train_samples],
                       data.x_test, data.y_test, data.task, data.classes)
    warm_up(data, args.models, args.optimizers)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, epochs {args.epochs} of "
          f"{data.num_train} samples, "
          f"repeats {args.repeats}, runs {len(SEEDS)} seeds x 5 lrs, batch {BATCH}, eval_train "
          f"{args.eval_train}, cpus {os.cpu_count()}; load average at start: {load()}")
    cases = [(m, o) for m in args.models for o in args.optimizers]
    times = {(case, w): [] for case in cases for w in WAYS}
    worst = dict.fromkeys(cases, 0.0)
    for r in range(args.repeats):
        for case in cases:
            configs = study(*case, args.epochs, args.eval_train)
            results = {}
            for w, way in WAYS.items():  # interleaved: every way once per case per repeat
                start = time.perf_counter()
                results[w] = way(configs, data)
                times[case, w].append((time.perf_counter() - start) / args.epochs)
            worst[case] = max(worst[case], *(largest_difference(res, results["sequential"])
                                             for res in results.values()))
        print(f"  repeat {r + 1}/{args.repeats} done, load average {load()}", flush=True)

    others = [w for w in WAYS if w != "sequential"]
    print(f"\n{'model':<8}{'optimizer':<11}" + "".join(f"{w + ' s/ep':>17}" for w in WAYS)
          + "".join(f"{'speed-up ' + w[:5]:>16}" for w in others)
          + f"{'target':>8}  result  max rel diff of a final test loss")
    for case in cases:
        med = {w: statistics.median(times[case, w]) for w in WAYS}
        ratios = {w: med["sequential"] / med[w] for w in others}
        target = TARGETS[case[0]]
        verdict = "-" if target is None else "PASS" if ratios["vectorized"] >= target else "FAIL"
        shown = "-" if target is None else f"{target:.1f}x"
        print(f"{case[0]:<8}{case[1]:<11}" + "".join(f"{med[w]:>17.3f}" for w in WAYS)
              + "".join(f"{ratios[w]:>15.2f}x" for w in others)
              + f"{shown:>8}  {verdict:<8}{worst[case]:.1e}")
    print(f"load average at end (1, 5, 15 min): {load()}")


if __name__ == "__main__":
    main()
