"""The command line: ``optimlab train | data``.

Errors a user can fix are printed as one message, without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from optimlab import __version__
from optimlab.errors import OptimlabError
from optimlab.models import model_names
from optimlab.optimizers import hyperparameters, optimizer_names


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "threads", None) is not None:
            _set_threads(args.threads)
        return args.func(args) or 0
    except OptimlabError as e:
        print(f"optimlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("optimlab: interrupted; `optimlab train ... --resume` with the same --out continues from "
              "the last checkpoint", file=sys.stderr)
        return 130


THREADS_HELP = ("CPU threads for torch (default: one per core). On a busy machine use fewer: a small "
                "model on threads that wait for a core taken by another process runs several times slower")


def _set_threads(threads: int) -> None:
    import torch

    if threads < 1:
        raise OptimlabError(f"--threads must be an integer >= 1; got {threads}")
    torch.set_num_threads(threads)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="optimlab",
        description="A PyTorch toolkit for optimization in machine learning.",
    )
    p.add_argument("--version", action="version", version=f"optimlab {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    t = sub.add_parser(
        "train", help="train one model with one optimizer",
        description="Train one model with one optimizer on a named data set; print the test "
        "accuracy at every evaluation; write metrics (JSON, CSV) and a checkpoint every epoch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument("--dataset", default="mnist-10k",
                   help="data set name, e.g. mnist-10k, fashion-mnist, mnist-10k:0,1, "
                   "lls:n=1000,p=50,cond=1e3 (see `optimlab data list`)")
    t.add_argument("--model", default="mlp", help=f"one of: {', '.join(model_names())}, or an import "
                   "path package.module:Class of your own")
    t.add_argument("--hidden", type=int, default=None, help="hidden units of the mlp (100)")
    t.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument of the model's factory (a Python literal); repeatable")
    t.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument of a dataset loader of your own; repeatable")
    t.add_argument("--loss", default=None,
                   help="classification, regression or an import path package.module:function of a "
                   "loss(output, y) (default: the data set's task)")
    t.add_argument("--python-path", action="append", default=[], metavar="DIR",
                   help="a folder of your own code (for import paths such as mypkg.nets:SmallCNN); "
                   "repeatable")
    t.add_argument("--optimizer", default="sgd",
                   help=f"a name, optionally with hyperparameters, e.g. 'adam(betas=(0.9, 0.99))'; "
                   f"names: {', '.join(optimizer_names())}")
    t.add_argument("--lr", type=str, default=None,
                   help="learning rate (default: torch's default for the optimizer)")
    t.add_argument("--batch-size", type=int, default=100)
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None, help="budget in epochs (default 1)")
    budget.add_argument("--iterations", type=int, default=None, help="budget in iterations")
    t.add_argument("--eval-every", type=int, default=None,
                   help="evaluate every N iterations (default: at the end of every epoch)")
    t.add_argument("--log-every", type=int, default=10,
                   help="record the training batch loss every K iterations")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--drop-last", action="store_true", help="drop the last, smaller batch")
    t.add_argument("--no-normalize", action="store_true",
                   help="scale pixels to [0, 1] only, without the data set's mean and std")
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
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    t.add_argument("--data-dir", default=None,
                   help="folder holding data sets as DATA_DIR/NAME/ (also: OPTIMLAB_DATA)")
    t.add_argument("--out", default=None,
                   help="output folder for metrics and checkpoints (default: runs/NAME-OF-RUN)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --out (an interrupted run ends with "
                   "exactly the metrics of an uninterrupted one)")
    t.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no lines")
    t.set_defaults(func=_train)

    d = sub.add_parser("data", help="data sets: list, info",
                       description="Data sets: which exist, where they were found, what is in them.")
    dsub = d.add_subparsers(title="commands", metavar="COMMAND")
    dl = dsub.add_parser("list", help="every data set, whether and where it was found",
                         description="Every data set, whether and where it was found, or how to get it.")
    dl.add_argument("--data-dir", default=None, help="folder holding data sets as DATA_DIR/NAME/")
    dl.add_argument("--json", action="store_true", help="machine-readable output")
    dl.set_defaults(func=_data_list)
    di = dsub.add_parser("info", help="load a data set and describe it",
                         description="Load a data set (downloading it if needed) and describe it.")
    di.add_argument("name", help="data set name, e.g. mnist-10k or mnist-10k:0,1")
    di.add_argument("--data-dir", default=None)
    di.set_defaults(func=_data_info)
    d.set_defaults(func=lambda a: (d.print_help(), 2)[1])

    _study_parser(sub)

    rp = sub.add_parser("report", help="a study's report: tables, figures, report.html",
                        description="Summarize a study store: final metrics, convergence speed, "
                        "robustness to the learning rate, a ranking; figures; report.html and report.md. "
                        "Works on a study that is still running or was interrupted.")
    rp.add_argument("db", help="the study's store (study.db)")
    rp.add_argument("--out", default=None, help="folder for the report (default: report/ beside the store)")
    rp.add_argument("--target-fraction", type=float, default=0.95,
                    help="convergence target: this fraction of the best mean final test accuracy")
    rp.add_argument("--target-accuracy", type=float, default=None,
                    help="convergence target as an absolute test accuracy (overrides the fraction)")
    rp.add_argument("--feasibility-tolerance", type=float, default=None,
                    help="constrained studies: a run ends feasible when its largest final violation is "
                    "at most this (default 1e-3)")
    rp.set_defaults(func=_report)

    _localflow_parser(sub)

    o = sub.add_parser("optimizers", help="the optimizer names and their hyperparameters",
                       description="The optimizer names, each with its hyperparameters.")
    o.set_defaults(func=_optimizers)
    return p


def _study_parser(sub) -> None:
    s = sub.add_parser("study", help="optimizer studies: run, status, export",
                       description="Optimizers x learning rates x seeds from one study file (TOML), "
                       "stored in one SQLite database, resumable.")
    ssub = s.add_subparsers(title="commands", metavar="COMMAND")
    r = ssub.add_parser(
        "run", help="run (or continue) a study",
        description="Run every run of the study file that is not finished in its store: completed "
        "runs are skipped, interrupted ones continue from their last checkpoint.")
    r.add_argument("file", help="the study file (TOML)")
    r.add_argument("--out", default=None, help="the study's folder, holding study.db "
                   "(default: runs/NAME)")
    r.add_argument("--executor", default=None,
                   choices=("sequential", "vectorized", "processes", "ray"),
                   help="override the file's [executor] kind")
    r.add_argument("--workers", type=int, default=None, help="worker processes (processes, ray)")
    r.add_argument("--address", default=None, help="ray: the cluster's address")
    r.add_argument("--extend", action="store_true",
                   help="add this file's new runs to a store of an earlier version of the study")
    r.add_argument("--data-dir", default=None, help="folder holding data sets as DATA_DIR/NAME/")
    r.add_argument("--report", action="store_true",
                   help="then write the study's report (as `optimlab report`) and print where it is")
    r.add_argument("--threads", type=int, default=None,
                   help=THREADS_HELP + " (processes and ray workers get the CPUs divided among them)")
    r.add_argument("-v", "--verbose", action="store_true", help="a line per finished run")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_study_run)
    st = ssub.add_parser("status", help="what is done, running, diverged, failed or missing",
                         description="Counts of the runs of a study store by status.")
    st.add_argument("db", help="the study's store (study.db)")
    st.set_defaults(func=_study_status)
    e = ssub.add_parser("export", help="write runs, evals and train_log as CSV or Parquet",
                        description="Write the runs, evaluation rows and training-loss rows of a "
                        "study store as files.")
    e.add_argument("db", help="the study's store (study.db)")
    e.add_argument("--format", default="csv", choices=("csv", "parquet"))
    e.add_argument("--out", default=None, help="folder for the files (default: next to the store)")
    e.set_defaults(func=_study_export)
    s.set_defaults(func=lambda a: (s.print_help(), 2)[1])


def _study_run(args: argparse.Namespace) -> int:
    from optimlab.study.runner import executor_from_options, run_study
    from optimlab.study.spec import load_study

    spec = load_study(args.file)
    executor = executor_from_options(spec, args.executor, args.workers, args.address)
    outcome = run_study(spec, out=args.out, executor=executor, extend=args.extend,
                        data_dir=args.data_dir, progress=not args.quiet, verbose=args.verbose)
    print(f"{spec.name}: {outcome.completed} completed, {outcome.diverged} diverged, "
          f"{outcome.failed} failed, {outcome.pending} pending ({outcome.wall_time:.1f} s); "
          f"store: {outcome.store}")
    if args.report:
        from optimlab.report import make_report

        report = make_report(outcome.store)
        for note in report.summary.notes:
            print(f"note: {note}")
        print(f"report: {report.html}")
    return 0 if outcome.failed == 0 and outcome.pending == 0 else 1


def _study_status(args: argparse.Namespace) -> int:
    from optimlab.study import axes
    from optimlab.study.store import StudyStore

    store = StudyStore.open(args.db)
    try:
        runs = store.runs()
        name = store.meta("name")
    finally:
        store.close()
    counts = {s: sum(r["status"] == s for r in runs) for s in
              ("completed", "diverged", "running", "pending", "failed")}
    print(f"{name}: {len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for r in runs:
        if r["status"] not in ("completed", "diverged"):
            extra = f" ({r['error'].strip().splitlines()[-1]})" if r["error"] else ""
            print(f"  {r['status']:<8} {axes.label(axes.of_row(r))} steps={r['steps']}{extra}")
    return 0


def _study_export(args: argparse.Namespace) -> int:
    from optimlab.study.results import export_results

    out = args.out or str(Path(args.db).resolve().parent / "export")
    for path in export_results(args.db, out, args.format):
        print(path)
    return 0


def _localflow_parser(sub) -> None:
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
    pic.add_argument("--out", default="picture.png", help="the PNG to write")
    pic.set_defaults(func=_localflow_picture)
    sch = lsub.add_parser("schedule", parents=[common], help="the per-epoch learning rates of a run",
                          description="Train with SGD under the curvature scheduler (lr = the flow time "
                          "h) and print the learning rate it sets, one per epoch (the median).")
    sch.add_argument("--lr", type=float, default=1.0, help="the flow time h")
    sch.add_argument("--epochs", type=int, default=3)
    sch.add_argument("--every", type=int, default=10, help="measure the curvature every k steps")
    sch.add_argument("--method", default="hvp", choices=("hvp", "secant"))
    sch.add_argument("--momentum", type=float, default=0.0)
    sch.add_argument("--out", default=None, help="also write every step's record as JSON here")
    sch.set_defaults(func=_localflow_schedule)
    lf.set_defaults(func=lambda a: (lf.print_help(), 2)[1])


def _localflow_picture(args: argparse.Namespace) -> int:
    from optimlab.localflow import save_picture
    from optimlab.localflow.runs import picture_at
    from optimlab.runfiles import check_writable

    check_writable(Path(args.out).resolve().parent)
    pic = picture_at(args.dataset, args.model, args.batch_size, args.steps, args.lr, args.seed,
                     radius=args.radius, spread=args.spread)
    save_picture(pic, args.out)
    print(f"slope {pic.slope:.6g} (curvature along q), intercept {pic.intercept:.6g}, R^2 {pic.r2:.6f}; "
          f"picture: {args.out}")
    return 0


def _localflow_schedule(args: argparse.Namespace) -> int:
    from optimlab.localflow.runs import schedule_run
    from optimlab.runfiles import atomic_write_text, check_writable

    if args.out:
        check_writable(Path(args.out).resolve().parent)
    run = schedule_run(args.dataset, args.model, args.lr, args.epochs, args.batch_size, args.every,
                       args.method, args.momentum, args.seed)
    for epoch, h in enumerate(run["hs"], 1):
        print(f"epoch {epoch}: lr {h:.6g}")
    if run["diverged_at"] is not None:
        print(f"diverged at step {run['diverged_at']} (non-finite batch loss); the learning rates above "
              "are those of the steps before it")
    else:
        print(f"final training loss {run['train_loss']:.6g}, test loss {run['test_loss']:.6g}")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(run, indent=1))
        print(f"records: {args.out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from optimlab.report import make_report

    report = make_report(args.db, args.out, target_fraction=args.target_fraction,
                         target_accuracy=args.target_accuracy,
                         **({} if args.feasibility_tolerance is None else
                            {"feasibility_tolerance": args.feasibility_tolerance}))
    for note in report.summary.notes:
        print(f"note: {note}")
    print(f"report: {report.html}")
    return 0


def _options(pairs: list[str], flag: str) -> dict:
    """``KEY=VALUE`` pairs as keyword arguments (values: Python literals, else strings)."""
    import ast

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise OptimlabError(f"{flag} takes KEY=VALUE, e.g. {flag} width=64; got {pair!r}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def _train(args: argparse.Namespace) -> int:
    from optimlab.study.spec import add_to_python_path
    from optimlab.training import TrainConfig, train

    add_to_python_path(str(Path(p).resolve()) for p in args.python_path)
    model_options = _options(args.model_option, "--model-option")
    if args.hidden is not None:
        model_options["hidden"] = args.hidden
    config = TrainConfig(
        dataset=args.dataset, model=args.model, optimizer=args.optimizer,
        lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, iterations=args.iterations,
        eval_every=args.eval_every, log_every=args.log_every, seed=args.seed,
        drop_last=args.drop_last, normalize=not args.no_normalize,
        eval_train=not args.no_eval_train, device=args.device,
        model_options=model_options, dataset_options=_options(args.dataset_option, "--dataset-option"),
        loss=args.loss, constraints=args.constraint, dual_optimizer=args.dual_optimizer, dual_lr=args.dual_lr,
        formulation=args.formulation, penalty=args.penalty,
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

    result = train(config, out=out, resume=args.resume, data_dir=args.data_dir, on_eval=show,
                   progress=not args.quiet, keep_model=False)
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


def _run_name(config) -> str:
    def short(text: str) -> str:  # an import path by its last name
        return text.rpartition(":")[2].rpartition(".")[2] if ":" in text and "." in text else text

    opt = short(config.optimizer_label.split("(")[0])
    data = short(config.dataset).replace(":", "_").replace(",", "-").replace("=", "")
    return f"{data}-{short(config.model)}-{opt}-lr{config.lr:g}-seed{config.seed}"


def _data_list(args: argparse.Namespace) -> int:
    from optimlab.data import dataset_status

    rows = dataset_status(args.data_dir)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "found" if r["found"] else "missing"
        print(f"{r['name']:<{width}}  {mark:<7}  {r['summary']}")
        detail = f"at: {r['where']}" if r["found"] else f"get it: {r['how_to_get']}"
        print(f"{'':<{width}}           {detail}")
    return 0


def _data_info(args: argparse.Namespace) -> int:
    from optimlab.data import load_dataset

    d = load_dataset(args.name, data_dir=args.data_dir)
    print(f"{d.name}: {d.task}, {d.num_train} train / {d.num_test} test samples, "
          f"input shape {d.input_shape}")
    if d.classes:
        counts = d.y_train.bincount(minlength=d.num_classes).tolist()
        pairs = zip(d.classes, counts, strict=True)
        print("classes (train count): " + ", ".join(f"{c} ({n})" for c, n in pairs))
    print(f"source: {d.source}")
    return 0


def _optimizers(args: argparse.Namespace) -> int:
    from optimlab.optimizers import LOCAL_FLOW
    from optimlab.registry import optimizer_entries

    for name, entry in optimizer_entries().items():
        hp = ", ".join(f"{k}={v!r}" for k, v in entry.hyperparameters().items())
        stacked = "stacked" if entry.stackable else "one by one"
        print(f"{name:<10} [{entry.source}; {'lr-linear' if entry.lr_linear else 'not lr-linear'}; "
              f"vectorized: {stacked}] {hp}")
    for name in LOCAL_FLOW:
        hp = ", ".join(f"{k}={v!r}" for k, v in hyperparameters(name).items())
        print(f"{name:<10} [optimlab.localflow; vectorized: one by one] {hp}")
    print("or any torch.optim.Optimizer class of your own by import path: package.module:Class(key=value)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
