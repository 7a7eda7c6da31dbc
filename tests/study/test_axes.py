"""A point of the grid is a mapping of named axes: its identity, label, serialized form and run
settings derive from the axes; a store's definition and run rows follow them."""

import json

from optimlab.study import axes, load_results, parse_study, run_study
from optimlab.study.store import StudyStore

STUDY = """name = "axes"
dataset = "mnist-10k:0,1"
model = "logreg"
batch_size = 200
iterations = 6
eval_every = 3
seeds = [0]
learning_rates = [0.1]
optimizers = ["sgd", { name = "heavy-ball", class = "torch.optim:SGD", options = { momentum = 0.9 } }]
[executor]
kind = "sequential"
"""


def test_points_are_named_axes_in_one_order():
    p = axes.point(optimizer="adam(betas=(0.9, 0.99))", lr=1e-3, seed=2, dual_lr=0.01)
    assert list(p) == ["optimizer", "lr", "seed", "dual_lr", "penalty", "schedule", "batch_size", "task"]
    assert axes.label(p) == "adam(betas=(0.9, 0.99)) lr=0.001 dual_lr=0.01 seed=2"
    assert axes.label({**p, "task": "fmnist_mlp"}) == \
        "fmnist_mlp: adam(betas=(0.9, 0.99)) lr=0.001 dual_lr=0.01 seed=2"
    assert "task" not in axes.settings({**p, "task": "fmnist_mlp"})  # it names settings; it is not one
    assert axes.serialized(p) == ["adam(betas=(0.9, 0.99))", 0.001, 2, 0.01]  # trailing None dropped
    assert axes.settings(p) == {"optimizer": "adam(betas=(0.9, 0.99))", "lr": 1e-3, "seed": 2,
                                "dual_lr": 0.01, "penalty": None}
    # a table is told apart by its label; numbers by value, whatever their type
    table = axes.point(optimizer={"name": "mine", "class": "torch.optim:SGD"}, lr=1, seed=0)
    assert axes.key(table) == ("mine", 1.0, 0, None, None, None, None, None)
    assert axes.key(table) == axes.key(axes.point(optimizer="mine", lr=1.0, seed=0))


def test_a_store_holds_the_points_and_extends_a_grid_with_a_table_optimizer(tmp_path):
    run_study(parse_study(STUDY), out=tmp_path, progress=False)
    grown = parse_study(STUDY.replace("seeds = [0]", "seeds = [0, 1]"))
    outcome = run_study(grown, out=tmp_path, extend=True, progress=False)
    assert (outcome.completed, outcome.failed) == (4, 0)
    store = StudyStore.open(tmp_path / "study.db")
    rows = store.runs()
    definition = json.loads(store.meta("definition"))
    store.close()
    assert sorted(axes.key(axes.of_row(r)) for r in rows) == sorted(axes.key(p) for p in grown.grid)
    assert len(definition["grid"]) == 4
    assert {r["optimizer"] for r in rows} == {"sgd", "heavy-ball"}
    runs = load_results(tmp_path / "study.db").runs
    # the labelled table is momentum SGD: not the plain one
    finals = load_results(tmp_path / "study.db").evals.groupby("run_id").test_loss.last()
    assert finals[runs[runs.optimizer == "sgd"].run_id].tolist() != \
        finals[runs[runs.optimizer == "heavy-ball"].run_id].tolist()


def test_an_optional_axis_added_later_gets_its_column_in_an_older_store(tmp_path, monkeypatch):
    import sqlite3

    run_study(parse_study(STUDY), out=tmp_path, progress=False)
    later = (*axes.AXES, axes.Axis("momentum", lambda v: f"momentum={v:g}", optional=True))
    monkeypatch.setattr(axes, "AXES", later)
    monkeypatch.setattr(axes, "NAMES", tuple(a.name for a in later))
    StudyStore.open(tmp_path / "study.db").close()
    conn = sqlite3.connect(tmp_path / "study.db")
    columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
    index = conn.execute("SELECT sql FROM sqlite_master WHERE name='runs_configuration'").fetchone()[0]
    values = conn.execute("SELECT momentum FROM runs").fetchall()
    conn.close()
    assert "momentum" in columns and "coalesce(momentum, 0)" in index
    assert values == [(None,), (None,)]  # the runs already there do not vary it


def test_batch_sizes_and_schedules_as_axes_train_in_groups_of_their_own_and_report_as_series(tmp_path):
    from optimlab.report import summarize

    text = (STUDY.replace("batch_size = 200", "batch_sizes = [100, 200]")
            .replace("learning_rates = [0.1]", "learning_rates = [0.1, 0.03]")
            .replace('kind = "sequential"', 'kind = "vectorized"') + '\nschedules = ["constant", "linear"]\n')
    text = (text.replace('\n[executor]\nkind = "vectorized"\n', "\n")
            + '[executor]\nkind = "vectorized"\nstack = "always"\n')
    spec = parse_study(text)
    assert len(spec.grid) == 2 * 2 * 2 * 2  # optimizers x batch sizes x schedules x lrs
    outcome = run_study(spec, out=tmp_path / "v", progress=False)
    store = StudyStore.open(outcome.store, readonly=True)
    rows = store.runs()
    store.close()
    assert {r["batch_size"] for r in rows} == {100, 200} and {r["schedule"] for r in rows} == {None, "linear"}
    engines = {r["engine"] for r in rows}
    assert engines == {"vectorized: a group of 2 runs"}  # the two lrs; every other axis apart
    for r in rows:
        assert json.loads(r["config"])["batch_size"] == r["batch_size"]
    results = load_results(outcome.store)
    steps = results.evals.groupby("batch_size").step.max()
    assert steps.to_dict() == {100: 6, 200: 6}  # iterations are steps whatever the batch size
    series = set(summarize(results).robustness.optimizer)
    assert "sgd, constant, batch 100" in series and "heavy-ball, linear, batch 200" in series
    assert len(series) == 8
