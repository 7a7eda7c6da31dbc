"""Time per epoch of a study's runs, one after another against trained together, on Fashion-MNIST.

For each model (``logreg``, ``mlp``; ``--models cnn``: seed 004's CNN; ``--models usercnn``: the
user's BatchNorm CNN of ``examples/own_code``, ``mycode.nets:SmallCNN`` by import path, 8 and 16
channels) and optimizer (``sgd``, ``adam``): 15 runs, 5 learning rates
(log-spaced, ``LRS``) x 3 seeds, batch 128, one epoch (test accuracy evaluated before and after,
``eval_train`` off unless ``--eval-train``), trained by every way of ``WAYS``:

* plain: the baseline a user writes, a plain PyTorch loop over the resident tensors (contiguous,
  fp32) for each config; the CNN's targets (1.3x fp32, 2.5x bf16) are against it;
* sequential: ``optimlab.training.train`` of each config, one after another (a CNN in the layout
  ``memory_format = "auto"`` measures);
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

``--precisions bf16 fp16`` adds, per precision, its sequential and vectorized ways (fp16: sequential
only; a study trains fp16 runs one by one), and a table of each precision's speed-up over fp32 and
the largest relative difference of a final test loss from the fp32 sequential run's.

The rate table: the training FLOPs of an epoch of the 15 runs (forward and backward of every step,
counted by ``torch.utils.flop_counter`` on one step) over each way's seconds, against the peak of
this machine's matmul in the same precision measured in the same run (one thread, 1024^3, the
fastest of 7, before and after the ways); its last column, ``bound``, is the most vectorized could be
over sequential in fp32: the epoch's FLOPs at that peak, nothing else done.

``--compile`` adds the way ``compiled``: the sequential runs with ``compile = true``, every run's
compilation inside its time (torch's compile cache makes the later runs' cheaper, as in a study).

``--grid``: the comparison users make, as whole processes (start-up, imports and data loading
included, all cores): the 15-run grid (SGD, 5 learning rates x 3 seeds, the MLP, Fashion-MNIST, batch
128, ``--grid-epochs`` epochs, test set evaluated each epoch) as ``optimlab study run`` with each
executor (and vectorized in bf16) against the same grid as a Ray Tune grid search
(``benchmarks/raytune_grid.py``; ``pip install "optimlab[bench]"``). Target: optimlab >= 5x faster.
``--grid-optimizers sgd momentum``: a grid of several optimizers, so several groups (the worker pool
then trains them at once; Ray Tune's column is left out: its script trains SGD only).

Run: python benchmarks/bench_study.py [--threads 1] [--repeats 3] [--epochs 1]
                                      [--models logreg mlp cnn usercnn] [--optimizers sgd adam]
                                      [--eval-train] [--precisions bf16 fp16] [--compile]
                                      [--train-samples N] [--test-samples N] [--no-vectorized]
                                      [--no-processes] [--grid [--grid-epochs 5]] [--grid-only]
                                      [--grid-optimizers sgd momentum]
The CNN: --models cnn --train-samples 3840 --test-samples 1000 --no-vectorized --no-processes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from optimlab.data import Dataset, load_dataset, steps_per_epoch
from optimlab.engine.build import init_model
from optimlab.engine.group import train_group
from optimlab.study import ExecutorSpec, load_results, parse_study, run_study
from optimlab.training import RunResult, TrainConfig, train

OWN_CODE = Path(__file__).resolve().parent.parent / "examples" / "own_code"
sys.path.insert(0, str(OWN_CODE))  # the user's package, as a study's python_path puts it

SEEDS = (0, 1, 2)
LRS = {"sgd": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1), "adam": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)}
TARGETS = {"logreg": 2.0, "mlp": 1.5, "cnn": None, "usercnn": None}  # vectorized over sequential
# seed 004's CNN: a study (its runs one by one, the layout measured) over the plain loop, by precision
CNN_TARGETS = {"fp32": 1.3, "bf16": 2.5}
# name in this benchmark -> (the model setting, its options)
MODELS = {"logreg": ("logreg", {}), "mlp": ("mlp", {}), "cnn": ("cnn", {}),
          "usercnn": ("mycode.nets:SmallCNN", {"channels": 8})}
BATCH = 128


def plain(configs: list[TrainConfig], data: Dataset) -> list:
    """The baseline a user writes by hand: each run a plain PyTorch loop over the resident tensors
    (contiguous, fp32), the test set evaluated before and after, as the other ways do."""
    from optimlab import registry

    def test_loss(model) -> float:
        model.eval()
        with torch.no_grad():
            total = sum(F.cross_entropy(model(data.x_test[i:i + 1024]), data.y_test[i:i + 1024],
                                        reduction="sum").item() for i in range(0, data.num_test, 1024))
        model.train()
        return total / data.num_test

    out = []
    for c in configs:
        model = init_model(c, data)
        opt = registry.build_optimizer(c.optimizer, model.parameters(), lr=c.lr)
        order = torch.Generator().manual_seed(c.seed)
        test_loss(model)
        for _ in range(c.epochs):
            for idx in torch.randperm(data.num_train, generator=order).split(c.batch_size):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
                opt.step()
        out.append(SimpleNamespace(final={"test_loss": test_loss(model)}))
    return out


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


WAYS = {"plain": plain, "sequential": sequential, "vectorized": vectorized, "processes": processes}
PRECISION_WAYS = {"bf16": ("sequential", "vectorized"), "fp16": ("sequential",)}  # fp16: run by run
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def in_precision(way, precision: str):
    """``way`` on the same configs in ``precision``."""
    def run(configs, data):
        return way([dataclasses.replace(c, precision=precision) for c in configs], data)
    return run


def precision_of(way: str) -> str:
    return way.rpartition("-")[2] if "-" in way else "fp32"


def training_flops(config: TrainConfig, data: Dataset) -> float:
    """FLOPs of one epoch of one run: a training step's forward and backward (counted by torch's
    flop counter on one batch) times the steps of an epoch."""
    model = init_model(config, data)
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(data.x_train[:config.batch_size]), data.y_train[:config.batch_size]).backward()
    return counter.get_total_flops() * steps_per_epoch(data.num_train, config.batch_size, config.drop_last)


def matmul_peak(dtype: torch.dtype, n: int = 1024, repeats: int = 7) -> float:
    """This machine's matmul rate in ``dtype`` (FLOP/s, the fastest of ``repeats``: a peak, which a
    busy moment of a shared machine must not lower) on n x n x n."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times)


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
            for w, way in WAYS.items():
                if w not in ("processes", "compiled"):  # start-up, compilation: part of their cost
                    way(study(m, o, 1, False)[:4], part)


def largest_difference(a: list[RunResult], b: list[RunResult]) -> float:
    """Largest relative difference of the final test losses of two ways' runs (they agree to
    ~1e-7 but for the largest learning rates, where a whole epoch of chaotic training amplifies
    summation-order differences: see the note in the module docstring)."""
    return max(abs(x.final["test_loss"] - y.final["test_loss"]) / abs(y.final["test_loss"])
               for x, y in zip(a, b, strict=True))


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


GRID = """name = "grid"
dataset = "fashion-mnist"
model = "mlp"
batch_size = 128
epochs = {epochs}
eval_train = false
validation = 0
optimizers = {optimizers}
learning_rates = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
seeds = [0, 1, 2]
"""


def whole_process(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def grid_comparison(epochs: int, repeats: int, optimizers: list[str]) -> None:
    """The grid as whole processes: optimlab study run (each executor, and vectorized in bf16)
    against Ray Tune's grid search of the same runs (SGD only)."""
    optimlab = shutil.which("optimlab") or str(Path(sys.executable).parent / "optimlab")
    try:
        import ray.tune  # noqa: F401
        has_tune = optimizers == ["sgd"]
    except ImportError:
        has_tune = False
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "grid.toml"
        study.write_text(GRID.format(epochs=epochs, optimizers=json.dumps(optimizers)))
        ways = {f"optimlab {k}": [optimlab, "study", "run", str(study), "--executor", k, "-q"]
                for k in ("sequential", "processes", "vectorized")}
        ways["optimlab vectorized bf16"] = [*ways["optimlab vectorized"], 'precision="bf16"']
        if has_tune:
            ways["ray tune"] = [sys.executable, str(Path(__file__).parent / "raytune_grid.py"),
                                "--epochs", str(epochs)]
        times = {w: [] for w in ways}
        for _ in range(repeats):
            for w, command in ways.items():
                out = Path(tmp) / "out"
                shutil.rmtree(out, ignore_errors=True)
                store = ["--out", str(out)] if w.startswith("optimlab") else []
                times[w].append(whole_process(command + store))
    print(f"\nthe grid as whole processes: {15 * len(optimizers)} runs ({', '.join(optimizers)}; 5 lrs x 3 "
          f"seeds), the MLP, Fashion-MNIST, {epochs} epochs, {os.cpu_count()} cpus, median of {repeats}" + (
              "" if has_tune else "; Ray Tune's column left out (its script: SGD only, and pip install "
              "'optimlab[bench]')"))
    med = {w: statistics.median(t) for w, t in times.items()}
    print(f"  processes / sequential: {med['optimlab sequential'] / med['optimlab processes']:.2f}x (target "
          f">= 1.6x); processes / vectorized: {med['optimlab vectorized'] / med['optimlab processes']:.2f}x")
    for w, t in med.items():
        ratio = f"  Ray Tune / this {med['ray tune'] / t:.2f}x" if has_tune and w != "ray tune" else ""
        print(f"  {w:<28}{t:>8.1f} s{ratio}")
    if has_tune:
        best = min(t for w, t in med.items() if w.startswith("optimlab"))
        print(f"  optimlab's fastest way against Ray Tune: {med['ray tune'] / best:.2f}x (target >= 5x: "
              f"{'PASS' if med['ray tune'] / best >= 5 else 'FAIL'})")


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
    p.add_argument("--test-samples", type=int, default=None,
                   help="evaluate on the first N test images only (the CNN: 10,000 take seconds a run)")
    p.add_argument("--precisions", nargs="*", default=[], choices=sorted(PRECISION_WAYS),
                   help="add each precision's sequential and vectorized ways (fp16: sequential)")
    p.add_argument("--compile", action="store_true",
                   help="add the way 'compiled': sequential with compile = true (compilation timed too)")
    p.add_argument("--no-processes", action="store_true", help="leave out the processes way")
    p.add_argument("--no-vectorized", action="store_true",
                   help="leave out the vectorized ways (a stacked CNN: minutes an epoch on the CPU)")
    p.add_argument("--grid", action="store_true",
                   help="then the whole-process comparison with Ray Tune (all cores)")
    p.add_argument("--grid-epochs", type=int, default=5)
    p.add_argument("--grid-only", action="store_true", help="only the whole-process comparison")
    p.add_argument("--grid-optimizers", nargs="+", default=["sgd"],
                   help="the grid's optimizers, by name (one group each; the grid's lrs for all)")
    args = p.parse_args()
    if args.grid_only:
        grid_comparison(args.grid_epochs, max(1, min(args.repeats, 3)), args.grid_optimizers)
        return
    torch.set_num_threads(args.threads)

    data = load_dataset("fashion-mnist", device="cpu")
    if args.train_samples or args.test_samples or args.no_processes:  # workers load the whole named set
        WAYS.pop("processes")
    if args.train_samples or args.test_samples:
        n, m = args.train_samples or data.num_train, args.test_samples or data.num_test
        data = Dataset(data.name, data.x_train[:n], data.y_train[:n], data.x_test[:m], data.y_test[:m],
                       data.task, data.classes)
    if args.no_vectorized:
        WAYS.pop("vectorized")
    if args.compile:
        WAYS["compiled"] = lambda configs, data: sequential(
            [dataclasses.replace(c, compile=True) for c in configs], data)
    for precision in args.precisions:
        for way in PRECISION_WAYS[precision]:
            if way in WAYS:
                WAYS[f"{way}-{precision}"] = in_precision(WAYS[way], precision)
    warm_up(data, args.models, args.optimizers)
    peaks = {precision_of(w): 0.0 for w in WAYS}
    for name in peaks:
        peaks[name] = matmul_peak(DTYPES[name])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, epochs {args.epochs} of "
          f"{data.num_train} samples, "
          f"repeats {args.repeats}, runs {len(SEEDS)} seeds x 5 lrs, batch {BATCH}, eval_train "
          f"{args.eval_train}, cpus {os.cpu_count()}; load average at start: {load()}")
    print("matmul peak (1024^3, one run's threads): " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s"
                                                                  for k, v in peaks.items()))
    cases = [(m, o) for m in args.models for o in args.optimizers]
    times = {(case, w): [] for case in cases for w in WAYS}
    worst = {(case, w): 0.0 for case in cases for w in WAYS}
    for r in range(args.repeats):
        for case in cases:
            configs = study(*case, args.epochs, args.eval_train)
            results = {}
            for w, way in WAYS.items():  # interleaved: every way once per case per repeat
                start = time.perf_counter()
                results[w] = way(configs, data)
                times[case, w].append((time.perf_counter() - start) / args.epochs)
            for w, res in results.items():
                worst[case, w] = max(worst[case, w], largest_difference(res, results["sequential"]))
        print(f"  repeat {r + 1}/{args.repeats} done, load average {load()}", flush=True)

    fp32 = [w for w in WAYS if precision_of(w) == "fp32"]
    others = [w for w in fp32 if w not in ("sequential", "plain")]
    print(f"\n{'model':<8}{'optimizer':<11}" + "".join(f"{w + ' s/ep':>17}" for w in fp32)
          + "".join(f"{'speed-up ' + w[:5]:>16}" for w in others)
          + f"{'target':>8}  result  max rel diff of a final test loss")
    for case in cases:
        med = {w: statistics.median(times[case, w]) for w in WAYS}
        ratios = {w: med["sequential"] / med[w] for w in others}
        target = TARGETS[case[0]] if "vectorized" in ratios else None
        verdict = "-" if target is None else "PASS" if ratios["vectorized"] >= target else "FAIL"
        shown = "-" if target is None else f"{target:.1f}x"
        diff = max(worst[case, w] for w in fp32 if w != "plain")  # plain: its own batch order
        print(f"{case[0]:<8}{case[1]:<11}" + "".join(f"{med[w]:>17.3f}" for w in fp32)
              + "".join(f"{ratios[w]:>15.2f}x" for w in others)
              + f"{shown:>8}  {verdict:<8}{diff:.1e}")

    for name in peaks:  # again after the ways: the higher of the two
        peaks[name] = max(peaks[name], matmul_peak(DTYPES[name]))
    print("\nrates: the training GFLOP/s of each way (the epoch's forward and backward FLOPs over its "
          "seconds) and its fraction of the matmul peak in its precision (" + ", ".join(
              f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()) + "); the last column: the most "
          "vectorized could be over sequential, its FLOPs at that peak and nothing else done")
    print(f"{'model':<8}{'optimizer':<11}" + "".join(f"{w:>24}" for w in WAYS) + f"{'bound':>8}")
    for case in cases:
        flops = len(SEEDS) * len(LRS[case[1]]) * training_flops(study(*case, 1, False)[0], data)
        cells = []
        for w in WAYS:
            rate = flops / statistics.median(times[case, w])
            share = rate / peaks[precision_of(w)]  # > 1: the peak's kernel is not training's (fp16)
            shown = f"{100 * share:.0f} %" if share <= 1 else "peak n/a"
            cells.append(f"{rate / 1e9:.0f} GFLOP/s {shown}")
        bound = statistics.median(times[case, "sequential"]) / (flops / peaks["fp32"])
        print(f"{case[0]:<8}{case[1]:<11}" + "".join(f"{c:>24}" for c in cells) + f"{bound:>7.1f}x")

    if any(m in ("cnn", "usercnn") for m in args.models):
        print("\nconvolutions: each way against the plain loop (contiguous fp32); target for seed 004's CNN "
              "(sequential, runs one by one in the measured layout): "
              + ", ".join(f"{k} >= {v}x" for k, v in CNN_TARGETS.items()))
        for case in [c for c in cases if c[0] in ("cnn", "usercnn")]:
            base = statistics.median(times[case, "plain"])
            cells = []
            for w in WAYS:
                ratio = base / statistics.median(times[case, w])
                target = CNN_TARGETS.get(precision_of(w)) if case[0] == "cnn" and w.startswith("sequential") \
                    else None
                verdict = "" if target is None else f" {'PASS' if ratio >= target else 'FAIL'}"
                cells.append(f"{w} {ratio:.2f}x{verdict}")
            print(f"  {case[0]:<8}{case[1]:<6}" + ", ".join(cells))

    if args.precisions:
        print("\nprecision: speed-up over the fp32 sequential way, and the largest relative difference of a "
              "final test loss from fp32 sequential's")
        low = [w for w in WAYS if precision_of(w) != "fp32"]
        print(f"{'model':<8}{'optimizer':<11}" + "".join(f"{w:>28}" for w in low))
        for case in cases:
            base = statistics.median(times[case, "sequential"])
            print(f"{case[0]:<8}{case[1]:<11}" + "".join(
                f"{base / statistics.median(times[case, w]):>17.2f}x  {worst[case, w]:.1e}" for w in low))
    print(f"load average at end (1, 5, 15 min): {load()}")
    if args.grid:
        grid_comparison(args.grid_epochs, max(1, min(args.repeats, 3)), args.grid_optimizers)


if __name__ == "__main__":
    main()
