"""Seed 004's study on a GPU: its runs one at a time against vectorized groups, per epoch and projected.

Seed 004's study is 8 optimizers (``OPTIMIZERS``: Adam, RMSprop, AdaGrad, AdamW, AMSGrad, NAdam, RAdam,
SGD, by optimlab's names) x 5 learning rates (1e-5 .. 1e-1) x 3 seeds x 20 epochs of its CNN (model
``cnn``) on CIFAR-10 (50,000 training images 3 x 32 x 32, 10 classes; 10,000 test images), batch 256,
the test set evaluated at the end of every epoch. The data are the real CIFAR-10 when optimlab's
catalogue finds it on this machine (no download), else synthetic tensors of that size and shape
(standard normal images, uniform labels), generated on the device; the output says which. Both ways
train on the same resident tensors:

* run by run: ``optimlab.training.train`` of each config, one after another, as seed 004 does (but
  with the data resident on the device instead of a DataLoader);
* vectorized: ``optimlab.engine.group.train_group`` of the runs of one optimizer (at most its 15,
  3 seeds x 5 learning rates: a group's runs differ only in lr and seed) in as few groups as memory
  allows. The group size is found by trying: a group that raises ``torch.cuda.OutOfMemoryError`` is
  halved (groups hold whole seeds, or learning rates of one seed, so that none is padded) and tried
  again. From the peak memory of a group that fits, the output also estimates how many runs the
  device's memory would hold in one group.

For each optimizer, in turn (the ways interleaved, so that a change of the machine's speed hits both): a
warm-up of each way, ``WARMUP_STEPS`` step and its evaluations (untimed: kernels, the allocator's cache,
cuDNN; for the vectorized way also the probe of the group size), then every run of the optimizer by each
way, for ``--epochs-timed`` epochs (default 1). The time of an epoch is read between the evaluations at
step 0 and at the end of the last epoch (clocks after a device sync), so that it holds the steps and the
end-of-epoch evaluation; the time before the step-0 evaluation (building the model, or the stack, and
evaluating the initial model) is the run's or group's set-up. The projected wall time of the whole study
(120 runs x 20 epochs) is, summed over runs or groups, set-up + 20 x the time of an epoch, scaled by 120
/ (runs timed) when ``--runs`` takes a subset; a run that diverged within the timed epochs counts with
the time it took (run by run, a diverged run stops; in a group its slice is masked and computed on). The
ratio of the two projections is the vectorized way's speed-up.

Peak memory: ``torch.cuda.max_memory_allocated`` of each run and group (the data resident on the device
included, and said apart); on the CPU memory is not measured (the process's peak RSS is printed).

Before the times, a check that the two ways did the same work: every run's test loss at step 0 (the
same initialization) and after the timed epochs (the same batches, the same updates), run by run
against vectorized, relative difference. The check runs are those at lr <= 1e-3 (``CHECK_LR``) that
completed; train_group reproduces ``train`` up to the summation order of the batched kernels, which
an epoch of training at the larger learning rates amplifies chaotically (``bench_study.py`` measures
up to a few 1e-2 there), so those are shown, not judged. Tolerance (``--tolerance``): 1e-4 on the
CPU; 1e-3 on CUDA, where cuDNN may compute one way's float32 convolutions in TF32 (torch's default)
and the other's (grouped, in a stack) not: ``--no-tf32`` turns TF32 off for both. A failed check is
printed before the times and makes the exit status 1.

Run (a CUDA machine; the whole study's epoch, 120 runs each way, takes minutes):
    python benchmarks/bench_gpu.py [--device auto|cuda|cpu] [--epochs-timed 1] [--runs 120]
                                   [--train-size 50000] [--threads 1] [--eval-train] [--no-tf32]
                                   [--precision fp32|bf16]
Smoke test of the code path on the CPU (under a minute on one thread; an epoch is 2 steps there):
    python benchmarks/bench_gpu.py --device cpu --train-size 512 --runs 4
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import sys
import time

import torch

from optimlab.data import Dataset, load_dataset, locate, steps_per_epoch
from optimlab.engine.group import train_group
from optimlab.training import RunResult, TrainConfig, train

OPTIMIZERS = ("adam", "rmsprop", "adagrad", "adamw", "amsgrad", "nadam", "radam", "sgd")  # seed 004's
LRS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
SEEDS = (0, 1, 2)
EPOCHS = 20  # the study's budget, for the projection
BATCH = 256
TRAIN, TEST, SHAPE, CLASSES = 50_000, 10_000, (3, 32, 32), 10
STUDY_RUNS = len(OPTIMIZERS) * len(LRS) * len(SEEDS)
GROUP_MOST = len(LRS) * len(SEEDS)  # a group's runs differ only in lr and seed: one optimizer's
WARMUP_STEPS = 1
CHECK_LR = 1e-3  # runs at lr <= this are judged by the exactness check
TOLERANCE = {"cpu": 1e-4, "cuda": 1e-3}
MIB = 2**20


@dataclasses.dataclass
class Timing:
    """One unit of a way (a run, or a group of runs): its set-up, its time an epoch, its peak memory."""

    runs: int
    setup: float  # seconds from the call to the end of the step-0 evaluation
    total: float  # seconds of the whole call
    epoch: float | None  # seconds an epoch (None: every run diverged before the first epoch's end)
    peak: int | None  # bytes (None: not measured, on the CPU)
    stopped: bool  # every run of it diverged within the timed epochs

    def projected(self, epochs: int) -> float:
        """Seconds of this unit in a study of ``epochs`` epochs (one that stopped: what it took)."""
        return self.total if self.stopped or self.epoch is None else self.setup + epochs * self.epoch


@dataclasses.dataclass
class Way:
    name: str
    results: dict[int, RunResult] = dataclasses.field(default_factory=dict)  # config index -> result
    units: dict[str, list[Timing]] = dataclasses.field(default_factory=dict)  # optimizer -> its units

    def all_units(self) -> list[Timing]:
        return [u for units in self.units.values() for u in units]


class Device:
    """The device the benchmark runs on: its syncs, its memory (CUDA only), its description."""

    def __init__(self, name: str):
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cuda" and not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
        self.device = torch.device(name)
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def allocated(self) -> int | None:
        return torch.cuda.memory_allocated(self.device) if self.cuda else None

    def total(self) -> int | None:
        return torch.cuda.get_device_properties(self.device).total_memory if self.cuda else None

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device) if self.cuda else None

    def free_cache(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def describe(self) -> str:
        if not self.cuda:
            return "cpu"
        props = torch.cuda.get_device_properties(self.device)
        return (f"{self.device} ({props.name}, {props.total_memory / 2**30:.1f} GiB), cuDNN TF32 "
                f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}, matmul TF32 "
                f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")


def cifar_sized(dev: Device, train_size: int, test_size: int) -> tuple[Dataset, str]:
    """CIFAR-10 when the catalogue finds it here (no download), else synthetic tensors of its shape
    generated on the device; the first ``train_size`` / ``test_size`` images of either."""
    folder = locate("cifar10")
    if folder is not None:
        data = load_dataset("cifar10", device=dev.device, download=False)
        if train_size < data.num_train or test_size < data.num_test:
            data = Dataset(data.name, data.x_train[:train_size].clone(), data.y_train[:train_size].clone(),
                           data.x_test[:test_size].clone(), data.y_test[:test_size].clone(), data.task,
                           data.classes, data.source)
        return data, f"CIFAR-10, found in {folder}"
    g = torch.Generator(device=dev.device).manual_seed(0)
    sizes = (train_size, test_size)
    images = [torch.randn(n, *SHAPE, generator=g, device=dev.device) for n in sizes]
    labels = [torch.randint(0, CLASSES, (n,), generator=g, device=dev.device) for n in sizes]
    data = Dataset("synthetic-cifar10-sized", images[0], labels[0], images[1], labels[1], "classification",
                   tuple(str(c) for c in range(CLASSES)), "synthetic")
    return data, ("synthetic: CIFAR-10 was not found here (optimlab data list says where it is looked "
                  "for), so standard normal images and uniform labels of its shape, generated on the device")


def study(device: Device, epochs: int, eval_train: bool, precision: str = "fp32") -> list[TrainConfig]:
    """Seed 004's 120 configs, optimizer by optimizer, seed by seed, learning rate by learning rate."""
    return [TrainConfig(dataset="cifar10", model="cnn", optimizer=o, lr=lr, seed=s, batch_size=BATCH,
                        epochs=epochs, eval_train=eval_train, device=str(device.device), precision=precision)
            for o in OPTIMIZERS for s in SEEDS for lr in LRS]


def plan_groups(indices: list[int], configs: list[TrainConfig], size: int) -> list[list[int]]:
    """Groups of at most ``size`` runs (of one optimizer, in the study's order): whole seeds when
    ``size`` holds one, else learning rates of one seed, so that no group's grid is padded (but for a
    subset's last seed, when ``--runs`` cuts it)."""
    by_seed: dict[int, list[int]] = {}
    for k in indices:
        by_seed.setdefault(configs[k].seed, []).append(k)
    seeds = list(by_seed.values())
    width = max(len(s) for s in seeds)
    if size >= width:
        per = size // width
        return [[k for s in seeds[i:i + per] for k in s] for i in range(0, len(seeds), per)]
    return [s[i:i + size] for s in seeds for i in range(0, len(s), size)]


def timed(dev: Device, call, runs: int, per_epoch: int) -> tuple[object, Timing]:
    """Run ``call(on_eval)`` of ``runs`` runs, with clocks read (after a device sync) at every
    evaluation (``on_eval(step)``): its result and its :class:`Timing`."""
    stamps: dict[int, float] = {}

    def on_eval(step: int) -> None:
        if step not in stamps:
            dev.sync()
            stamps[step] = time.perf_counter()

    dev.free_cache()
    dev.reset_peak()
    dev.sync()
    start = time.perf_counter()
    out = call(on_eval)
    dev.sync()
    end = time.perf_counter()
    steps = sorted(stamps)
    epoch = None
    if len(steps) >= 2 and steps[-1] > 0:
        epoch = (stamps[steps[-1]] - stamps[0]) / (steps[-1] / per_epoch)
    results = out if isinstance(out, list) else [out]
    stopped = all(r.status == "diverged" for r in results)
    return out, Timing(runs, stamps.get(0, end) - start, end - start, epoch, dev.peak(), stopped)


def run_one(config: TrainConfig, data: Dataset, on_eval) -> RunResult:
    return train(config, data=data, keep_model=False, on_eval=lambda row: on_eval(row["step"]))


def run_group(configs: list[TrainConfig], data: Dataset, on_eval) -> list[RunResult]:
    return train_group(configs, data=data, keep_models=False, on_eval=lambda k, row: on_eval(row["step"]))


def warm_config(config: TrainConfig) -> TrainConfig:
    return dataclasses.replace(config, epochs=None, iterations=WARMUP_STEPS)


def rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(b), 1e-12)


def check(configs: list[TrainConfig], rbr: Way, vec: Way, tol: float) -> bool:
    """The two ways' test losses at step 0 and after the timed epochs, run by run; printed; whether
    the check runs agree to ``tol``."""
    judged, shown, mismatched = [], [], []
    for k, a in rbr.results.items():
        b, c = vec.results[k], configs[k]
        d0 = rel(b.evals[0]["test_loss"], a.evals[0]["test_loss"])
        if a.status != b.status:
            mismatched.append(f"{c.optimizer} lr {c.lr:g} seed {c.seed}: {a.status} run by run, "
                              f"{b.status} vectorized")
            continue
        if a.status != "completed":
            continue
        d1 = rel(b.final["test_loss"], a.final["test_loss"])
        row = (max(d0, d1), d0, d1, c, a.final["test_loss"], b.final["test_loss"])
        (judged if c.lr <= CHECK_LR else shown).append(row)
    print("check: test loss run by run against vectorized, relative difference at step 0 and after the "
          "timed epochs")
    for _, d0, d1, c, a1, b1 in sorted(judged, key=lambda r: -r[0])[:3]:
        print(f"  {c.optimizer:<8} lr {c.lr:<7g} seed {c.seed}: step 0 {d0:.1e}; final {a1:.6f} against "
              f"{b1:.6f}, {d1:.1e}")
    worst = max((r[0] for r in judged), default=None)
    if worst is None:
        print(f"  no completed run at lr <= {CHECK_LR:g} among those timed: nothing to judge")
        ok = False
    else:
        ok = worst <= tol and not mismatched
        print(f"  runs at lr <= {CHECK_LR:g} (the check, {len(judged)} runs): largest difference "
              f"{worst:.1e}, tolerance {tol:.0e}: {'PASS' if ok else 'FAIL'}")
    if shown:
        print(f"  runs at lr > {CHECK_LR:g} ({len(shown)} completed, not judged: an epoch at a large lr "
              f"amplifies summation-order differences): largest {max(r[0] for r in shown):.1e}")
    for line in mismatched:
        print(f"  FAIL: {line}")
    diverged = sum(r.status == "diverged" for r in rbr.results.values())
    print(f"  diverged within the timed epochs: {diverged} of {len(rbr.results)} runs")
    return ok


def mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / MIB:,.0f}"


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def report(dev: Device, chosen: list[int], rbr: Way, vec: Way, data_bytes: int | None,
           sizes: dict[str, int], per_epoch: int) -> None:
    print(f"\n{'optimizer':<10}{'runs':>5}{'run-by-run s/ep':>17}{'vectorized s/ep':>17}{'groups':>8}"
          f"{'speed-up':>10}{'peak run MiB':>14}{'peak group MiB':>16}")
    for o in OPTIMIZERS:
        if o not in rbr.units:
            continue
        a, b = rbr.units[o], vec.units[o]
        ea = sum(u.epoch or 0.0 for u in a)
        eb = sum(u.epoch or 0.0 for u in b)
        pa = max((u.peak for u in a if u.peak is not None), default=None)
        pb = max((u.peak for u in b if u.peak is not None), default=None)
        groups = "+".join(str(u.runs) for u in b) if len(b) <= 3 else f"{len(b)}x<={sizes[o]}"
        print(f"{o:<10}{len(a):>5}{ea:>17.3f}{eb:>17.3f}{groups:>8}{ea / eb if eb else math.nan:>9.2f}x"
              f"{mib(pa):>14}{mib(pb):>16}")
    ea = sum(u.epoch or 0.0 for u in rbr.all_units())
    eb = sum(u.epoch or 0.0 for u in vec.all_units())
    pa = max((u.peak for u in rbr.all_units() if u.peak is not None), default=None)
    pb = max((u.peak for u in vec.all_units() if u.peak is not None), default=None)
    print(f"{'all':<10}{len(chosen):>5}{ea:>17.3f}{eb:>17.3f}{len(vec.all_units()):>8}"
          f"{ea / eb if eb else math.nan:>9.2f}x{mib(pa):>14}{mib(pb):>16}")
    if dev.cuda:
        print(f"peak memory (allocated, MiB) includes the resident data, {mib(data_bytes)} MiB; the device "
              f"has {mib(dev.total())} MiB")
        best = max(vec.all_units(), key=lambda u: u.runs)
        if best.peak is not None and best.peak > data_bytes:
            per_run = (best.peak - data_bytes) / best.runs
            fits = int((0.9 * dev.total() - data_bytes) // per_run)
            print(f"memory: a group of {best.runs} runs peaked at {mib(best.peak)} MiB, "
                  f"{per_run / MIB:,.0f} MiB a run over the data: 90 % of the device would hold a group of "
                  f"about {fits:,} runs (a group holds one optimizer's runs, {GROUP_MOST} at most)")
    else:
        try:
            import resource

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            rss *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
            print(f"memory: not measured on the CPU (the process's peak RSS: {mib(rss)} MiB)")
        except ImportError:
            print("memory: not measured on the CPU")
    scale = STUDY_RUNS / len(chosen)
    pa = scale * sum(u.projected(EPOCHS) for u in rbr.all_units())
    pb = scale * sum(u.projected(EPOCHS) for u in vec.all_units())
    sub = "" if len(chosen) == STUDY_RUNS else (
        f", scaled by {STUDY_RUNS}/{len(chosen)} from the {len(chosen)} runs timed (the study's groups would "
        f"hold up to {GROUP_MOST} runs each)")
    print(f"\nprojected wall time of the study ({STUDY_RUNS} runs x {EPOCHS} epochs of {per_epoch} step(s)"
          f"{sub}):")
    print(f"  run by run {hours(pa)}, vectorized {hours(pb)}; ratio run by run / vectorized {pa / pb:.2f}x")


def vectorized(dev: Device, configs: list[TrainConfig], mine: list[int], data: Dataset, size: int,
               per_epoch: int) -> tuple[list[list[int]], dict[int, RunResult], list[Timing], int]:
    """The runs ``mine`` (of one optimizer) in groups of at most ``size``, warmed up and timed, the size
    halved as long as a group runs out of memory: the groups, the results, their timings, the size."""
    while True:
        groups = plan_groups(mine, configs, size)
        size = max(len(g) for g in groups)  # what the plan holds: whole seeds, or lrs of one seed
        try:
            first = [warm_config(configs[k]) for k in groups[0]]
            timed(dev, lambda on_eval, first=first: run_group(first, data, on_eval), len(first), per_epoch)
            units, results = [], {}
            for g in groups:
                group = [configs[k] for k in g]
                res, t = timed(dev, lambda on_eval, group=group: run_group(group, data, on_eval), len(g),
                               per_epoch)
                results.update(zip(g, res, strict=True))
                units.append(t)
            return groups, results, units, size
        except torch.cuda.OutOfMemoryError:
            pass  # out of the handler first, so that its traceback's tensors can be freed
        dev.free_cache()
        if size == 1:
            sys.exit(f"{configs[mine[0]].optimizer}: one run alone does not fit in the device's memory")
        print(f"  {configs[mine[0]].optimizer}: groups of {size} runs ran out of memory; halving", flush=True)
        size = max(1, size // 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--epochs-timed", type=int, default=1, help="epochs timed per run and group (after "
                   "an untimed warm-up step of each way)")
    p.add_argument("--runs", type=int, default=STUDY_RUNS, help=f"time the first N of the study's "
                   f"{STUDY_RUNS} runs (optimizer by optimizer, seed by seed, lr by lr)")
    p.add_argument("--train-size", type=int, default=TRAIN, help="training images (the test set: a fifth "
                   "as many, at most 10,000)")
    p.add_argument("--threads", type=int, default=1, help="torch's CPU threads (default 1)")
    p.add_argument("--eval-train", action="store_true", help="also evaluate the whole training set at "
                   "every epoch's end")
    p.add_argument("--no-tf32", action="store_true", help="float32 convolutions and matmuls without TF32")
    p.add_argument("--tolerance", type=float, default=None, help="of the check (default: 1e-4 on the CPU, "
                   "1e-3 on CUDA)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="every run's precision (bf16: mixed, under autocast; fp16 groups are not stacked)")
    args = p.parse_args()
    for name in ("epochs_timed", "runs", "train_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.train_size >= BATCH:
        p.error(f"--train-size must be at least the batch, {BATCH}")
    torch.set_num_threads(args.threads)
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    dev = Device(args.device)
    tol = args.tolerance if args.tolerance is not None else TOLERANCE[dev.device.type]

    data, what = cifar_sized(dev, args.train_size, min(TEST, max(1, args.train_size // 5)))
    dev.sync()
    data_bytes = dev.allocated()
    per_epoch = steps_per_epoch(data.num_train, BATCH, False)
    configs = study(dev, args.epochs_timed, args.eval_train, args.precision)
    chosen = list(range(min(args.runs, len(configs))))
    print(f"torch {torch.__version__}, device {dev.describe()}, threads {torch.get_num_threads()}")
    print(f"data: {data.num_train:,} x {' x '.join(map(str, data.input_shape))} training images, "
          f"{data.num_test:,} test, {data.num_classes} classes; {what}")
    print(f"study: seed 004's CNN, {len(OPTIMIZERS)} optimizers x {len(LRS)} lrs x {len(SEEDS)} seeds, batch "
          f"{BATCH} ({per_epoch} step(s) an epoch), test set evaluated at every epoch's end, eval_train "
          f"{args.eval_train}; timing {len(chosen)} of its {STUDY_RUNS} runs each way, {args.epochs_timed} "
          f"epoch(s) after a warm-up of {WARMUP_STEPS} step(s)", flush=True)

    rbr, vec = Way("run by run"), Way("vectorized")
    size = GROUP_MOST
    sizes: dict[str, int] = {}
    for o in OPTIMIZERS:
        mine = [k for k in chosen if configs[k].optimizer == o]
        if not mine:
            continue
        started = time.perf_counter()
        timed(dev, lambda on_eval, k=mine[0]: run_one(warm_config(configs[k]), data, on_eval), 1, per_epoch)
        rbr.units[o] = []
        for k in mine:
            result, t = timed(dev, lambda on_eval, k=k: run_one(configs[k], data, on_eval), 1, per_epoch)
            rbr.results[k] = result
            rbr.units[o].append(t)
        groups, results, units, size = vectorized(dev, configs, mine, data, size, per_epoch)
        vec.results.update(results)
        vec.units[o] = units
        sizes[o] = max(len(g) for g in groups)
        print(f"  {o}: {len(mine)} runs each way, groups of {', '.join(str(len(g)) for g in groups)}, "
              f"{time.perf_counter() - started:.1f} s", flush=True)

    print()
    ok = check(configs, rbr, vec, tol)
    if not ok:
        print("the check failed: the times below compare ways that did not do the same work to the tolerance")
    report(dev, chosen, rbr, vec, data_bytes, sizes, per_epoch)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
