"""``optimlab localflow picture | schedule``: the local flow of a batch on a named task."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from optimlab.cli.arguments import THREADS_HELP, path_arg
from optimlab.errors import OptimlabError


def add_to(sub) -> None:
    lf = sub.add_parser("localflow", help="learning rates from the local problem: picture, schedule",
                        description="The local flow of a batch: the projection picture, and the "
                        "learning rates the curvature scheduler sets.")
    lsub = lf.add_subparsers(title="commands", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dataset", default="mnist-10k:0,1", help="a data set name")
    common.add_argument("--model", default="logreg", help="logreg, mlp, cnn, linear (for lls)")
    common.add_argument("--batch-size", type=int, default=64)
    common.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    common.add_argument("--seed", type=int, default=0)
    pic = lsub.add_parser("picture", parents=[common], help="the projection picture of a batch (PNG)",
                          description="Project parameters around theta and the batch gradients there on "
                          "the batch's principal gradient direction q; fit g; write the scatter plot.")
    pic.add_argument("--steps", type=int, default=0, help="SGD steps before the picture (0: at init)")
    pic.add_argument("--lr", type=float, default=0.1, help="learning rate of those SGD steps")
    pic.add_argument("--radius", type=float, default=1.0, help="sample theta + t q for |t| <= radius")
    pic.add_argument("--spread", type=float, default=0.0, help="noise off the line (the seed's cloud)")
    pic.add_argument("--out", type=path_arg, default="picture.png", help="the PNG to write")
    pic.set_defaults(func=_localflow_picture)
    sch = lsub.add_parser("schedule", parents=[common], help="the per-epoch learning rates of a run",
                          description="Train with SGD under the curvature scheduler (lr = the flow time "
                          "h) and print the learning rate it sets, one per epoch (the median).")
    sch.add_argument("--lr", type=float, default=1.0, help="the flow time h")
    sch.add_argument("--epochs", type=int, default=3)
    sch.add_argument("--every", type=int, default=10, help="measure the curvature every k steps")
    sch.add_argument("--method", default="hvp", choices=("hvp", "secant"))
    sch.add_argument("--momentum", type=float, default=0.0)
    sch.add_argument("--guard", default="armijo", choices=("armijo", "none"),
                     help="check each measured rate on its batch, halving it until the loss falls by "
                     "--armijo times the linear model's decrease (none: take it as measured)")
    sch.add_argument("--armijo", type=float, default=0.25, help="the check's fraction, in (0, 1)")
    sch.add_argument("--out", type=path_arg, default=None, help="also write every step's record as JSON here")
    sch.set_defaults(func=_localflow_schedule)
    lf.set_defaults(func=lambda a: (lf.print_help(), 2)[1])


def _at_least(args: argparse.Namespace, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value < minimum:
            raise OptimlabError(f"--{name.replace('_', '-')} must be an integer >= {minimum}; got {value}")


def _localflow_picture(args: argparse.Namespace) -> int:
    from optimlab.engine.localflow_runs import picture_at
    from optimlab.localflow import save_picture
    from optimlab.runfiles import check_writable

    _at_least(args, 0, "steps")
    _at_least(args, 1, "batch_size")
    check_writable(Path(args.out).resolve().parent)
    pic = picture_at(args.dataset, args.model, args.batch_size, args.steps, args.lr, args.seed,
                     radius=args.radius, spread=args.spread)
    save_picture(pic, args.out)
    print(f"slope {pic.slope:.6g} (curvature along q), intercept {pic.intercept:.6g}, R^2 {pic.r2:.6f}; "
          f"picture: {args.out}")
    return 0


def _localflow_schedule(args: argparse.Namespace) -> int:
    from optimlab.engine.localflow_runs import schedule_run
    from optimlab.runfiles import atomic_write_text, check_writable

    _at_least(args, 1, "epochs", "every", "batch_size")
    if not 0 <= args.momentum < 1:
        raise OptimlabError(f"--momentum must be in [0, 1); got {args.momentum}")
    if args.out:
        check_writable(Path(args.out).resolve().parent)
    if not 0 < args.armijo < 1:
        raise OptimlabError(f"--armijo is the fraction of the linear model's decrease a step must achieve, "
                            f"in (0, 1); got {args.armijo}")
    run = schedule_run(args.dataset, args.model, args.lr, args.epochs, args.batch_size, args.every,
                       args.method, args.momentum, args.seed, guard=args.guard, armijo=args.armijo)
    for epoch, h in enumerate(run["hs"], 1):
        print(f"epoch {epoch}: lr {h:.6g}")
    if run["diverged_at"] is not None:
        print(f"diverged at step {run['diverged_at']} (non-finite batch loss); the learning rates above "
              "are those of the steps before it")
    else:
        print(f"final training loss {run['train_loss']:.6g}, test loss {run['test_loss']:.6g}")
    guarded = [r for r in run["records"] if r["event"] == "guarded"]
    if guarded:
        measured = sum(r["event"] in ("measured", "guarded") for r in run["records"])
        print(f"the guard halved {len(guarded)} of {measured} measured rates (by up to "
              f"{2 ** max(r['backtracks'] for r in guarded)}x)")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(run, indent=1))
        print(f"records: {args.out}")
    return 0
