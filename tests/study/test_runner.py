import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from optimlab.errors import OptimlabError
from optimlab.study.results import export_results, load_results
from optimlab.study.runner import run_study
from optimlab.study.spec import ExecutorSpec, parse_study
from optimlab.study.store import SCHEMA_VERSION, StudyStore
from optimlab.training import train

STUDY = """
name = "small"
dataset = "mnist-10k"
model = "logreg"
batch_size = 250
epochs = 3
eval_train = false
log_every = 8
optimizers = ["sgd", { name = "adam", learning_rates = [1e-3] }]
learning_rates = [0.1, 0.02]
seeds = [0, 1]
device = "cpu"
"""
SEQUENTIAL = ExecutorSpec(kind="sequential")
# processes compared number for number compute on one thread: bit-for-bit whatever the machine's load
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def rows(results, key):
    frame = getattr(results, key).drop(columns=["wall_time", "run_id"], errors="ignore")
    return frame.sort_values(["optimizer", "lr", "seed", "step"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The small study run sequentially, uninterrupted."""
    out = tmp_path_factory.mktemp("reference")
    outcome = run_study(parse_study(STUDY), out=out, executor=SEQUENTIAL)
    assert (outcome.completed, outcome.failed, outcome.pending) == (6, 0, 0)
    return load_results(outcome.store)


def test_sequential_runs_are_exactly_the_single_runs(reference):
    spec = parse_study(STUDY)
    for config in spec.configs():
        single = train(config, keep_model=False)
        mine = reference.evals.query("optimizer == @config.optimizer and lr == @config.lr and "
                                     "seed == @config.seed")
        assert mine.step.tolist() == [e["step"] for e in single.evals]
        assert mine.test_loss.tolist() == [e["test_loss"] for e in single.evals]
        assert mine.test_accuracy.tolist() == [e["test_accuracy"] for e in single.evals]
        logged = reference.train_log.query("optimizer == @config.optimizer and lr == @config.lr "
                                           "and seed == @config.seed")
        assert logged.loss.tolist() == [t["loss"] for t in single.train_log]
    assert set(reference.runs.status) == {"completed"}
    assert reference.meta["name"] == "small" and "torch" in reference.meta["environment"]


def test_a_finished_study_is_skipped_and_a_different_one_refused(reference, tmp_path):
    out = tmp_path / "s"
    run_study(parse_study(STUDY), out=out, executor=SEQUENTIAL)
    again = run_study(parse_study(STUDY), out=out, executor=ExecutorSpec(kind="processes"))
    assert again.completed == 6 and again.wall_time < 5  # nothing to do: no worker started
    other = STUDY.replace("seeds = [0, 1]", "seeds = [0, 1, 2]")
    with pytest.raises(OptimlabError, match="holds another study .* --extend"):
        run_study(parse_study(other), out=out, executor=SEQUENTIAL)
    extended = run_study(parse_study(other), out=out, executor=SEQUENTIAL, extend=True)
    assert extended.completed == 9
    third = load_results(out / "study.db")
    assert len(third.runs) == 9 and set(third.runs.seed) == {0, 1, 2}
    changed = other.replace("batch_size = 250", "batch_size = 100")  # (a larger budget continues)
    with pytest.raises(OptimlabError, match="shared settings differ \\(batch_size\\)"):
        run_study(parse_study(changed), out=out, executor=SEQUENTIAL, extend=True)


def test_processes_give_the_sequential_numbers(reference, tmp_path, capsys):
    outcome = run_study(parse_study(STUDY), out=tmp_path,
                        executor=ExecutorSpec(kind="processes", workers=2), progress=True)
    assert outcome.completed == 6
    # the workers' steps reach the bar (at least each unit's last one)
    assert re.search(r"now: (1 run|\d units, \d+ of \d+ runs,) at steps? [\d/, ]*\d+/\d+",
                     capsys.readouterr().err)
    mine = load_results(outcome.store)
    a, b = rows(reference, "evals"), rows(mine, "evals")
    assert a[["optimizer", "lr", "seed", "step"]].equals(b[["optimizer", "lr", "seed", "step"]])
    for col in ("test_loss", "test_accuracy", "batch_loss"):
        assert (a[col] - b[col]).abs().max() <= 1e-5 * a[col].abs().max()


def test_processes_train_groups_in_their_workers_as_the_vectorized_executor_does(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # 2 units on 2 workers: one thread each
    procs = run_study(parse_study(STUDY), out=tmp_path / "p",
                      executor=ExecutorSpec(kind="processes", workers=2, stack="always"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vec = run_study(parse_study(STUDY), out=tmp_path / "v",
                        executor=ExecutorSpec(kind="vectorized", stack="always"))
    finally:
        torch.set_num_threads(threads)
    a, b = load_results(procs.store), load_results(vec.store)
    assert sorted(a.runs.engine) == sorted(b.runs.engine) == (
        ["vectorized: a group of 2 runs"] * 2 + ["vectorized: a group of 4 runs"] * 4)
    for frame in ("evals", "train_log"):
        assert rows(a, frame).equals(rows(b, frame))


def test_a_single_unit_is_trained_by_the_driving_process_with_the_vectorized_numbers(tmp_path):
    one = STUDY.replace('{ name = "adam", learning_rates = [1e-3] }', '').replace('"sgd",', '"sgd"')
    procs = run_study(parse_study(one), out=tmp_path / "p",
                      executor=ExecutorSpec(kind="processes", workers=2, stack="always"))
    vec = run_study(parse_study(one), out=tmp_path / "v",
                    executor=ExecutorSpec(kind="vectorized", stack="always"))
    store = StudyStore.open(procs.store, readonly=True)
    try:
        assert {r["worker"] for r in store.runs()} == {os.getpid()}  # no worker to wait for
    finally:
        store.close()
    a, b = load_results(procs.store), load_results(vec.store)
    assert list(a.runs.engine) == ["vectorized: a group of 4 runs"] * 4
    for frame in ("evals", "train_log"):
        assert rows(a, frame).equals(rows(b, frame))


def test_a_study_refused_before_training_leaves_no_worker_process_and_no_store(tmp_path):
    import multiprocessing

    bad = STUDY.replace("batch_size = 250", "batch_size = 100000")  # more than the data: preflight refuses
    with pytest.raises(OptimlabError, match="batch size 100000 is larger than the training set"):
        run_study(parse_study(bad), out=tmp_path, executor=ExecutorSpec(kind="processes", workers=2))
    assert multiprocessing.active_children() == []
    assert not (tmp_path / "study.db").exists()


def _run_cli_study(study_file, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "optimlab", "study", "run", str(study_file),
                             "--out", str(out), "-q", *extra], env={**os.environ, **ONE_THREAD},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(db, sql, deadline_s=120, proc=None):
    end = time.time() + deadline_s
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the study ended before this happened: {sql}")
        try:
            conn = sqlite3.connect(db, timeout=1)
            row = conn.execute(sql).fetchone()
            conn.close()
            if row and row[0]:
                return row[0]
        except sqlite3.Error:
            pass
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {sql}")


SLOW = STUDY.replace('model = "logreg"', 'model = "mlp"').replace("batch_size = 250", "batch_size = 50") \
    .replace("epochs = 3", "epochs = 5").replace("learning_rates = [0.1, 0.02]", "learning_rates = [0.1]")


def test_killing_the_study_loses_nothing_and_resume_ends_with_the_same_numbers(tmp_path):
    study = tmp_path / "slow.toml"
    study.write_text(SLOW + "\n[executor]\nkind = 'sequential'\n")
    whole = _run_cli_study(study, tmp_path / "ref")  # the same process setup (threads) as the cut one
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    reference = load_results(tmp_path / "ref" / "study.db")
    out = tmp_path / "out"
    proc = _run_cli_study(study, out)
    db = out / "study.db"
    # kill once a run is complete and the next has a checkpoint mid-way (SIGKILL: no clean-up)
    _wait_for(db, "SELECT COUNT(*) FROM checkpoints WHERE unit = 'run:2' AND "
              "(SELECT status FROM runs WHERE id = 1) = 'completed'", proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cut = load_results(db)
    done = cut.runs[cut.runs.status == "completed"]
    assert 1 <= len(done) < len(reference.runs)
    ref = rows(reference, "evals")
    per_run = len(ref) // len(reference.runs)  # completed runs are complete
    assert all((cut.evals.run_id == i).sum() == per_run for i in done.run_id)
    in_flight = cut.runs[cut.runs.status == "running"]
    assert len(in_flight) == 1
    for _, run in in_flight.iterrows():  # the run in flight: rows only up to its checkpoint
        steps = cut.evals.query("run_id == @run.run_id").step.tolist()
        assert steps and steps == sorted(set(steps)) and max(steps) == run.steps
    resumed = _run_cli_study(study, out)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    final = load_results(db)
    assert set(final.runs.status) == {"completed"}
    assert rows(final, "evals").equals(rows(reference, "evals"))
    assert rows(final, "train_log").equals(rows(reference, "train_log"))
    # each run's final checkpoint stays (a larger budget continues from it), and only those
    units = StudyStore.open(db).conn.execute("SELECT unit FROM checkpoints ORDER BY unit").fetchall()
    assert [u for (u,) in units] == sorted(f"run:{i}" for i in final.runs.run_id)


@pytest.mark.parametrize("max_attempts, status", [(2, "completed"), (1, "failed")])
def test_a_worker_that_dies_is_retried_or_reported_and_the_study_goes_on(tmp_path, max_attempts,
                                                                         status):
    study = tmp_path / "w.toml"
    study.write_text(STUDY.replace("epochs = 3", "epochs = 30").replace(
        "seeds = [0, 1]", "seeds = [0]") + f"\n[executor]\nkind = 'processes'\nworkers = 2\n"
        f"units = 'runs'\nmax_attempts = {max_attempts}\n")
    out = tmp_path / "out"
    proc = _run_cli_study(study, out)
    victim = _wait_for(out / "study.db", "SELECT worker FROM runs WHERE id = 1 AND status = 'running'",
                       proc=proc)
    os.kill(victim, signal.SIGKILL)
    proc.wait(timeout=300)
    final = load_results(out / "study.db")
    run1 = final.runs.set_index("run_id").loc[1]
    assert run1.status == status and run1.attempts == max_attempts
    assert "died (signal 9)" in (run1.error or "") or status == "completed"
    assert (final.runs.set_index("run_id").drop(index=1).status == "completed").all()
    assert proc.returncode == (0 if status == "completed" else 1)


def test_export_writes_what_the_store_holds(reference, tmp_path):
    db = tmp_path / "e" / "study.db"
    run_study(parse_study(STUDY), out=db.parent, executor=SEQUENTIAL)
    import pandas as pd

    csv = export_results(db, tmp_path / "csv", "csv")
    assert [p.name for p in csv] == ["runs.csv", "evals.csv", "train_log.csv"]
    evals = pd.read_csv(tmp_path / "csv" / "evals.csv")
    assert len(evals) == len(reference.evals) == 6 * 4  # step 0 and three epochs
    parquet = export_results(db, tmp_path / "pq", "parquet")
    back = pd.read_parquet(parquet[1])
    assert back.test_loss.tolist() == load_results(db).evals.test_loss.tolist()
    with pytest.raises(OptimlabError, match="unknown export format 'xls'; valid: csv, parquet"):
        export_results(db, tmp_path, "xls")


def test_what_is_not_a_study_store_is_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(OptimlabError, match="is not a study store"):
        StudyStore.open(text)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(OptimlabError, match="not an optimlab study store"):
        StudyStore.open(other)
    with pytest.raises(OptimlabError, match="no such study store"):
        StudyStore.open(tmp_path / "missing.db")
    out = tmp_path / "new"
    run_study(parse_study(STUDY.replace("epochs = 3", "iterations = 1")), out=out, executor=SEQUENTIAL)
    conn = sqlite3.connect(out / "study.db")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    with pytest.raises(OptimlabError, match="written by a newer optimlab"):
        StudyStore.open(out / "study.db")


def test_an_unwritable_study_folder_is_one_message(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OptimlabError, match="cannot create the folder"):
        run_study(parse_study(STUDY), out=blocker / "x", executor=SEQUENTIAL)


def test_units_are_groups_of_runs_that_differ_only_in_lr_and_seed_but_cnns_run_alone_on_the_cpu():
    """Groups where stacking is exact (stack = "always"), and by measurement: seed 004's CNN on a
    CPU is slower stacked (measured about 2x), so its runs are units of their own."""
    import json

    from optimlab.study.units import plan_units

    spec = parse_study(STUDY)
    runs = [{"id": i + 1, "config": json.dumps(c.to_dict())} for i, c in enumerate(spec.configs())]
    units = plan_units(runs, groups=True, stack_always=True)
    assert [(u.kind, u.run_ids) for u in units] == [("group", [1, 2, 3, 4]), ("group", [5, 6])]
    assert [u.kind for u in plan_units(runs, groups=False)] == ["run"] * 6
    cnn = parse_study(STUDY.replace('model = "logreg"', 'model = "cnn"'))
    runs = [{"id": i + 1, "config": json.dumps(c.to_dict())} for i, c in enumerate(cnn.configs())]
    assert [u.kind for u in plan_units(runs, groups=True)] == ["run"] * 6


def test_progress_is_shown_per_step_inside_a_unit(tmp_path, capsys):
    """The bar moves with the steps of the unit being trained, not only when it ends: its runs still
    training, their best batch loss and the unit's time left."""
    import textwrap

    from optimlab.study.spec import parse_study

    text = textwrap.dedent("""
        name = "steps"
        dataset = "mnist-10k:0,1"
        model = "logreg"
        batch_size = 50
        iterations = 40
        log_every = 5
        device = "cpu"
        optimizers = ["sgd"]
        learning_rates = [0.1, 1e6]
        seeds = [0, 1]
        [executor]
        stack = "always"
        """)
    run_study(parse_study(text), out=tmp_path / "s", executor="vectorized", progress=True)
    err = capsys.readouterr().err
    assert "now: 4 of 4 runs at step 5/40, best batch loss" in err
    assert "runs at step 40/40" in err


def test_on_step_reports_every_look_with_each_runs_last_loss():
    from optimlab.engine.group import train_group
    from optimlab.training import TrainConfig, train

    calls = []
    configs = [TrainConfig(dataset="lls:n=500,p=5", model="linear", optimizer="sgd", lr=lr, batch_size=50,
                           iterations=20, log_every=5, device="cpu") for lr in (0.01, 1e4)]
    results = train_group(configs, on_step=lambda step, total, losses: calls.append((step, total, losses)))
    assert [(s, t) for s, t, _ in calls] == [(5, 20), (10, 20), (15, 20), (20, 20)]
    assert all(len(losses) == 2 and losses[0] is not None for _, _, losses in calls)
    assert results[1].status == "diverged" and calls[-1][2][1] is None  # a diverged run reports None
    single = []
    train(configs[0], on_step=lambda step, total, loss: single.append((step, loss)))
    assert [s for s, _ in single] == [5, 10, 15, 20] and single[-1][1] == calls[-1][2][0]


def test_a_runs_wall_time_says_whether_it_is_the_groups(tmp_path):
    import textwrap

    from optimlab.study.results import load_results
    from optimlab.study.spec import parse_study

    text = textwrap.dedent("""
        name = "timed"
        dataset = "mnist-10k:0,1"
        model = "logreg"
        batch_size = 50
        iterations = 10
        device = "cpu"
        optimizers = ["sgd", "asgd"]
        learning_rates = [0.1, 0.01]
        seeds = [0]
        [executor]
        stack = "always"
        """)
    runs = load_results(run_study(parse_study(text), out=tmp_path / "s", executor="vectorized").store).runs
    stacked, alone = runs[runs.optimizer == "sgd"], runs[runs.optimizer == "asgd"]
    assert stacked.wall_time_of.tolist() == ["group of 2 runs"] * 2 and stacked.wall_time.nunique() == 1
    assert alone.wall_time_of.tolist() == ["run"] * 2 and alone.wall_time.nunique() == 2
    assert set(runs.engine.str.split(":").str[0]) == {"vectorized", "one by one"}
