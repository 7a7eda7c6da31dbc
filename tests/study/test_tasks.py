"""A study of several tasks ([[tasks]]): the grid spans them, the store holds them, every executor,
a resumption and --extend work per task, and bad task tables are refused before anything is written."""

import json
import sqlite3

import pytest

from optimlab.errors import OptimlabError
from optimlab.study.results import load_results
from optimlab.study.runner import run_study
from optimlab.study.spec import ExecutorSpec, parse_study
from optimlab.study.store import SCHEMA_VERSION, StudyStore
from optimlab.study.suite import SUITE
from optimlab.training import train

TASKS = """
name = "two-tasks"
optimizers = ["sgd", "adam"]
learning_rates = [0.05, 0.01]
seeds = [0, 1]
device = "cpu"
eval_train = false
iterations = 12
eval_every = 4

[[tasks]]
name = "digits"
dataset = "mnist-10k:0,1,2"
model = "logreg"
batch_size = 64
target = 0.9

[[tasks]]
name = "lines"
dataset = "lls:n=300,p=10,n_test=50"
model = "linear"
batch_size = 30
iterations = 20
"""


def rows(results):
    frame = results.evals.drop(columns=["wall_time", "run_id"])
    return frame.sort_values(["task", "optimizer", "lr", "seed", "step"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    outcome = run_study(parse_study(TASKS), out=out, executor=ExecutorSpec(kind="sequential"))
    assert (outcome.completed, outcome.failed) == (16, 0)
    return load_results(outcome.store)


def test_the_grid_spans_the_tasks_each_with_its_own_settings():
    spec = parse_study(TASKS)
    assert len(spec.grid) == 2 * 2 * 2 * 2
    assert [p["task"] for p in spec.grid] == ["digits"] * 8 + ["lines"] * 8
    configs = spec.configs()
    digits, lines = configs[0], configs[-1]
    assert (digits.dataset, digits.model, digits.batch_size, digits.iterations) == (
        "mnist-10k:0,1,2", "logreg", 64, 12)  # the study's budget is every task's default ...
    assert (lines.dataset, lines.model, lines.batch_size, lines.iterations) == (
        "lls:n=300,p=10,n_test=50", "linear", 30, 20)  # ... unless the task sets its own
    assert digits.eval_every == lines.eval_every == 4 and digits.validation == lines.validation == 0.1
    assert spec.targets == {"digits": 0.9}
    definition = json.loads(spec.definition())
    assert set(definition["tasks"]) == {"digits", "lines"}
    assert definition["tasks"]["digits"]["target"] == 0.9
    assert "dataset" not in definition["shared"]
    assert definition["tasks"]["lines"]["settings"]["batch_size"] == 30


def test_every_run_of_every_task_is_the_run_trained_alone(reference):
    spec = parse_study(TASKS)
    assert set(reference.runs.task) == {"digits", "lines"}
    for p, config in list(zip(spec.grid, spec.configs(), strict=True))[::3]:
        single = train(config, keep_model=False)
        ev = reference.evals
        mine = ev[(ev.task == p["task"]) & (ev.optimizer == config.optimizer) & (ev.lr == config.lr)
                  & (ev.seed == config.seed)]
        assert mine.step.tolist() == [e["step"] for e in single.evals]
        assert mine.val_loss.tolist() == [e["val_loss"] for e in single.evals]
        assert mine.test_loss.tolist() == [e["test_loss"] for e in single.evals]


@pytest.mark.parametrize("kind", ["vectorized", "processes"])
def test_other_executors_give_the_sequential_numbers_per_task(reference, tmp_path, kind):
    executor = ExecutorSpec(kind=kind, workers=2 if kind == "processes" else None, stack="always")
    outcome = run_study(parse_study(TASKS), out=tmp_path, executor=executor)
    assert outcome.completed == 16
    mine = load_results(outcome.store)
    a, b = rows(reference), rows(mine)
    keys = ["task", "optimizer", "lr", "seed", "step"]
    assert a[keys].equals(b[keys])
    for col in ("val_loss", "test_loss"):
        assert (a[col] - b[col]).abs().max() <= 1e-5 * a[col].abs().max()
    if kind == "vectorized":  # one group per task and optimizer: tasks are never stacked together
        engines = StudyStore.open(outcome.store, readonly=True).runs()
        assert {r["engine"] for r in engines} == {"vectorized: a group of 4 runs"}


def test_an_interrupted_study_of_tasks_resumes_to_the_same_numbers(reference, tmp_path):
    from optimlab.study.units import plan_units, train_unit

    class Stop(Exception):
        pass

    spec = parse_study(TASKS)
    store = StudyStore.create(tmp_path / "study.db", spec)
    # the second task's first group, stopped after its first checkpoint (the end of its first epoch,
    # 9 of its 20 steps), as a process killed there leaves it
    unit = next(u for u in plan_units([r for r in store.runs() if r["task"] == "lines"], groups=True,
                                      stack_always=True))
    claim = store.claim_unit(unit.key, unit.run_ids, engine=unit.engine)

    def emit(checkpoint, results, finished):
        store.commit(unit.key, unit.run_ids, checkpoint or None, results, finished)
        raise Stop

    with pytest.raises(Stop):
        train_unit(unit, claim.checkpoint, emit)
    store.release(unit.key)
    assert store.runs()[8]["steps"] == 9 and store.checkpoint(unit.key) is not None
    store.close()
    outcome = run_study(spec, out=tmp_path, executor=ExecutorSpec(kind="sequential"))
    assert outcome.completed == 16
    assert rows(load_results(outcome.store)).equals(rows(reference))


def test_extend_adds_a_task_and_refuses_a_changed_one(reference, tmp_path):
    small = TASKS.split("[[tasks]]\nname = \"lines\"")[0]
    run_study(parse_study(small), out=tmp_path, executor=ExecutorSpec(kind="sequential"))
    with pytest.raises(OptimlabError, match="another version of this file"):
        run_study(parse_study(TASKS), out=tmp_path)
    outcome = run_study(parse_study(TASKS), out=tmp_path, extend=True, executor="sequential")
    assert outcome.completed == 16
    assert rows(load_results(outcome.store)).equals(rows(reference))
    changed = TASKS.replace("batch_size = 30", "batch_size = 10")
    with pytest.raises(OptimlabError, match="the task 'lines' has other settings \\(batch_size\\)"):
        run_study(parse_study(changed), out=tmp_path, extend=True)
    one = TASKS.split("[[tasks]]")[0] + 'dataset = "mnist-10k"\nmodel = "logreg"\n'
    with pytest.raises(OptimlabError, match="a study of one task cannot gain tasks"):
        run_study(parse_study(one), out=tmp_path, extend=True)


def test_a_store_of_schema_5_gains_the_task_column(tmp_path):
    spec = parse_study(TASKS.split("[[tasks]]")[0] + 'dataset = "mnist-10k"\nmodel = "logreg"\n')
    db = tmp_path / "study.db"
    StudyStore.create(db, spec).close()
    conn = sqlite3.connect(db)  # made as schema 5 wrote it: no task column, version 5
    conn.execute("DROP INDEX runs_configuration")
    conn.execute("ALTER TABLE runs DROP COLUMN task")
    conn.execute("CREATE UNIQUE INDEX runs_configuration ON runs (optimizer, lr, seed, coalesce(dual_lr, 0), "
                 "coalesce(penalty, 0), coalesce(schedule, 0), coalesce(batch_size, 0))")
    conn.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    reader = StudyStore.open(db, readonly=True)  # read in memory, the file left as it is
    assert all(r["task"] is None for r in reader.runs()) and len(reader.runs()) == 8
    reader.close()
    version = sqlite3.connect(db).execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    assert version == ("5",)
    store = StudyStore.open(db)
    assert store.meta("schema_version") == str(SCHEMA_VERSION) == "6"
    assert "task" in {r[1] for r in store.conn.execute("PRAGMA table_info(runs)")}
    store.close()
    assert run_study(spec, out=tmp_path, executor=ExecutorSpec(kind="sequential")).completed == 8


def test_a_suite_task_takes_deepobs_definition_and_records_what_the_study_scaled():
    spec = parse_study("""
name = "suite"
optimizers = ["sgd"]
learning_rates = [0.1]
seeds = [0]
[[tasks]]
suite = "mnist10k_mlp"
epochs = 2
[[tasks]]
suite = "mnist10k_logreg"
name = "short-logreg"
iterations = 30
""")
    mlp, logreg = spec.tasks["mnist10k_mlp"], spec.tasks["short-logreg"]
    assert (mlp["model"], mlp["batch_size"], mlp["epochs"], mlp["normalize"], mlp["drop_last"],
            mlp["validation"]) == ("deepobs-mlp", 128, 2, False, True, 1000)
    assert (logreg["model"], logreg["epochs"], logreg["iterations"]) == ("deepobs-logreg", None, 30)
    assert spec.scaled == {"mnist10k_mlp": {"suite": "mnist10k_mlp", "scaled": {"epochs": 2}},
                           "short-logreg": {"suite": "mnist10k_logreg",
                                            "scaled": {"iterations": 30, "epochs": None}}}
    stored = json.loads(spec.definition())["tasks"]["short-logreg"]
    assert stored["scaled"] == {"iterations": 30, "epochs": None} and stored["suite"] == "mnist10k_logreg"
    assert SUITE["fmnist_2c2d"]["model"] == "deepobs-2c2d" and SUITE["quadratic_deep"]["epochs"] == 100


HEAD = """
name = "bad"
optimizers = ["sgd"]
learning_rates = [0.1]
seeds = [0]
"""


@pytest.mark.parametrize("tasks, message", [
    ('[[tasks]]\nname = "a"\ndataset = "mnist-10k"\nmodel = "logreg"\n[[tasks]]\nname = "a"\n'
     'dataset = "mnist-10k"\nmodel = "mlp"\n', "the task name 'a' is given twice"),
    ('[[tasks]]\nname = "a"\ndataset = "mnist-10k"\nmodel = "logreg"\nlearning_rate = 0.1\n',
     "unknown task field 'learning_rate'; valid: name, suite, target, dataset"),
    ('[[tasks]]\nname = "a"\nmodel = "logreg"\n', "missing field 'dataset'"),
    ('[[tasks]]\nsuite = "cifar100_allcnnc"\n', "'cifar100_allcnnc' is not a task of the suite; valid: "
     "quadratic_deep, fmnist_2c2d"),
    ('[[tasks]]\nname = "a b"\ndataset = "mnist-10k"\nmodel = "logreg"\n', "a task needs a name of 1 to 60"),
    ('[[tasks]]\nname = "a"\ndataset = "mnist-10k"\nmodel = "logreg"\ntarget = "0.9"\n',
     "target must be a finite number"),
    ('[[tasks]]\nname = "a"\ndataset = "mnist-10k"\nmodel = "logreg"\nepochs = 0\n',
     "task 'a': epochs must be"),
    ('tasks = [1, 2]\n', "tasks are \\[\\[tasks\\]\\] tables"),
    ('batch_sizes = [32, 64]\n[[tasks]]\nname = "a"\ndataset = "mnist-10k"\nmodel = "logreg"\n'
     'batch_size = 8\n',
     "batch_size is the study's batch_sizes axis"),
])
def test_bad_task_tables_are_refused_with_what_is_valid(tasks, message):
    with pytest.raises(OptimlabError, match=message):
        parse_study(HEAD + tasks)


def test_an_accuracy_target_that_can_never_be_reached_is_refused_before_writing(tmp_path):
    text = HEAD + '[[tasks]]\nname = "a"\ndataset = "mnist-10k"\nmodel = "logreg"\ntarget = 1.5\n'
    with pytest.raises(OptimlabError, match="task 'a': the target 1.5 is a validation accuracy"):
        run_study(parse_study(text), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    loss = HEAD + '[[tasks]]\nname = "l"\ndataset = "lls"\nmodel = "linear"\ntarget = 1.5\niterations = 2\n'
    assert run_study(parse_study(loss), out=tmp_path / "l", executor="sequential").completed == 1


def test_extending_with_another_task_keeps_the_first_tasks_definition(reference, tmp_path):
    digits, lines = TASKS.split("[[tasks]]\nname = \"lines\"")
    lines_only = digits.split("[[tasks]]")[0] + "[[tasks]]\nname = \"lines\"" + lines
    run_study(parse_study(digits), out=tmp_path, executor="sequential")
    run_study(parse_study(lines_only), out=tmp_path, extend=True, executor="sequential")
    definition = json.loads(StudyStore.open(tmp_path / "study.db", readonly=True).meta("definition"))
    assert set(definition["tasks"]) == {"digits", "lines"} and len(definition["grid"]) == 16
    assert definition["tasks"]["digits"]["settings"]["model"] == "logreg"
    assert definition["tasks"]["digits"]["target"] == 0.9
    # either file again: its runs are all in the store, nothing to add, no --extend needed
    for text in (digits, lines_only, TASKS):
        assert run_study(parse_study(text), out=tmp_path, executor="sequential").completed == 16
    assert rows(load_results(tmp_path / "study.db")).equals(rows(reference))
