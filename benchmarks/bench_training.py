"""Time per epoch of the seeds' way against optimlab's training run, on Fashion-MNIST (CPU).

Three ways train the same model (``logreg``, ``mlp``) with SGD(lr=0.01), batch 128, and measure
the test accuracy once per epoch:

* seeds' way: a torch ``Dataset`` of the raw uint8 images whose ``__getitem__`` applies the
  equivalent of torchvision's ToTensor + Normalize((0.2860,), (0.3530,)) per sample, a
  ``DataLoader(batch_size=128, shuffle=True, num_workers=0)``, the plain loop, and a test
  ``DataLoader`` of batch 128;
* optimlab: ``optimlab.training.train`` on the already loaded data set (``out=None``);
* bare loop: normalized tensors already resident, randperm, index, forward, backward, step.

Loading the data is excluded from every timing. Each repeat runs the ways interleaved; the median
seconds per epoch is reported, with the ratios and the target (optimlab >= 4x the seeds' way for
logreg, >= 3x for the MLP).

Run: python benchmarks/bench_training.py [--epochs 1] [--repeats 3] [--threads 1]
                                         [--models logreg mlp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from optimlab.data import load_dataset, read_idx_pair
from optimlab.models import build_model
from optimlab.training import TrainConfig, train

FOLDER = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = (0.2860,), (0.3530,)
BATCH, LR, SEED = 128, 0.01, 0
TARGETS = {"logreg": 4.0, "mlp": 3.0}


class SeedsDataset(torch.utils.data.Dataset):
    """Raw uint8 images; per sample: ToTensor (1x28x28 float / 255) then Normalize(MEAN, STD)."""

    def __init__(self, prefix: str):
        self.x, self.y = read_idx_pair(FOLDER / f"{prefix}-images-idx3-ubyte.gz",
                                       FOLDER / f"{prefix}-labels-idx1-ubyte.gz")

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        img = torch.from_numpy(self.x[i][:, :, None].transpose(2, 0, 1)).contiguous()  # ToTensor
        img = img.to(torch.float32).div(255)
        mean = torch.as_tensor(MEAN, dtype=img.dtype)[:, None, None]  # Normalize, as torchvision
        std = torch.as_tensor(STD, dtype=img.dtype)[:, None, None]
        if (std == 0).any():
            raise ValueError("std evaluated to zero")
        return img.clone().sub_(mean).div_(std), int(self.y[i])


def fresh_model(name: str) -> torch.nn.Module:
    torch.manual_seed(SEED)
    return build_model(name, (1, 28, 28), 10)


def seeds_way(name: str, train_set, test_set, epochs: int) -> float:
    model = fresh_model(name)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    loader = torch.utils.data.DataLoader(train_set, batch_size=BATCH, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=BATCH)
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for xb, yb in test_loader:
                correct += (model(xb).argmax(1) == yb).sum().item()
    return correct / len(test_set)


def optimlab_way(name: str, data, epochs: int) -> float:
    config = TrainConfig(dataset="fashion-mnist", model=name, optimizer="sgd", lr=LR,
                         batch_size=BATCH, epochs=epochs, eval_train=False, device="cpu")
    return train(config, data=data, out=None).final["test_accuracy"]


def bare_loop(name: str, data, epochs: int) -> float:
    model = fresh_model(name)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = data.x_train, data.y_train
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(BATCH):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        with torch.no_grad():
            acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    return acc


def timed(fn, *args) -> tuple[float, float]:
    start = time.perf_counter()
    acc = fn(*args)
    return time.perf_counter() - start, acc


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", nargs="+", default=["logreg", "mlp"], choices=sorted(TARGETS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    data = load_dataset("fashion-mnist")  # loaded before any timing, for all three ways
    train_set, test_set = SeedsDataset("train"), SeedsDataset("t10k")
    assert np.array_equal(train_set.y, data.y_train.numpy())
    ways = {
        "seeds": lambda m: seeds_way(m, train_set, test_set, args.epochs),
        "optimlab": lambda m: optimlab_way(m, data, args.epochs),
        "bare": lambda m: bare_loop(m, data, args.epochs),
    }
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, epochs {args.epochs}, "
          f"repeats {args.repeats}, cpus {os.cpu_count()}; load average at start: {load()}")
    times = {(m, w): [] for m in args.models for w in ways}
    accs = {}
    for r in range(args.repeats):
        for m in args.models:
            for w, run in ways.items():  # interleaved: every way once per model per repeat
                seconds, accs[m, w] = timed(run, m)
                times[m, w].append(seconds / args.epochs)
        print(f"  repeat {r + 1}/{args.repeats} done, load average {load()}", flush=True)

    print(f"\n{'model':<8}{'seeds s/ep':>11}{'optimlab s/ep':>14}{'bare s/ep':>10}"
          f"{'seeds/optimlab':>16}{'bare/optimlab':>15}{'target':>8}  result")
    for m in args.models:
        s, o, b = (statistics.median(times[m, w]) for w in ways)
        verdict = "PASS" if s / o >= TARGETS[m] else "FAIL"
        print(f"{m:<8}{s:>11.3f}{o:>14.3f}{b:>10.3f}{s / o:>15.2f}x{b / o:>14.2f}x"
              f"{TARGETS[m]:>7.0f}x  {verdict}")
    print(f"load average at end (1, 5, 15 min): {load()}")
    print("last test accuracies (seeds / optimlab / bare): " + "; ".join(
        f"{m} " + " / ".join(f"{accs[m, w]:.4f}" for w in ways) for m in args.models))


if __name__ == "__main__":
    main()
