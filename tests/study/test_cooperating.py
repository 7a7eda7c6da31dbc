"""Several `optimlab study run` processes on one store share its work: each unit is claimed in one
transaction, under a lease its holder renews; a claim whose process died is taken over from the unit's
last checkpoint; every run's rows come from one claim; the final store is a single process's."""

import random
import signal
import sqlite3
import time

import numpy as np
import pytest
from test_runner import STUDY, _run_cli_study, _wait_for, rows

from optimlab.cli import main
from optimlab.study.results import load_results
from optimlab.study.runner import run_study
from optimlab.study.spec import ExecutorSpec, parse_study
from optimlab.study.store import StudyStore

# ~1 s a run: the processes overlap; groups stacked whatever a measurement on a busy machine says
LONGER = STUDY.replace("epochs = 3", "epochs = 12") + '\n[executor]\nstack = "always"\n'


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("study") / "study.toml"
    path.write_text(LONGER)
    return path


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The study trained by one process: run by run, and in vectorized groups."""
    out = {}
    for kind in ("sequential", "vectorized"):
        folder = tmp_path_factory.mktemp(kind)
        outcome = run_study(parse_study(LONGER), out=folder, executor=ExecutorSpec(kind=kind, stack="always"),
                             progress=False)
        out[kind] = load_results(outcome.store)
        out[kind].meta["units"] = units_of(outcome.store)
    return out


def writers(db) -> tuple[dict[int, list[int]], dict[int, dict]]:
    """Per run, the claims that wrote its rows, in step order; and every claim (its unit, outcome)."""
    store = StudyStore.open(db, readonly=True)
    try:
        return store.writers(), {c["id"]: c for c in store.claim_history()}
    finally:
        store.close()


def units_of(db) -> dict[int, set[str]]:
    """Per run, the units (``run:3``, ``group:1,2``) whose claims wrote its rows."""
    by_run, claims = writers(db)
    return {run: {claims[c]["unit"] for c in ids} for run, ids in by_run.items()}


def assert_never_interleaved(db) -> dict[int, list[int]]:
    """Every run's rows come from one claim at a time: no claim writes again after another did."""
    by_run, _ = writers(db)
    assert all(len(set(ids)) == len(ids) for ids in by_run.values()), by_run
    return by_run


def per_run(results) -> dict:
    """optimizer, lr, seed -> that run's evaluation and training-log rows (without wall times)."""
    evals, logs = rows(results, "evals"), rows(results, "train_log")
    key = ["optimizer", "lr", "seed"]
    return {k: (e.reset_index(drop=True), logs.set_index(key).loc[k].reset_index(drop=True))
            for k, e in evals.groupby(key)}


def assert_finished_as(db, reference) -> None:
    """Every run of the store at ``db`` completed, with exactly the rows of ``reference``."""
    final = load_results(db)
    assert set(final.runs.status) == {"completed"}
    assert rows(final, "evals").equals(rows(reference, "evals"))
    assert rows(final, "train_log").equals(rows(reference, "train_log"))


def attempts(db) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        return [a for (a,) in conn.execute("SELECT attempts FROM runs ORDER BY id")]
    finally:
        conn.close()


def test_two_processes_started_together_train_every_run_once(study_file, references, tmp_path):
    out = tmp_path / "shared"
    procs = [_run_cli_study(study_file, out, "--executor", "sequential") for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    final = load_results(out / "study.db")
    assert set(final.runs.status) == {"completed"} and attempts(out / "study.db") == [1] * 6
    assert rows(final, "evals").equals(rows(references["sequential"], "evals"))
    assert rows(final, "train_log").equals(rows(references["sequential"], "train_log"))
    store = StudyStore.open(out / "study.db")
    workers = {r["worker"] for r in store.runs()}
    assert store.claims() == []  # every claim released at the end
    store.close()
    assert len(workers) == 2  # both processes trained some of the runs
    by_run, claims = writers(out / "study.db")
    assert all(len(ids) == 1 for ids in by_run.values())  # each run's rows: one claim's
    assert {c["outcome"] for c in claims.values()} == {"finished"}


def test_a_sequential_and_a_vectorized_process_never_stitch_a_run(study_file, references, tmp_path):
    out = tmp_path / "mixed"
    procs = [_run_cli_study(study_file, out, "--executor", kind) for kind in ("vectorized", "sequential")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    final = load_results(out / "study.db")
    assert set(final.runs.status) == {"completed"} and attempts(out / "study.db") == [1] * 6
    by_run = assert_never_interleaved(out / "study.db")
    assert all(len(ids) == 1 for ids in by_run.values())  # each run's rows: one claim's
    # and its numbers those of one process that trained it in the same unit: run by run, or in the
    # group a vectorized process alone forms; a group of another shape (the other process took some
    # of its runs first) sums in another order, within the vectorized engine's tolerance
    units = units_of(out / "study.db")
    ids = final.runs.set_index(["optimizer", "lr", "seed"]).run_id
    by_kind = {kind: per_run(r) for kind, r in references.items()}
    for key, (evals, log) in per_run(final).items():
        (unit,) = units[ids.loc[key]]
        kind = next((k for k, r in references.items() if r.meta["units"][ids.loc[key]] == {unit}), None)
        if kind is not None:
            assert by_kind[kind][key][0].equals(evals) and by_kind[kind][key][1].equals(log), (key, unit)
        else:
            want = by_kind["sequential"][key][0]
            for column in ("test_loss", "batch_loss", "train_loss", "test_accuracy"):
                np.testing.assert_allclose(evals[column].to_numpy(float), want[column].to_numpy(float),
                                           rtol=1e-5, equal_nan=True, err_msg=f"{key} {column}")


def test_a_killed_process_is_taken_over_from_its_last_checkpoint(study_file, references, tmp_path, capsys):
    out = tmp_path / "killed"
    db = out / "study.db"
    first = _run_cli_study(study_file, out, "--executor", "sequential")
    # kill it once its first run has a checkpoint mid-way (SIGKILL: its claim is left behind)
    _wait_for(db, "SELECT COUNT(*) FROM checkpoints", proc=first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert main(["study", "status", str(db)]) == 0
    said = capsys.readouterr().out
    assert "1 interrupted" in said and "dead (its process is gone or silent)" in said
    second = _run_cli_study(study_file, out, "--executor", "sequential")
    assert second.wait(timeout=300) == 0, second.stderr.read()
    final = load_results(db)
    assert set(final.runs.status) == {"completed"}
    assert 2 in attempts(db)  # the run in flight: claimed again, continued from its checkpoint
    assert rows(final, "evals").equals(rows(references["sequential"], "evals"))
    assert rows(final, "train_log").equals(rows(references["sequential"], "train_log"))
    by_run, claims = writers(db)  # its rows: the dead claim's up to the checkpoint, then the new one's
    continued = [ids for ids in by_run.values() if len(ids) > 1]
    assert len(continued) == 1 and [claims[c]["outcome"] for c in continued[0]] == ["died", "finished"]
    assert_never_interleaved(db)


def test_three_processes_one_killed_mid_way(study_file, references, tmp_path):
    out = tmp_path / "three"
    db = out / "study.db"
    procs = [_run_cli_study(study_file, out, "--executor", "sequential") for _ in range(3)]
    _wait_for(db, "SELECT COUNT(*) FROM checkpoints", proc=procs[0])
    procs[0].send_signal(signal.SIGKILL)  # one of them dies holding a unit
    procs[0].wait()
    for p in procs[1:]:  # the other two take its unit over (its process is gone) and finish
        assert p.wait(timeout=300) == 0, p.stderr.read()
    assert_finished_as(db, references["sequential"])
    assert_never_interleaved(db)


def test_a_vectorized_process_killed_mid_group_resumes_to_the_same_numbers(study_file, references, tmp_path):
    out = tmp_path / "group"
    db = out / "study.db"
    first = _run_cli_study(study_file, out, "--executor", "vectorized")
    _wait_for(db, "SELECT COUNT(*) FROM checkpoints WHERE unit LIKE 'group:%'", proc=first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = _run_cli_study(study_file, out, "--executor", "vectorized")
    assert second.wait(timeout=300) == 0, second.stderr.read()
    assert_finished_as(db, references["vectorized"])
    assert_never_interleaved(db)


@pytest.mark.parametrize("kind", ["sequential", "vectorized"])
def test_killed_at_random_moments_the_study_resumes_to_the_same_numbers(study_file, references, tmp_path,
                                                                        kind):
    rng = random.Random(f"kills-{kind}")  # moments drawn at random, the same at every test run
    out = tmp_path / kind
    db = out / "study.db"
    kills = 0
    for _ in range(3):
        proc = _run_cli_study(study_file, out, "--executor", kind)
        try:  # once it trains (the store has runs), at a random moment: mid-epoch, mid-write, ...
            _wait_for(db, "SELECT COUNT(*) FROM runs WHERE status = 'running'", proc=proc)
        except AssertionError:
            break  # it finished first
        time.sleep(rng.uniform(0.0, 0.8))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    last = _run_cli_study(study_file, out, "--executor", kind)
    assert last.wait(timeout=300) == 0, last.stderr.read()
    assert kills >= 2
    assert_finished_as(db, references[kind])
    assert_never_interleaved(db)
