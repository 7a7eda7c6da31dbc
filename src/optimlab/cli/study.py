"""``optimlab study run | status | export``: optimizer studies from a study file, in one store."""

from __future__ import annotations

import argparse

from optimlab.cli.arguments import THREADS_HELP, path_arg, store_path

# optimlab.study.templates.TEMPLATES, written out so that building the parser imports no torch (tested)
TEMPLATE_NAMES = ("quickstart", "lr-robustness", "constrained", "suite", "own-code")
TEMPLATE_HELP = ("quickstart (4 optimizers x 5 learning rates x 2 seeds of an MLP on the bundled digits), "
                 "lr-robustness (seed 004's study on a CPU), constrained (seed 001's constrained logistic "
                 "regression), suite (DeepOBS's problems, ranked across tasks), own-code (your network, "
                 "loader and optimizer by import path; writes mycode/ beside the file).")
STORE_HELP = "the study's store (study.db), its folder, or the study file (its store in runs/NAME)"


def add_to(sub) -> None:
    s = sub.add_parser("study", help="optimizer studies: run, status, export",
                       description="Optimizers x learning rates x seeds from one study file (TOML), "
                       "stored in one SQLite database, resumable.")
    ssub = s.add_subparsers(title="commands", metavar="COMMAND")
    r = ssub.add_parser(
        "run", help="run (or continue) a study",
        description="Run every run of the study file that is not finished in its store: completed "
        "runs are skipped, interrupted ones continue from their last checkpoint.")
    r.add_argument("file", type=path_arg, help="the study file (TOML)")
    r.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="set a field of the file: epochs=3, executor.kind=sequential, "
                   "'optimizers=[\"adam\", \"sgd\"]', tasks.0.batch_size=64 (TOML values; recorded in the "
                   "store)")
    r.add_argument("--out", type=path_arg, default=None, help="the study's folder, holding study.db "
                   "(default: runs/NAME)")
    r.add_argument("--executor", default=None,
                   choices=("sequential", "vectorized", "processes", "ray"),
                   help="override the file's [executor] kind")
    r.add_argument("--workers", type=int, default=None, help="worker processes (processes, ray)")
    r.add_argument("--address", default=None, help="ray: the cluster's address")
    r.add_argument("--extend", action="store_true",
                   help="add this file's new runs to a store of an earlier version of the study")
    r.add_argument("--code-changed", action="store_true",
                   help="go on although the code the study imports (its python_path packages) changed "
                   "since the store recorded it")
    r.add_argument("--data-dir", type=path_arg, default=None,
                   help="folder holding data sets as DATA_DIR/NAME/")
    r.add_argument("--report", action="store_true",
                   help="then write the study's report (as `optimlab report`) and print where it is")
    r.add_argument("--threads", type=int, default=None,
                   help=THREADS_HELP + " (processes and ray workers get the CPUs divided among them)")
    r.add_argument("-v", "--verbose", action="store_true", help="a line per finished run")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_study_run)
    init = ssub.add_parser("init", help="write a commented study file to start from",
                           description="Write a study file from a template shipped with optimlab (the "
                           "repository's examples): " + TEMPLATE_HELP)
    init.add_argument("file", nargs="?", type=path_arg, default=None,
                      help="the study file to write (default: TEMPLATE.toml here)")
    init.add_argument("--template", default="quickstart", help=f"one of: {', '.join(TEMPLATE_NAMES)}")
    init.add_argument("--force", action="store_true", help="replace files that exist")
    init.set_defaults(func=_study_init)
    st = ssub.add_parser("status", help="what is done, running, diverged, failed or missing",
                         description="Counts of the runs of a study store by status.")
    st.add_argument("db", type=path_arg, help=STORE_HELP)
    st.add_argument("--summary", action="store_true",
                    help="the counts per task and optimizer instead of a line per unfinished run")
    st.set_defaults(func=_study_status)
    ck = ssub.add_parser("check", help="check a study store for damage",
                         description="SQLite's full integrity check of a study store, and whether every "
                         "row of every table can be read. Exit status 1 when something is damaged.")
    ck.add_argument("db", type=path_arg, help=STORE_HELP)
    ck.set_defaults(func=_study_check)
    sv = ssub.add_parser("salvage", help="copy what is intact of a damaged store into a new one",
                         description="Copy the study's definition and every finished run whose rows can "
                         "all be read into OUT/study.db; every other run is pending there, trained again "
                         "by `optimlab study run FILE --out OUT`.")
    sv.add_argument("db", type=path_arg, help="the damaged store (study.db)")
    sv.add_argument("out", type=path_arg, help="a new, empty folder for the salvaged store")
    sv.set_defaults(func=_study_salvage)
    e = ssub.add_parser("export", help="write runs, evals and train_log as CSV or Parquet",
                        description="Write the runs, evaluation rows and training-loss rows of a "
                        "study store as files.")
    e.add_argument("db", type=path_arg, help=STORE_HELP)
    e.add_argument("--format", default="csv", choices=("csv", "parquet", "tensorboard"),
                   help="csv or parquet: runs, evals and train_log tables; tensorboard: one TensorBoard run "
                   "per configuration (scalars per step, hyperparameters in HParams)")
    e.add_argument("--out", type=path_arg, default=None,
                   help="folder for the files (default: next to the store)")
    e.set_defaults(func=_study_export)
    s.set_defaults(func=lambda a: (s.print_help(), 2)[1])


def _study_init(args: argparse.Namespace) -> int:
    from optimlab.study.templates import write_template

    written = write_template(args.template, args.file, force=args.force)
    for path in written:
        print(f"wrote {path}")
    print(f"next: optimlab study run {written[0]} --report")
    return 0


def _study_run(args: argparse.Namespace) -> int:
    from optimlab.study.runner import executor_from_options, run_study
    from optimlab.study.spec import load_study

    spec = load_study(args.file, args.overrides)
    executor = executor_from_options(spec, args.executor, args.workers, args.address)
    outcome = run_study(spec, out=args.out, executor=executor, extend=args.extend,
                        data_dir=args.data_dir, progress=not args.quiet, verbose=args.verbose,
                        code_changed=args.code_changed)
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
    import time

    from optimlab.study import axes
    from optimlab.study.store import StudyStore

    store = StudyStore.open(store_path(args.db), readonly=True)
    try:
        runs, claims, name = store.runs(), store.claims(), store.meta("name")
    finally:
        store.close()
    live = {i for c in claims if c["live"] for i in c["runs"]}
    for r in runs:  # running, but whoever trained it is gone: the next `study run` continues it
        if r["status"] == "running" and r["id"] not in live:
            r["status"] = "interrupted"
    counts = {s: sum(r["status"] == s for r in runs) for s in
              ("completed", "diverged", "running", "pending", "failed", "interrupted")}
    if not counts["interrupted"]:
        counts.pop("interrupted")
    print(f"{name}: {len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if args.summary:
        _summary(runs)
    for r in [] if args.summary else runs:
        if r["status"] not in ("completed", "diverged"):
            extra = f" ({r['error'].strip().splitlines()[-1]})" if r["error"] else ""
            print(f"  {r['status']:<11} {axes.label(axes.of_row(r))} steps={r['steps']}{extra}")
    if claims:
        now = time.time()
        print("claims (who trains what):")
        for c in claims:
            state = "live" if c["live"] else "dead (its process is gone or silent): a study run takes it over"
            since = time.strftime("%H:%M:%S", time.localtime(c["since"]))
            print(f"  {c['unit']}: process {c['pid']} on {c['host']}, since {since}, heartbeat "
                  f"{now - c['heartbeat']:.0f} s ago, {state}")
    return 0


def _study_check(args: argparse.Namespace) -> int:
    from optimlab.study.store import check_store

    args.db = str(store_path(args.db))
    found = check_store(args.db)
    for table, rows in found["tables"].items():
        print(f"  {table:<12} {rows if isinstance(rows, str) else f'{rows} rows, readable'}")
    if found["problems"]:
        print(f"{args.db}: damaged:")
        for problem in found["problems"][:20]:
            print(f"  {problem}")
        return 1
    print(f"{args.db}: intact")
    return 0


def _study_salvage(args: argparse.Namespace) -> int:
    from optimlab.study.store import salvage

    done = salvage(args.db, args.out)
    print(f"{args.out}/study.db: {done['copied']} runs copied whole, {done['again']} to train again "
          f"(`optimlab study run FILE --out {args.out}` does)")
    return 0


def _summary(runs: list[dict]) -> None:
    """One line per task and optimizer: finished of all, and the other statuses that occur."""
    groups: dict[tuple, list[str]] = {}
    for r in runs:
        groups.setdefault((r.get("task") or "", r["optimizer"]), []).append(r["status"])
    width = max(len(" ".join(k).strip()) for k in groups)
    for key, statuses in groups.items():
        done = sum(s in ("completed", "diverged") for s in statuses)
        rest = [f"{statuses.count(s)} {s}" for s in ("diverged", "running", "interrupted", "pending",
                                                      "failed") if statuses.count(s)]
        label = " ".join(key).strip()
        print(f"  {label:<{width}}  {done}/{len(statuses)} done" + (f" ({', '.join(rest)})" if rest else ""))


def _study_export(args: argparse.Namespace) -> int:
    from optimlab.study.results import export_results

    db = store_path(args.db)
    if args.format == "tensorboard":
        from optimlab.study.tensorboard import export_tensorboard

        out = args.out or str(db.resolve().parent / "tensorboard")
        folders = export_tensorboard(db, out)
        print(f"{len(folders)} TensorBoard runs in {out}; view them with: tensorboard --logdir {out}")
        return 0
    out = args.out or str(db.resolve().parent / "export")
    for path in export_results(db, out, args.format):
        print(path)
    return 0
