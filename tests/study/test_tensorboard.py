"""The TensorBoard export, read back with TensorBoard's own reader: every scalar equals the store's row
(as float32), and the HParams plugin holds each run's grid point and final metrics."""

import math
import textwrap

import pytest

from optimlab.cli import main
from optimlab.errors import OptimlabError
from optimlab.study.results import load_results
from optimlab.study.runner import run_study
from optimlab.study.spec import parse_study

pytest.importorskip("tensorboard", reason="needs tensorboard (pip install 'optimlab[tensorboard]')")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from optimlab.study.tensorboard import export_tensorboard, run_folder  # noqa: E402

STUDY = textwrap.dedent("""
    name = "board"
    dataset = "mnist-10k:0,1"
    model = "logreg"
    batch_size = 100
    iterations = 12
    eval_every = 4
    log_every = 2
    validation = 200
    device = "cpu"
    optimizers = ["sgd", "adam"]
    learning_rates = [0.05]
    schedules = ["cosine"]
    seeds = [0, 1]
    """)


def read(folder):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    hparams = {k: (v.string_value if v.HasField("string_value") else v.number_value)
               for k, v in start.hparams.items()}
    return scalars, hparams


def f32(values):
    return pytest.approx([float(v) for v in values], rel=1e-6)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("board")
    outcome = run_study(parse_study(STUDY), out=folder / "study", executor="vectorized")
    assert outcome.completed == 4
    return outcome.store, export_tensorboard(outcome.store, folder / "tb")


def test_every_scalar_is_the_stores_row(exported):
    db, folders = exported
    results = load_results(db)
    assert len(folders) == 4 and [f.name for f in folders] == [run_folder(r) for r in
                                                                results.runs.to_dict("records")]
    for run, folder in zip(results.runs.to_dict("records"), folders, strict=True):
        scalars, _ = read(folder)
        log = results.train_log[results.train_log.run_id == run["run_id"]]
        evals = results.evals[results.evals.run_id == run["run_id"]]
        assert [s for s, _ in scalars["train/batch_loss"]] == log.step.tolist() == list(range(2, 13, 2))
        assert [v for _, v in scalars["train/batch_loss"]] == f32(log.loss)
        for column in [f"{split}_{m}" for split in ("train", "val", "test") for m in ("loss", "accuracy")]:
            assert [s for s, _ in scalars[f"eval/{column}"]] == evals.step.tolist() == [0, 4, 8, 12]
            assert [v for _, v in scalars[f"eval/{column}"]] == f32(evals[column]), column
        # the cosine schedule: update s of 12 is made at 0.05 * (1 + cos(pi (s - 1) / 12)) / 2
        cosine = [0.05 * (1 + math.cos(math.pi * (s - 1) / 12)) / 2 for s in range(2, 13, 2)]
        assert [v for _, v in scalars["train/lr"]] == f32(cosine)
        assert scalars["eval/lr"][0] == (0, pytest.approx(0.05))


def test_the_hparams_are_the_grid_point_and_the_final_metrics(exported):
    db, folders = exported
    results = load_results(db)
    for run, folder in zip(results.runs.to_dict("records"), folders, strict=True):
        scalars, hparams = read(folder)
        assert hparams == {"optimizer": run["optimizer"], "lr": pytest.approx(0.05), "seed": run["seed"],
                           "schedule": "cosine", "status": "completed"}
        last = results.evals[results.evals.run_id == run["run_id"]].iloc[-1]
        assert scalars["hparam/final_test_accuracy"][0][1] == pytest.approx(last.test_accuracy, rel=1e-6)
        assert scalars["hparam/steps"][0][1] == 12


def test_a_constrained_study_exports_its_violations_and_multipliers(tmp_path):
    text = STUDY.replace('schedules = ["cosine"]', 'constraints = ["l2norm<=1"]\noptimizers = ["sgd"]')
    text = text.replace('optimizers = ["sgd", "adam"]\n', "")
    outcome = run_study(parse_study(text), out=tmp_path / "study", executor="sequential")
    (folder,) = export_tensorboard(outcome.store, tmp_path / "tb")[:1]
    scalars, _ = read(folder)
    results = load_results(outcome.store)
    log = results.train_log[results.train_log.run_id == 1]
    evals = results.evals[results.evals.run_id == 1]
    for column in ("violation_l2norm_le_1", "multiplier_l2norm_le_1"):
        assert [s for s, _ in scalars[f"train/{column}"]] == log.step.tolist()
        assert [v for _, v in scalars[f"train/{column}"]] == f32(log[column])
        assert [v for _, v in scalars[f"eval/{column}"]] == f32(evals[column])
    assert [v for _, v in scalars["train/batch_accuracy"]] == f32(log.accuracy)


def test_the_export_refuses_a_folder_in_use_and_names_the_extra(exported, tmp_path, monkeypatch, capsys):
    db, _ = exported
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    with pytest.raises(OptimlabError, match="is not an empty folder: TensorBoard would mix"):
        export_tensorboard(db, tmp_path / "used")
    assert main(["study", "export", str(db), "--format", "tensorboard", "--out", str(tmp_path / "cli")]) == 0
    assert capsys.readouterr().out.startswith(f"4 TensorBoard runs in {tmp_path / 'cli'}")
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(OptimlabError, match=r"pip install 'optimlab\[tensorboard\]'"):
        export_tensorboard(db, tmp_path / "none")
    assert not (tmp_path / "none").exists()
