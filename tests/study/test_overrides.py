"""Overrides of a study file on the command line (``optimlab study run FILE key=value ...``): every
kind of key, validated as the file is, recorded in the store, and refused where they change the
study a store holds unless --extend."""

import textwrap

import pytest

from optimlab.cli import main
from optimlab.errors import OptimlabError
from optimlab.study.overrides import parse_value
from optimlab.study.runner import run_study
from optimlab.study.spec import load_study, parse_study
from optimlab.study.store import StudyStore

STUDY = textwrap.dedent("""
    name = "over"
    dataset = "mnist-10k:0,1"
    model = "logreg"
    batch_size = 100
    iterations = 4
    device = "cpu"
    optimizers = ["sgd", "adam"]
    learning_rates = [0.1]
    seeds = [0]
    """)
TASKS = STUDY.replace('dataset = "mnist-10k:0,1"\nmodel = "logreg"\n', "") + textwrap.dedent("""
    [[tasks]]
    name = "digits"
    dataset = "mnist-10k:0,1"
    model = "logreg"

    [[tasks]]
    name = "squares"
    dataset = "lls:n=200,p=5"
    model = "linear"
    """)


def test_values_are_toml_else_strings():
    assert parse_value("3") == 3 and parse_value("1e-3") == 1e-3 and parse_value("true") is True
    assert parse_value('["adam", "sgd"]') == ["adam", "sgd"] and parse_value("sequential") == "sequential"
    assert parse_value("{ from = 1e-4, to = 1.0, count = 3 }") == {"from": 1e-4, "to": 1.0, "count": 3}


def test_each_kind_of_key_sets_its_field():
    spec = parse_study(STUDY, overrides=["iterations=7", "executor.kind=sequential",
                                         'optimizers=["adam"]', "model=mlp", "model_options.hidden=5",
                                         "learning_rates={ from = 1e-3, to = 1e-1, count = 3 }"])
    configs = spec.configs()
    assert {c.iterations for c in configs} == {7} and spec.executor.kind == "sequential"
    assert [c.optimizer for c in configs] == ["adam"] * 3
    assert [c.lr for c in configs] == pytest.approx([1e-3, 1e-2, 1e-1])
    assert {c.model_options["hidden"] for c in configs} == {5}
    tasks = parse_study(TASKS, overrides=["tasks.1.batch_size=20", "tasks.0.iterations=2"]).configs()
    by_task = {(c.dataset, c.batch_size, c.iterations) for c in tasks}
    assert by_task == {("mnist-10k:0,1", 100, 2), ("lls:n=200,p=5", 20, 4)}


@pytest.mark.parametrize("override, message", [
    ("epochs2=3", "override 'epochs2=3': unknown field 'epochs2'; valid fields: name, dataset"),
    ("iterations", "an override is KEY=VALUE with a dotted key"),
    ("executor..kind=x", "an override is KEY=VALUE"),
    ("iterations=0", "iterations must be an integer >= 1; got 0"),
    ("iterations=many", "iterations"),
    ("executor.kind=warp", "warp"),
    ("tasks.0.batch_size=3", "the file has no list tasks to index"),
    ("name.x=3", "name is a value"),
])
def test_bad_overrides_are_refused_with_what_is_valid(override, message):
    with pytest.raises(OptimlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_study(STUDY, "study.toml", overrides=[override])


@pytest.mark.parametrize("override, message", [
    ("tasks.2.batch_size=3", r"tasks has 2 entries; index 2 is out of range \(0 to 1\)"),
    ("tasks.first.batch_size=3", "tasks is a list: index it with a number"),
    ("tasks.0.batch_sizes=3", "batch_sizes"),
])
def test_bad_indices_into_the_tasks_are_refused(override, message):
    with pytest.raises(OptimlabError, match=message):
        parse_study(TASKS, "study.toml", overrides=[override])


def test_overrides_are_recorded_in_the_store_and_refused_where_they_change_its_study(tmp_path, capsys):
    file = tmp_path / "study.toml"
    file.write_text(STUDY)
    out = tmp_path / "out"
    assert main(["study", "run", str(file), "iterations=2", "seeds=[0, 1]", "--out", str(out), "-q"]) == 0
    store = StudyStore.open(out / "study.db", readonly=True)
    try:
        recorded, runs = store.meta("study_file"), store.runs()
    finally:
        store.close()
    assert recorded.endswith("# overridden on the command line (optimlab study run FILE KEY=VALUE):\n"
                             "#   iterations=2\n#   seeds=[0, 1]\n")
    assert len(runs) == 4 and {r["steps"] for r in runs} == {2}
    capsys.readouterr()
    # the same overrides again: the same study, nothing to do
    assert main(["study", "run", str(file), "iterations=2", "seeds=[0, 1]", "--out", str(out), "-q"]) == 0
    # more seeds change the grid: refused, then added with --extend
    more = ["study", "run", str(file), "iterations=2", "seeds=[0, 1, 2]", "--out", str(out), "-q"]
    assert main(more) == 2
    assert "another version of this file" in capsys.readouterr().err
    assert main([*more, "--extend"]) == 0
    outcome = run_study(load_study(file, ["iterations=2", "seeds=[0, 1, 2]"]), out=out)
    assert (outcome.completed, outcome.pending) == (6, 0)


def test_overrides_may_come_before_and_after_the_options(tmp_path, capsys):
    file = tmp_path / "study.toml"
    file.write_text(STUDY)
    out = tmp_path / "out"
    argv = ["study", "run", str(file), "iterations=2", "--out", str(out), 'optimizers=["sgd"]', "-q"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("over: 1 completed")
    with pytest.raises(SystemExit):
        main(["study", "run", str(file), "--out", str(out), "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
