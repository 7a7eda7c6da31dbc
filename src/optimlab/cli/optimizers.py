"""``optimlab optimizers``: every optimizer name, where it comes from, what it guarantees."""

from __future__ import annotations

import argparse


def add_to(sub) -> None:
    o = sub.add_parser("optimizers", help="the optimizer names and their hyperparameters",
                       description="The optimizer names, each with its hyperparameters.")
    o.set_defaults(func=_optimizers)


def _optimizers(args: argparse.Namespace) -> int:
    from optimlab.baselines import EXTRA, installed
    from optimlab.optimizers import LOCAL_FLOW, hyperparameters
    from optimlab.registry import optimizer_entries

    for name, entry in optimizer_entries().items():
        stacked = "stacked" if entry.stackable else "one by one"
        if installed(entry):
            hp = ", ".join(f"{k}={v!r}" for k, v in entry.hyperparameters().items())
        else:
            hp = f"(not installed: pip install 'optimlab[{EXTRA}]')"
        print(f"{name:<18} [{entry.source}; {'lr-linear' if entry.lr_linear else 'not lr-linear'}; "
              f"vectorized: {stacked}] {hp}")
    for name in LOCAL_FLOW:
        hp = ", ".join(f"{k}={v!r}" for k, v in hyperparameters(name).items())
        print(f"{name:<18} [optimlab.localflow; vectorized: one by one] {hp}")
    print("or any torch.optim.Optimizer class of your own by import path: package.module:Class(key=value)")
    return 0
