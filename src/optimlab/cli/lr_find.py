"""``optimlab lr-find``: the learning-rate range test of one model and optimizer, its curve as JSON and
a figure with the suggestions marked."""

from __future__ import annotations

import argparse
from pathlib import Path

from optimlab.cli.arguments import path_arg
from optimlab.cli.train import add_problem_arguments, problem_fields


def add_to(sub) -> None:
    f = sub.add_parser(
        "lr-find", help="the learning-rate range test: an exponential sweep, its curve and suggestions",
        description="Train on the training data while the learning rate grows exponentially from --start "
        "to --end over --steps steps; stop when the smoothed loss diverges; print the suggested learning "
        "rates (steepest descent, fastai's valley, minimum / 10); write lr_find.json and lr_find.png. "
        "Nothing of the model or optimizer is kept.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_problem_arguments(f)
    f.add_argument("--start", type=float, default=1e-7, help="the first learning rate")
    f.add_argument("--end", type=float, default=10.0, help="the last learning rate")
    f.add_argument("--steps", type=int, default=100, help="steps of the sweep (at least 10)")
    f.add_argument("--smooth", type=float, default=0.05,
                   help="weight of each new loss in the running average, in [0, 1) (0: none)")
    f.add_argument("--diverge", type=float, default=5.0,
                   help="stop once the smoothed loss exceeds this factor times its lowest")
    f.add_argument("--skip-start", type=int, default=10,
                   help="points left out of the suggestions at the start")
    f.add_argument("--skip-end", type=int, default=5, help="points left out of the suggestions at the end")
    f.add_argument("--out", type=path_arg, default="lr_find",
                   help="folder for lr_find.json and lr_find.png")
    f.set_defaults(func=_lr_find)


def _lr_find(args: argparse.Namespace) -> int:
    from optimlab.rangetest import check_settings, lr_find
    from optimlab.runfiles import check_writable
    from optimlab.training import TrainConfig

    check_settings(args.start, args.end, args.steps, args.smooth, args.diverge, args.skip_start,
                   args.skip_end)
    config = TrainConfig(**problem_fields(args))
    result = lr_find(config, data_dir=args.data_dir, start=args.start, end=args.end, steps=args.steps,
                     smooth=args.smooth, diverge=args.diverge, skip_start=args.skip_start,
                     skip_end=args.skip_end)
    out = Path(args.out)
    check_writable(out)  # after the sweep: a refused setting leaves no folder behind
    for note in result.notes:
        print(f"note: {note}")
    for name, lr in result.suggestions.items():
        print(f"{name:<11} {'-' if lr is None else f'{lr:.3g}'}")
    curve, figure = result.save(out)
    print(f"curve in {curve}, figure in {figure}")
    return 0
