"""Soak: many `optimlab study run` processes on one store, killed (SIGKILL) at random moments and
replaced, until the study is done; then the store against one uninterrupted process's.

Prints: kills survived, worker processes started, units taken over (runs claimed more than once),
runs lost (not completed), duplicate rows, runs equal to neither one-process store (sequential or
vectorized; rows written by two claims would be, and so is a run of a vectorized group of another
shape than the one-process store's, which sums in another order), and the largest difference of a
recorded number from the nearer one-process store. Every worker computes on one thread, so the
numbers agree bit for bit. Not part of the test suite (minutes).

Run: python benchmarks/soak_study.py [--workers 3] [--kills 20] [--seconds 600] [--epochs 20]
                                     [--executor mixed|sequential|vectorized]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDY = """name = "soak"
dataset = "mnist-10k"
model = "logreg"
batch_size = 250
epochs = EPOCHS
eval_every = 8
log_every = 2
optimizers = ["sgd", "momentum", { name = "adam", learning_rates = [1e-3, 3e-3] }]
learning_rates = [0.1, 0.03, 0.01]
seeds = [0, 1, 2]
device = "cpu"
"""
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
KEY = ["optimizer", "lr", "seed", "step"]


def start(study: Path, out: Path, executor: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "optimlab", "study", "run", str(study), "--out", str(out),
                             "-q", "--executor", executor], env={**os.environ, **ONE_THREAD},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finished(db: Path) -> bool:
    try:
        conn = sqlite3.connect(db, timeout=5)
        try:
            left = conn.execute("SELECT COUNT(*) FROM runs WHERE status NOT IN ('completed', 'diverged')")
            return left.fetchone()[0] == 0 and conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] > 0
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=3, help="processes kept running on the store")
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs to deal out, at random moments")
    p.add_argument("--seconds", type=float, default=600, help="give up after this long")
    p.add_argument("--executor", default="mixed", choices=["sequential", "vectorized", "mixed"])
    p.add_argument("--epochs", type=int, default=20, help="of each run (longer: more kills land)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)

    import torch

    torch.set_num_threads(1)
    from optimlab.study import load_results, parse_study, run_study

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        study = tmp / "soak.toml"
        text = STUDY.replace("EPOCHS", str(args.epochs))
        study.write_text(text)
        kinds = ["sequential", "vectorized"] if args.executor == "mixed" else [args.executor]
        t0 = time.perf_counter()
        refs = {kind: load_results(run_study(parse_study(text), out=tmp / kind, executor=kind,
                                             progress=False).store) for kind in kinds}
        alone = (time.perf_counter() - t0) / len(kinds)
        out, db = tmp / "soak", tmp / "soak" / "study.db"
        procs, started, kills, errors = [], 0, 0, []
        deadline = time.time() + args.seconds
        t0 = time.perf_counter()
        while time.time() < deadline and not finished(db):
            for proc in [q for q in procs if q.poll() is not None]:
                procs.remove(proc)
                if proc.returncode not in (0, -signal.SIGKILL):
                    errors.append(proc.stderr.read().strip().splitlines()[-1:])
            while len(procs) < args.workers:
                procs.append(start(study, out, kinds[started % len(kinds)]))
                started += 1
            time.sleep(rng.uniform(0.3, 3.0))
            if kills < args.kills and procs:
                victim = rng.choice(procs)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                kills += 1
        for proc in procs:  # the last ones finish on their own
            proc.wait(timeout=args.seconds)
        took = time.perf_counter() - t0
        got = load_results(db)
        conn = sqlite3.connect(db)
        attempts = [a for (a,) in conn.execute("SELECT attempts FROM runs")]
        duplicates = sum(conn.execute(f"SELECT COUNT(*) - COUNT(DISTINCT run_id || ':' || step) FROM {t}")
                         .fetchone()[0] for t in ("evals", "train_log"))
        conn.close()

    lost = int((got.runs.status != "completed").sum())
    numbers = ["test_loss", "test_accuracy", "batch_loss"]
    by_run = ["optimizer", "lr", "seed"]
    mine = {k: r.reset_index(drop=True) for k, r in got.evals.sort_values(KEY).groupby(by_run)}
    stitched, worst = 0, 0.0
    for k, run in mine.items():  # each run must be one process's: equal to one of the references
        theirs = [r.evals.sort_values(KEY).set_index(by_run).loc[k].reset_index() for r in refs.values()]
        if not any(t[KEY].equals(run[KEY]) and t[numbers].equals(run[numbers]) for t in theirs):
            stitched += 1
        worst = max(worst, min(float((t[numbers] - run[numbers]).abs().max().max()) for t in theirs
                               if len(t) == len(run)) if any(len(t) == len(run) for t in theirs) else
                    float("inf"))
    ref = next(iter(refs.values()))
    print(f"study: {len(ref.runs)} runs; one process alone {alone:.1f} s; soak {took:.1f} s with "
          f"{args.workers} workers ({args.executor})")
    print(f"kills survived {kills}, worker processes started {started}, units taken over "
          f"{sum(x > 1 for x in attempts)} (claims beyond the first: {sum(attempts) - len(attempts)}), "
          f"runs lost {lost}, duplicate rows {duplicates}, runs equal to neither one-process store "
          f"{stitched}, "
          f"largest difference from one process {worst:.3g}, unexpected worker errors {len(errors)}")
    for e in errors[:5]:
        print(f"  worker error: {e}")


if __name__ == "__main__":
    main()
