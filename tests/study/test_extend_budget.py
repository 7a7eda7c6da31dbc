"""A study extended with a larger budget (``--extend`` with more epochs or iterations): its finished runs
continue from their final checkpoints to the rows of the longer study trained from the start; what
cannot be continued is refused before anything is written."""

import json
import shutil
import sqlite3
import textwrap
from pathlib import Path

import pytest

from optimlab.cli import main
from optimlab.errors import OptimlabError
from optimlab.study import load_results, run_study
from optimlab.study.spec import parse_study
from optimlab.training import TrainConfig, train

STUDY = textwrap.dedent("""
    name = "longer"
    dataset = "mnist-10k:0,1"
    model = "logreg"
    batch_size = 100
    epochs = 2
    device = "cpu"
    optimizers = ["sgd", "adam"]
    learning_rates = [0.1, 0.01]
    seeds = [0, 1]
    """)
LONGER = STUDY.replace("epochs = 2", "epochs = 4")
EVALS = ["run_id", "step", "epoch", "train_loss", "test_loss", "test_accuracy", "lr"]
FIXTURE = Path(__file__).parent.parent / "fixtures" / "v0_1"


def rows(db: Path) -> tuple:
    r = load_results(db)
    logged = r.train_log[["run_id", "step", "loss"]]
    return r.evals[EVALS].reset_index(drop=True), logged.reset_index(drop=True)


def configs(db: Path) -> dict[int, dict]:
    with sqlite3.connect(db) as conn:
        return {i: json.loads(c) for i, c in conn.execute("SELECT id, config FROM runs")}


def claims_of_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT run_id, step, claim FROM evals ORDER BY run_id, step").fetchall()


@pytest.mark.parametrize("executor", ["vectorized", "sequential"])
def test_the_finished_runs_continue_to_the_longer_studys_numbers(tmp_path, executor):
    out = tmp_path / "study"
    first = run_study(parse_study(STUDY), out=out, executor=executor)
    before = claims_of_rows(first.store)
    last_step = max(step for _, step, _ in before)
    extended = run_study(parse_study(LONGER), out=out, executor=executor, extend=True)
    assert (extended.completed, extended.pending) == (8, 0)
    fresh = run_study(parse_study(LONGER), out=tmp_path / "fresh", executor=executor)
    got, want = rows(extended.store), rows(fresh.store)
    assert got[0].equals(want[0]) and got[1].equals(want[1])
    assert got[0].step.max() == 2 * last_step
    # continued, not trained again: the rows of the first 2 epochs are the first claims' own
    after = {(run, step): claim for run, step, claim in claims_of_rows(extended.store)}
    assert all(after[(run, step)] == claim for run, step, claim in before)
    assert len({after[k] for k in after if k[1] > last_step} - {c for *_, c in before}) >= 1
    assert {c["epochs"] for c in configs(extended.store).values()} == {4}
    # the longer file again: nothing left to do
    again = run_study(parse_study(LONGER), out=out, executor=executor)
    assert (again.completed, again.pending) == (8, 0)


def test_a_store_without_final_checkpoints_trains_its_runs_again(tmp_path):
    """A store of optimlab 0.1 kept no final checkpoints: its runs are trained again from the start
    (with its settings, which predate the validation split), to the numbers of each run trained alone."""
    db = tmp_path / "old" / "study.db"
    db.parent.mkdir()
    shutil.copy(FIXTURE / "study.db", db)
    text = (FIXTURE / "study.toml").read_text().replace("iterations = 30", "iterations = 40")
    extended = run_study(parse_study(text, "fixture.toml"), out=db.parent, extend=True)
    assert extended.completed == 8
    results = load_results(extended.store)
    for run_id, config in configs(extended.store).items():
        alone = train(TrainConfig.from_dict(config))
        mine = results.evals[results.evals.run_id == run_id]
        assert mine.step.tolist() == [r["step"] for r in alone.evals] and mine.step.max() == 40
        assert mine.test_loss.tolist() == pytest.approx([r["test_loss"] for r in alone.evals], rel=1e-5)


@pytest.mark.parametrize("change, match", [
    (lambda s: s.replace("epochs = 2", "epochs = 1"), r"changes from \{'epochs': 2\} to \{'epochs': 1\}"),
    (lambda s: s.replace("epochs = 2", "iterations = 200"), "may only train longer in the same unit"),
    (lambda s: s.replace("epochs = 2", "epochs = 4").replace(
        'optimizers = ["sgd", "adam"]', 'optimizers = ["sgd", "adam"]\nschedules = ["constant", "cosine"]'),
     "runs with a learning-rate schedule \\(cosine\\) span their budget"),
])
def test_what_cannot_be_continued_is_refused_and_nothing_changes(tmp_path, change, match):
    out = tmp_path / "study"
    run_study(parse_study(STUDY), out=out, executor="vectorized")
    before = rows(out / "study.db")
    with pytest.raises(OptimlabError, match=match):
        run_study(parse_study(change(STUDY)), out=out, extend=True)
    after = rows(out / "study.db")
    assert after[0].equals(before[0]) and set(load_results(out / "study.db").runs.status) == {"completed"}


def test_on_the_command_line_a_larger_budget_needs_extend(tmp_path, capsys):
    file = tmp_path / "study.toml"
    file.write_text(STUDY)
    out = tmp_path / "out"
    assert main(["study", "run", str(file), "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    longer = ["study", "run", str(file), "epochs=3", "--out", str(out), "-q"]
    assert main(longer) == 2
    assert "another version of this file" in capsys.readouterr().err
    assert main([*longer, "--extend"]) == 0
    assert load_results(out / "study.db").evals.epoch.max() == 3


def test_without_final_checkpoints_a_larger_budget_trains_again(tmp_path):
    """``[executor] final_checkpoints = false`` keeps a store small (no checkpoint of a finished unit);
    a larger budget then trains its runs again from the start, to the same numbers."""
    out = tmp_path / "study"
    small = STUDY + "[executor]\nkind = 'vectorized'\nfinal_checkpoints = false\n"
    first = run_study(parse_study(small), out=out)
    with sqlite3.connect(first.store) as conn:
        assert conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 0
    before = claims_of_rows(first.store)
    longer = small.replace("epochs = 2", "epochs = 4")
    extended = run_study(parse_study(longer), out=out, extend=True)
    fresh = run_study(parse_study(LONGER), out=tmp_path / "fresh", executor="vectorized")
    got, want = rows(extended.store), rows(fresh.store)
    assert got[0].equals(want[0]) and got[1].equals(want[1])
    after = dict(((run, step), claim) for run, step, claim in claims_of_rows(extended.store))
    assert all(after[(run, step)] != claim for run, step, claim in before)  # trained again
    with pytest.raises(OptimlabError, match="executor final_checkpoints must be true .* or false; got 'no'"):
        parse_study(STUDY + "[executor]\nfinal_checkpoints = 'no'\n")


@pytest.mark.parametrize("final", [True, False])
def test_a_unit_serializes_its_final_checkpoint_only_where_it_is_kept(final):
    from optimlab.study.units import plan_units, train_unit

    spec = parse_study(STUDY)
    runs = [{"id": i, "config": c.to_dict()} for i, c in enumerate(spec.configs()[:2], 1)]
    (unit,) = plan_units(runs, groups=True, stack_always=True)
    reports = []
    train_unit(unit, None, lambda ckpt, results, finished: reports.append((ckpt, finished)),
               final_checkpoint=final)
    assert [f for _, f in reports] == [False, True]  # the end of epoch 1, then the end
    assert reports[0][0] and bool(reports[-1][0]) is final  # empty bytes: nothing serialized
