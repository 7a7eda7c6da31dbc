"""``optimlab train``: one model, one optimizer, metrics and checkpoints in a folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from optimlab.cli.arguments import THREADS_HELP, count_or_fraction, options, path_arg
from optimlab.errors import OptimlabError

# optimlab.models.MODELS' names, written out so that building the parser imports no torch (tested)
MODEL_NAMES = ("logreg", "mlp", "cnn", "linear", "quadratic-deep", "deepobs-2c2d", "deepobs-mlp",
               "deepobs-logreg")


def add_to(sub) -> None:
    t = sub.add_parser(
        "train", help="train one model with one optimizer",
        description="Train one model with one optimizer on a named data set; print the test "
        "accuracy at every evaluation; write metrics (JSON, CSV) and a checkpoint every epoch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_problem_arguments(t)
    t.add_argument("--lr", type=str, default=None,
                   help="learning rate (default: torch's default for the optimizer)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None, help="budget in epochs (default 1)")
    budget.add_argument("--iterations", type=int, default=None, help="budget in iterations")
    t.add_argument("--eval-every", type=int, default=None,
                   help="evaluate every N iterations (default: at the end of every epoch)")
    t.add_argument("--log-every", type=int, default=10,
                   help="record the training batch loss every K iterations")
    t.add_argument("--schedule", default="constant", metavar="SCHEDULE",
                   help="the learning rate's schedule over the budget: constant (default), "
                   "cosine(warmup=0.05), linear(warmup=100, final=0.0), "
                   "step(milestones=[0.5, 0.75], gamma=0.1)")
    t.add_argument("--validation", type=count_or_fraction, default=None, metavar="SIZE",
                   help="hold out a validation set from the training set, evaluated beside the test set: "
                   "a fraction in (0, 1) or a count (default: none)")
    t.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="fp32 (default), or mixed precision: the forward passes in bf16 or fp16 under "
                   "autocast, fp32 master weights (fp16 with a gradient scaler; on a CPU without native "
                   "fp16 it is emulated and slow)")
    t.add_argument("--compile", action="store_true",
                   help="compile the model with torch.compile (off by default: measured slower on a CPU, "
                   "the compilation included)")
    t.add_argument("--memory-format", default="auto", choices=("auto", "contiguous", "channels_last"),
                   help="the layout of a convolutional network's images: auto (default) takes channels-last "
                   "where a few steps measure it faster")
    t.add_argument("--no-eval-train", action="store_true",
                   help="evaluate on the test set only (faster)")
    t.add_argument("--constraint", action="append", default=[], metavar="NAME<=BOUND",
                   help="train under a constraint, e.g. 'l2norm<=1' (the squared L2 norm of the "
                   "parameters, as seed 001); repeatable; names: l2norm, l1norm")
    t.add_argument("--dual-optimizer", default="sgd", help="the multipliers' optimizer (it ascends)")
    t.add_argument("--dual-lr", type=str, default="1e-3", help="the multipliers' learning rate")
    t.add_argument("--formulation", default="lagrangian",
                   help="how the constraints enter the loss: lagrangian, augmented_lagrangian or "
                   "quadratic_penalty (no multipliers)")
    t.add_argument("--penalty", type=float, default=None,
                   help="the penalty coefficient c of augmented_lagrangian and quadratic_penalty "
                   "(None: c = 1)")
    t.add_argument("--out", type=path_arg, default=None,
                   help="output folder for metrics and checkpoints (default: runs/NAME-OF-RUN)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --out (an interrupted run ends with "
                   "exactly the metrics of an uninterrupted one)")
    t.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out folder that holds a run already (its files are replaced)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no lines")
    t.set_defaults(func=_train)


def add_problem_arguments(t) -> None:
    """The flags that say what is trained (data, model, loss, optimizer, batches, seed, device):
    ``optimlab train`` and ``optimlab lr-find`` take them alike."""
    t.add_argument("--dataset", default="mnist-10k",
                   help="data set name, e.g. mnist-10k, fashion-mnist, mnist-10k:0,1, "
                   "lls:n=1000,p=50,cond=1e3 (see `optimlab data list`)")
    t.add_argument("--model", default="mlp", help=f"one of: {', '.join(MODEL_NAMES)}, or an import "
                   "path package.module:Class of your own")
    t.add_argument("--hidden", type=int, default=None, help="hidden units of the mlp (100)")
    t.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument of the model's factory (a Python literal); repeatable")
    t.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument of a dataset loader of your own; repeatable")
    t.add_argument("--loss", default=None,
                   help="classification, regression or an import path package.module:function of a "
                   "loss(output, y) (default: the data set's task)")
    t.add_argument("--python-path", type=path_arg, action="append", default=[], metavar="DIR",
                   help="a folder of your own code (for import paths such as mypkg.nets:SmallCNN); "
                   "repeatable")
    t.add_argument("--optimizer", default="sgd",
                   help="a name, optionally with hyperparameters, e.g. 'adam(betas=(0.9, 0.99))' "
                   "(`optimlab optimizers` lists the names: torch.optim's, the baselines', the local "
                   "flow's), or an import path package.module:Class")
    t.add_argument("--batch-size", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--drop-last", action="store_true", help="drop the last, smaller batch")
    t.add_argument("--no-normalize", action="store_true",
                   help="scale pixels to [0, 1] only, without the data set's mean and std")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    t.add_argument("--data-dir", type=path_arg, default=None,
                   help="folder holding data sets as DATA_DIR/NAME/ (also: OPTIMLAB_DATA)")
    t.add_argument("--threads", type=int, default=None, help=THREADS_HELP)


def _train(args: argparse.Namespace) -> int:
    from optimlab.training import TrainConfig, train

    config = TrainConfig(
        **problem_fields(args), lr=args.lr, epochs=args.epochs, iterations=args.iterations,
        eval_every=args.eval_every, log_every=args.log_every, eval_train=not args.no_eval_train,
        constraints=args.constraint, dual_optimizer=args.dual_optimizer, dual_lr=args.dual_lr,
        formulation=args.formulation, penalty=args.penalty, validation=args.validation,
        schedule=args.schedule, precision=args.precision, compile=args.compile,
        memory_format=args.memory_format,
    )
    out = Path(args.out) if args.out else Path("runs") / _run_name(config)

    def show(row: dict) -> None:
        if args.quiet or row["step"] == 0:
            return
        from tqdm.auto import tqdm

        acc = row["test_accuracy"]
        acc_text = f"{100 * acc:.2f}" if acc is not None else f"n/a (test loss {row['test_loss']:.6g})"
        extra = "".join(f". {k.split('_')[0].capitalize()} {k.partition('_')[2]}: {v:.6g}"
                        for k, v in row.items() if k.startswith(("violation_", "multiplier_")))
        tqdm.write(f"Iteration: {row['step']}. Loss: {row['batch_loss']:.6g}. Accuracy: {acc_text}{extra}")

    if args.resume and not (out / "checkpoint.pt").exists():
        raise OptimlabError(f"nothing to resume: {out} holds no checkpoint.pt; run without --resume to start "
                            "this run")
    if args.resume and args.overwrite:
        raise OptimlabError("--resume continues the run in --out, --overwrite replaces it: give one of them")
    result = train(config, out=out, resume=args.resume, data_dir=args.data_dir, on_eval=show,
                   progress=not args.quiet, keep_model=False, overwrite=args.overwrite)
    if args.overwrite and not config.constraints:
        (out / "figure.png").unlink(missing_ok=True)  # a constrained run's figure, not this run's
    final = result.final
    if config.constraints:
        from optimlab.report.figures import constrained_panels

        constrained_panels(result.train_log, out / "figure.png", f"{config.model} under "
                           f"{', '.join(config.constraints)}")
    if result.status == "diverged":
        print(f"diverged at step {result.diverged_at} (non-finite training loss); "
              f"metrics up to there in {out}")
        return 1
    if not args.quiet:
        acc = final.get("test_accuracy")
        summary = f"test accuracy {100 * acc:.2f}%" if acc is not None else \
            f"test loss {final['test_loss']:.6g}"
        print(f"done: {result.steps} iterations, {summary}, {result.wall_time:.1f} s on "
              f"{result.device}; metrics in {out}")
    return 0


def problem_fields(args: argparse.Namespace) -> dict:
    """The TrainConfig fields of :func:`add_problem_arguments`' flags (the user's folders of code put
    on the Python path first)."""
    from optimlab.study.spec import add_to_python_path

    add_to_python_path(str(Path(p).resolve()) for p in args.python_path)
    model_options = options(args.model_option, "--model-option")
    if args.hidden is not None:
        model_options["hidden"] = args.hidden
    return dict(dataset=args.dataset, model=args.model, optimizer=args.optimizer, batch_size=args.batch_size,
                seed=args.seed, drop_last=args.drop_last, normalize=not args.no_normalize, device=args.device,
                model_options=model_options, dataset_options=options(args.dataset_option, "--dataset-option"),
                loss=args.loss)


def _run_name(config) -> str:
    """``DATA-MODEL-OPTIMIZER-lrLR-seedS-HASH``: HASH (8 hex digits) of every setting but those a
    resumption may change (budget, device), so that two runs that differ in anything have two folders
    and ``--resume`` with a larger budget finds its run; a setting added later is left out at the
    value earlier runs had, so that their folders keep their names."""
    import hashlib

    from optimlab.engine.config import LATER_FIELDS, RESUMABLE_CHANGES

    def short(text: str) -> str:  # an import path by its last name
        return text.rpartition(":")[2].rpartition(".")[2] if ":" in text and "." in text else text

    opt = short(config.optimizer_label.split("(")[0])
    data = short(str(config.dataset)).replace(":", "_").replace(",", "-").replace("=", "")
    settings = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES
                and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}  # earlier runs keep their names
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{data}-{short(str(config.model))}-{opt}-lr{config.lr:g}-seed{config.seed}-{digest}"
