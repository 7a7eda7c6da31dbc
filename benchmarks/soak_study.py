"""Soak: many `optimlab study run` processes on one store, killed (SIGKILL) at random moments and
replaced, until the study is done; then the store against one uninterrupted process's.

Prints: kills survived, worker processes started, units taken over (runs claimed more than once),
runs continued from a dead claim's checkpoint, runs lost (not completed), duplicate rows, stitched
runs (rows of two claims interleaved: each row names the claim that wrote it), and, against the
one-process store (sequential or vectorized) that trained the run in the same unit, how many runs are
not bit for bit equal and the largest difference; runs that ended up in a vectorized group of another
shape (their neighbours taken by other workers) sum in another order, and are counted apart with
their largest difference. Every worker computes on one thread. Not part of the test suite (minutes).

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
    from optimlab.study.store import StudyStore

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
        store = StudyStore.open(db, readonly=True)
        writers, history = store.writers(), {c["id"]: c for c in store.claim_history()}
        store.close()
        ref_units = {}  # kind -> run id -> the unit that trained it in the one-process store
        for kind in kinds:
            ref = StudyStore.open(tmp / kind / "study.db", readonly=True)
            ref_units[kind] = {i: c["unit"] for c in ref.claim_history() for i in c["runs"]}
            ref.close()
        conn = sqlite3.connect(db)
        attempts = [a for (a,) in conn.execute("SELECT attempts FROM runs")]
        duplicates = sum(conn.execute(f"SELECT COUNT(*) - COUNT(DISTINCT run_id || ':' || step) FROM {t}")
                         .fetchone()[0] for t in ("evals", "train_log"))
        conn.close()

    lost = int((got.runs.status != "completed").sum())
    numbers = ["test_loss", "test_accuracy", "batch_loss"]
    interleaved = sum(len(set(c)) != len(c) for c in writers.values())  # a claim's rows, another's, its again
    continued = sum(len(c) > 1 for c in writers.values())  # taken over from a checkpoint mid-run
    units_per_run = {i: {history[c]["unit"] for c in claims} for i, claims in writers.items()}
    mixed_units = sum(len(u) > 1 for u in units_per_run.values())
    same_shape = other_shape = unequal = 0
    worst_same = worst_other = 0.0
    for run_id, units in units_per_run.items():  # against the one-process store of the same unit
        (unit,) = units if len(units) == 1 else (None,)
        kind = next((k for k in kinds if ref_units[k].get(run_id) == unit), None)
        mine = got.evals[got.evals.run_id == run_id].sort_values("step")[numbers].reset_index(drop=True)
        diffs = []
        for k in ([kind] if kind else kinds):
            theirs = refs[k].evals[refs[k].evals.run_id == run_id].sort_values("step")[numbers]
            theirs = theirs.reset_index(drop=True)
            same_length = len(theirs) == len(mine)
            diffs.append(float((theirs - mine).abs().max().max()) if same_length else float("inf"))
        if kind:
            same_shape += 1
            unequal += diffs[0] != 0.0
            worst_same = max(worst_same, diffs[0])
        else:  # a group the one-process store did not form (other runs were taken by other workers)
            other_shape += 1
            worst_other = max(worst_other, min(diffs))
    ref = next(iter(refs.values()))
    print(f"study: {len(ref.runs)} runs; one process alone {alone:.1f} s; soak {took:.1f} s with "
          f"{args.workers} workers ({args.executor})")
    print(f"kills survived {kills}, worker processes started {started}, units taken over "
          f"{sum(x > 1 for x in attempts)} (claims beyond the first: {sum(attempts) - len(attempts)}; "
          f"runs continued from a dead claim's checkpoint: {continued}), runs lost {lost}, duplicate rows "
          f"{duplicates}, stitched runs (rows of two claims interleaved) {interleaved}, runs written by "
          f"units of two shapes {mixed_units}, unexpected worker errors {len(errors)}")
    print(f"runs trained in the same unit as one process trains them: {same_shape}, of which not bit for "
          f"bit equal {unequal} (largest difference {worst_same:.3g}); in a group of another shape: "
          f"{other_shape} (largest difference from one process {worst_other:.3g})")
    for e in errors[:5]:
        print(f"  worker error: {e}")


if __name__ == "__main__":
    main()
