"""Inputs that used to be taken, hang or end in a traceback: each is one plain message now, exit status
2 from the command line, and nothing written."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from optimlab.cli import main
from optimlab.cli.train import _run_name
from optimlab.errors import OptimlabError
from optimlab.report import make_report
from optimlab.study.spec import load_study, parse_study
from optimlab.training import TrainConfig

STUDY = """name = "bad"
dataset = "mnist-10k:0,1"
model = "logreg"
batch_size = 100
iterations = 4
seeds = [0]
learning_rates = [0.1]
optimizers = ["sgd"]
"""
FIXTURES = Path(__file__).parent / "fixtures" / "v0_1"
TRAIN = ["train", "--dataset", "mnist-10k:0,1", "--model", "logreg", "--iterations", "3", "-q"]


@pytest.mark.parametrize("old, new, message", [
    ("learning_rates = [0.1]", 'learning_rates = ["0.1"]', "learning rate '0.1' is not a number; write it "
                                                          "without quotes"),
    ("learning_rates = [0.1]", "learning_rates = [true]", "learning rate True is not a number"),
    ('optimizers = ["sgd"]', 'optimizers = ["adam", "adam(betas=(0.9, 0.999))"]',
     "duplicate configurations"),
    ('name = "bad"', 'name = ".."', "not '.' or '..'"),
    ('name = "bad"', 'name = "a/b"', "name must be 1 to 100 letters"),
    ('name = "bad"', 'name = "a\\u0000b"', "name must be 1 to 100 letters"),
    ('name = "bad"', f'name = "{"x" * 101}"', "name must be 1 to 100 letters"),
    ('optimizers = ["sgd"]', 'optimizers = ["adam(betas=0.9)"]',
     "betas is a tuple like (0.9, 0.999); got 0.9"),
])
def test_bad_study_fields_are_refused(old, new, message):
    with pytest.raises(OptimlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_study(STUDY.replace(old, new), "study.toml")


def test_a_study_file_that_is_not_text(tmp_path):
    path = tmp_path / "study.toml"
    path.write_bytes(b"name = \xff\xfe\n")
    with pytest.raises(OptimlabError, match="not UTF-8 text"):
        load_study(path)


def test_a_target_accuracy_is_a_fraction(tmp_path):
    shutil.copy(FIXTURES / "study.db", tmp_path / "study.db")
    with pytest.raises(OptimlabError, match=r"target accuracy is a fraction in \(0, 1\]"):
        make_report(tmp_path / "study.db", target_accuracy=5)
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("args, message", [
    (["localflow", "schedule", "--dataset", "lls", "--model", "linear", "--epochs", "0"], "--epochs must be"),
    (["localflow", "schedule", "--dataset", "lls", "--model", "linear", "--momentum", "-1"],
     "--momentum must"),
    (["localflow", "picture", "--steps", "-1"], "--steps must be an integer >= 0"),
])
def test_out_of_range_options_are_refused(args, message, tmp_path, capsys):
    assert main([*args, "--out", str(tmp_path / "out.json")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_train_resumes_only_a_run_and_replaces_one_only_when_told(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err and not out.exists()
    assert main([*TRAIN, "--out", str(out)]) == 0
    assert main([*TRAIN, "--out", str(out), "--lr", "0.5"]) == 2  # another run into its folder
    assert "holds a run already" in capsys.readouterr().err
    assert main([*TRAIN, "--out", str(out), "--lr", "0.5", "--overwrite"]) == 0


def test_the_default_folder_tells_every_setting_apart_but_the_budget():
    base = dict(dataset="mnist-10k", model="mlp", optimizer="sgd", lr=0.1)
    plain = _run_name(TrainConfig(**base))
    assert plain.startswith("mnist-10k-mlp-sgd-lr0.1-seed0-") and len(plain.rsplit("-", 1)[1]) == 8
    assert _run_name(TrainConfig(**{**base, "optimizer": "sgd(weight_decay=1e-4)"})) != plain
    assert _run_name(TrainConfig(**base, constraints=["l2norm<=1"])) != plain
    assert _run_name(TrainConfig(**base, batch_size=50)) != plain
    assert _run_name(TrainConfig(**base, epochs=5)) == plain  # --resume with a larger budget finds it
    assert _run_name(TrainConfig(**base, schedule="cosine")) != plain
    assert _run_name(TrainConfig(**base, validation=0.1)) != plain
    # settings added later leave the names of earlier runs as they were (this one is in the README)
    assert _run_name(TrainConfig(dataset="mnist-10k", model="mlp", optimizer="sgd", lr=0.1, batch_size=100,
                                 iterations=3000, eval_every=500)) == "mnist-10k-mlp-sgd-lr0.1-seed0-33ec1489"


def test_output_to_a_closed_pipe_is_quiet():
    # the reader is gone before the command writes a byte (it is still importing torch)
    proc = subprocess.Popen([sys.executable, "-m", "optimlab", "optimizers"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_device_that_is_not_here_is_refused_before_anything_is_written(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main([*TRAIN, "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    study = tmp_path / "study.toml"
    study.write_text(STUDY + 'device = "cuda"\n')
    assert main(["study", "run", str(study), "--out", str(tmp_path / "study"), "-q"]) == 2
    assert capsys.readouterr().err.count("device 'cuda' is not available here") == 2
    assert not (tmp_path / "run").exists() and not (tmp_path / "study").exists()
    # the corrected file is then taken on that folder: nothing was left to refuse it
    study.write_text(STUDY)
    assert main(["study", "run", str(study), "--out", str(tmp_path / "study"), "-q"]) == 0


def test_a_report_of_runs_without_a_training_loss(tmp_path):
    # no training-set evaluation, and the budget ends before the first logged loss
    text = STUDY.replace("iterations = 4", "iterations = 4\nlog_every = 10\neval_train = false")
    text = text.replace("learning_rates = [0.1]", "learning_rates = [0.1, 0.01]")
    from optimlab.study import run_study

    store = run_study(parse_study(text), out=tmp_path, progress=False).store
    report = make_report(store)
    assert report.html.exists()
    assert report.summary.robustness.best_lr.notna().all()  # chosen on the test accuracy
