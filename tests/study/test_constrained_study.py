"""Constrained studies: the dual learning rate as a grid axis, violations and multipliers in every row,
resume after a crash, and the upgrade of schema-1 stores."""

import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

from optimlab.cli import main
from optimlab.errors import OptimlabError
from optimlab.study.results import load_results
from optimlab.study.runner import run_study
from optimlab.study.spec import ExecutorSpec, parse_study
from optimlab.study.store import SCHEMA_VERSION, StudyStore
from optimlab.training import train

STUDY = """
name = "constrained"
dataset = "mnist-10k"
model = "logreg"
batch_size = 250
epochs = 2
eval_train = false
log_every = 8
optimizers = ["adam"]
learning_rates = [1e-2]
seeds = [0, 1]
constraints = ["l2norm<=1", "l1norm<=30"]
dual_learning_rates = [1e-3, 1e-1]
device = "cpu"
"""
KEYS = ["violation_l2norm_le_1", "multiplier_l2norm_le_1", "violation_l1norm_le_30",
        "multiplier_l1norm_le_30"]
ORDER = ["optimizer", "lr", "dual_lr", "seed", "step"]


def rows(results, key):
    frame = getattr(results, key).drop(columns=["wall_time", "run_id"], errors="ignore")
    return frame.sort_values(ORDER).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("constrained")
    outcome = run_study(parse_study(STUDY), out=out, executor=ExecutorSpec(kind="sequential"))
    assert (outcome.completed, outcome.failed) == (4, 0)
    return load_results(outcome.store)


def test_every_row_holds_the_violations_and_multipliers_of_the_single_run(reference):
    assert reference.constrained and reference.constraints == {"l2norm_le_1": "<=", "l1norm_le_30": "<="}
    assert sorted(reference.runs.dual_lr) == [1e-3, 1e-3, 0.1, 0.1]
    for config in parse_study(STUDY).configs():
        single = train(config, keep_model=False)
        mine = reference.evals.query("dual_lr == @config.dual_lr and seed == @config.seed")
        assert mine.step.tolist() == [e["step"] for e in single.evals]
        for key in KEYS + ["test_loss", "test_accuracy"]:
            assert mine[key].tolist() == [e[key] for e in single.evals], key
        log = reference.train_log.query("dual_lr == @config.dual_lr and seed == @config.seed")
        for key in KEYS + ["loss", "accuracy"]:
            assert log[key].tolist() == [t[key] for t in single.train_log], key
    # the dual lr matters: a faster ascent ends with larger multipliers and a smaller violation
    last = reference.evals.sort_values("step").groupby(["dual_lr", "seed"]).last()
    slow, fast = last.loc[1e-3], last.loc[0.1]
    assert (fast.multiplier_l1norm_le_30 > slow.multiplier_l1norm_le_30).all()
    assert (fast.violation_l1norm_le_30 < slow.violation_l1norm_le_30).all()


def test_the_vectorized_executor_trains_constrained_runs_together_with_the_same_numbers(reference,
                                                                                      tmp_path, capsys):
    outcome = run_study(parse_study(STUDY), out=tmp_path,
                        executor=ExecutorSpec(kind="vectorized", stack="always"), verbose=True)
    assert outcome.completed == 4
    vectorized = load_results(outcome.store)
    assert vectorized.runs.wall_time.nunique() == 1  # the four runs: one group (its wall time)
    for key in ("evals", "train_log"):  # the same numbers, up to the summation order of the kernels
        mine, theirs = rows(vectorized, key), rows(reference, key)
        assert list(mine.columns) == list(theirs.columns)
        numbers = mine.select_dtypes("number").columns
        pd.testing.assert_frame_equal(mine.drop(columns=numbers), theirs.drop(columns=numbers))
        for column in numbers:  # a violation: a float32 sum of the parameters (l1norm ~ 30) less 30;
            # a multiplier: dual lr x the sum of the violations so far
            atol = 3e-4 if column.startswith("violation_") else 3e-5 if column.startswith("multiplier_") \
                else 1e-6
            np.testing.assert_allclose(mine[column].to_numpy(float), theirs[column].to_numpy(float),
                                       rtol=1e-5, atol=atol, err_msg=column)
    # a line per run with its dual lr and its largest final violation
    last = vectorized.evals.sort_values("step").groupby(["dual_lr", "seed"]).last().loc[(0.1, 1)]
    worst = max(last.violation_l2norm_le_1, last.violation_l1norm_le_30)
    line = next(x for x in capsys.readouterr().out.splitlines() if "dual_lr=0.1 seed=1" in x)
    assert line.startswith("[4/4] adam lr=0.01 dual_lr=0.1 seed=1: test accuracy")
    assert f"largest violation {worst:+.3g}," in line


def test_a_crashed_constrained_study_resumes_to_the_same_numbers(reference, tmp_path, monkeypatch,
                                                                 capsys):
    commit = StudyStore.commit
    calls = []

    def crash_after_the_first_checkpoint(self, unit, run_ids, checkpoint, results, finished):
        commit(self, unit, run_ids, checkpoint, results, finished)
        calls.append(unit)
        if len(calls) == 1:
            raise KeyboardInterrupt  # as if the process died right after its first checkpoint

    monkeypatch.setattr(StudyStore, "commit", crash_after_the_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_study(parse_study(STUDY), out=tmp_path, executor=ExecutorSpec(kind="sequential"))
    monkeypatch.setattr(StudyStore, "commit", commit)
    cut = load_results(tmp_path / "study.db")
    # the interrupted process gave its unit back: pending, its checkpoint kept
    assert list(cut.runs.status) == ["pending", "pending", "pending", "pending"]
    assert cut.evals.step.tolist() == [0, 29]  # the first run's first epoch (7200 / 250), checkpointed
    assert main(["study", "status", str(tmp_path / "study.db")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "constrained: 4 runs: 0 completed, 0 diverged, 0 running, 4 pending, 0 failed"
    assert lines[1].split() == ["pending", "adam", "lr=0.01", "dual_lr=0.001", "seed=0", "steps=29"]
    assert lines[4].split()[3:5] == ["dual_lr=0.1", "seed=1"]
    run_study(parse_study(STUDY), out=tmp_path, executor=ExecutorSpec(kind="sequential"))
    resumed = load_results(tmp_path / "study.db")
    assert rows(resumed, "evals").equals(rows(reference, "evals"))
    assert rows(resumed, "train_log").equals(rows(reference, "train_log"))


def _as_schema_1(db):
    """Turn a store of an unconstrained study into what schema 1 wrote (no dual_lr, penalty or extras,
    the unused dual_lr among the shared settings, no formulation)."""
    conn = sqlite3.connect(db)
    conn.execute("DROP INDEX runs_configuration")
    for table, column in (("runs", "dual_lr"), ("runs", "penalty"), ("evals", "extras"),
                          ("train_log", "extras"), ("runs", "engine"), ("evals", "claim"),
                          ("train_log", "claim"), ("evals", "val_loss"), ("evals", "val_accuracy")):
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute("DROP TABLE claims")
    conn.execute("DROP TABLE claim_history")
    definition = json.loads(conn.execute("SELECT value FROM meta WHERE key='definition'").fetchone()[0])
    definition["shared"]["dual_lr"] = 1e-3
    del definition["shared"]["formulation"]
    conn.execute("UPDATE meta SET value=? WHERE key='definition'", (json.dumps(definition),))
    conn.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    conn.commit()
    conn.close()


PLAIN = "\n".join(line for line in STUDY.splitlines() if not line.startswith(("constraints", "dual")))


def test_a_schema_1_store_is_upgraded_and_its_study_goes_on(tmp_path):
    one_seed = PLAIN.replace("seeds = [0, 1]", "seeds = [0]") + "\nvalidation = 0\n"  # schema 1 had none
    run_study(parse_study(one_seed), out=tmp_path, executor=ExecutorSpec(kind="sequential"))
    db = tmp_path / "study.db"
    before = load_results(db).evals
    _as_schema_1(db)
    assert "dual_lr" not in load_results(db).runs  # read (and upgraded) as it was
    assert StudyStore.open(db).meta("schema_version") == str(SCHEMA_VERSION)
    again = run_study(parse_study(one_seed), out=tmp_path)  # the same study: nothing to do
    assert again.completed == 1
    extended = run_study(parse_study(PLAIN), out=tmp_path, extend=True)  # validation unset: as the store
    assert extended.completed == 2
    after = load_results(db).evals
    assert after[after.seed == 0].drop(columns="run_id").equals(before.drop(columns="run_id"))


def test_a_schema_1_store_that_cannot_be_upgraded_says_why(tmp_path, monkeypatch):
    run_study(parse_study(PLAIN.replace("epochs = 2", "iterations = 1")), out=tmp_path,
              executor=ExecutorSpec(kind="sequential"))
    db = tmp_path / "study.db"
    _as_schema_1(db)

    def read_only(self):  # what SQLite says on a read-only file (root writes any file: no chmod)
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(StudyStore, "transaction", read_only)
    with pytest.raises(OptimlabError, match="schema 1 and must be upgraded .* readonly database. Open a "
                                            "writable copy"):
        StudyStore.open(db)


def test_a_quadratic_penalty_study_has_the_coefficient_as_its_axis_and_no_multipliers(tmp_path):
    from optimlab.report import make_report

    text = (PLAIN.replace("seeds = [0, 1]", "seeds = [0]") + '\nconstraints = ["l2norm<=1"]\n'
            'formulation = "quadratic_penalty"\npenalty_coefficients = [1, 100]\n')
    outcome = run_study(parse_study(text), out=tmp_path, executor=ExecutorSpec(kind="sequential"))
    results = load_results(outcome.store)
    assert results.formulation == "quadratic_penalty"
    assert results.runs.penalty.tolist() == [1.0, 100.0] and results.runs.dual_lr.isna().all()
    assert "violation_l2norm_le_1" in results.evals and "multiplier_l2norm_le_1" not in results.evals
    report = make_report(outcome.store, tmp_path / "report")
    final = report.summary.final.set_index("optimizer")
    assert list(final.index) == ["adam, quadratic_penalty c=1", "adam, quadratic_penalty c=100"]
    # the penalty's minimiser violates an active constraint by O(1/c): a larger c, a smaller violation
    small, large = final.final_violation
    assert large < small and small > 0
    assert final.final_multiplier_l2norm_le_1.isna().all() and "constrained" in report.figures
