import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from optimlab.cli import main

FAST = ["--dataset", "mnist-10k", "--model", "logreg", "--batch-size", "100", "--device", "cpu"]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "optimlab", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_train_prints_the_seeds_lines_and_writes_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", *FAST, "--optimizer", "sgd", "--lr", "0.1", "--iterations", "160",
                 "--eval-every", "80", "--out", str(out), "-q"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 160
    assert [e["step"] for e in metrics["evals"]] == [0, 80, 160]
    assert capsys.readouterr().out == ""  # -q: nothing
    code = main(["train", *FAST, "--lr", "0.1", "--iterations", "160", "--eval-every", "80",
                 "--out", str(tmp_path / "again")])
    lines = capsys.readouterr().out.splitlines()
    expected = [f"Iteration: {e['step']}. Loss: {e['batch_loss']:.6g}. "
                f"Accuracy: {100 * e['test_accuracy']:.2f}" for e in metrics["evals"][1:]]
    assert lines[:2] == expected
    assert lines[2].startswith("done: 160 iterations, test accuracy")


def test_help_everywhere(capsys):
    for args in (["train"], ["data"], ["data", "list"], ["data", "info"], ["optimizers"]):
        with pytest.raises(SystemExit) as stop:
            main([*args, "--help"])
        assert stop.value.code == 0 and "usage: optimlab" in capsys.readouterr().out, args
    r = run_cli("--help")  # the module entry point, as a real process
    assert r.returncode == 0 and "train" in r.stdout and "data" in r.stdout


def test_data_list_says_what_is_found(tmp_path, capsys):
    assert main(["data", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"mnist-10k", "mnist", "fashion-mnist", "cifar10", "lls", "quadratic-deep"}
    assert rows["mnist-10k"]["found"] and rows["mnist-10k"]["where"].endswith("mnist-10k")
    assert main(["data", "list"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^mnist-10k +found ", text, re.M) and "at: " in text
    from optimlab.data import locate

    for name in ("cifar10", "fashion-mnist"):  # each line says what the catalogue finds
        status = "found" if locate(name) is not None else "missing"
        assert re.search(rf"^{name} +{status} ", text, re.M), name


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "imagenet"], "unknown data set 'imagenet'"),
        (["--model", "resnet"], "unknown model 'resnet'"),
        (["--optimizer", "adamm"], "unknown optimizer 'adamm'"),
        (["--optimizer", "adam(bettas=(0.9, 0.9))"], "no hyperparameter bettas"),
        (["--lr", "0"], "learning rate must be a finite number > 0; got 0"),
        (["--lr", "-0.1"], "learning rate must be a finite number > 0"),
        (["--lr", "fast"], "learning rate 'fast' is not a number"),
        (["--lr", "nan"], "learning rate must be a finite number > 0"),
        (["--batch-size", "0"], "batch_size must be an integer >= 1"),
        (["--batch-size", "8001"], "larger than the training set (8000 samples"),
        (["--dataset", "mnist-10k:3"], "at least two distinct classes"),
        (["--model", "cnn", "--dataset", "lls"], "use one of: linear"),
    ],
)
def test_bad_input_is_one_clear_message(args, message, tmp_path, capsys):
    code = main(["train", "--iterations", "1", "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("optimlab: error: ") and message in err
    assert "Traceback" not in err


def test_missing_data_and_no_network_says_where_it_looked(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("train", "--dataset", "mnist", "--out", str(tmp_path / "o"),
                "--data-dir", str(tmp_path / "mine"),
                env={"OPTIMLAB_SYSTEM_DATA": str(empty), "XDG_CACHE_HOME": str(empty),
                     "OPTIMLAB_OFFLINE": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    for place in (tmp_path / "mine" / "mnist", empty / "optimlab" / "mnist", empty / "mnist"):
        assert str(place) in r.stderr
    assert "How to get it" in r.stderr


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run_cli("train", *FAST, "--iterations", "1", "--out", str(blocker / "out"))
    assert r.returncode == 2 and "cannot write to the output folder" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_run_killed_mid_way_is_finished_by_resume_with_nothing_lost(tmp_path):
    """A real process, SIGKILLed after a few checkpoints, then `--resume`d."""
    args = [*FAST, "--optimizer", "adam", "--lr", "1e-3", "--epochs", "40", "--log-every", "20",
            "--no-eval-train", "-q"]
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # bit-for-bit whatever the load
    whole = run_cli("train", *args, "--out", str(tmp_path / "whole"), env=one_thread)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "optimlab", "train", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **one_thread})
    deadline = time.time() + 120
    epoch = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            epoch = torch.load(out / "checkpoint.pt", weights_only=True)["progress"]["epoch"]
        except Exception:  # not written yet, or being replaced: look again
            epoch = 0
        if epoch >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    # metrics.json follows the checkpoint; the kill may land between the two writes
    cut = json.loads((out / "metrics.json").read_text())
    assert cut["status"] == "running" and 2 <= cut["steps"] // 80 < 40
    resumed = run_cli("train", *args, "--out", str(out), "--resume", env=one_thread)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]  # noqa: E731
    assert b["status"] == "completed" and b["steps"] == a["steps"] == 40 * 80
    for rows_a, rows_b in ((strip(a["evals"]), strip(b["evals"])), (a["train_log"], b["train_log"])):
        diff = [(x, y) for x, y in zip(rows_a, rows_b, strict=True) if x != y]
        assert not diff, f"first differing row (uninterrupted, resumed): {diff[0]}"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_corrupt_data_file_is_named_in_one_message(tmp_path, capsys):
    import numpy as np

    from optimlab.data import write_idx

    folder = tmp_path / "mnist"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((4, 28, 28), np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 12], np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x00\x00\x08\x01\x00\x00")
    code = main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert str(folder / "train-labels-idx1-ubyte.gz") in err and "label 12 at index 3" in err


def test_threads_sets_torch_threads_and_refuses_zero(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        assert main(["train", *FAST, "--iterations", "2", "--threads", "1", "--out", str(tmp_path / "a"),
                     "-q"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert main(["train", *FAST, "--iterations", "2", "--threads", "0", "--out", str(tmp_path / "b")]) == 2
    assert "--threads must be an integer >= 1; got 0" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_the_command_line_starts_without_importing_torch():
    """``optimlab --help`` (and building any command's parser) imports no torch: 0.04 s, not 1.2."""
    import subprocess
    import sys

    heavy = "('torch', 'numpy', 'pandas', 'matplotlib', 'plotly')"
    code = ("import sys; from optimlab.cli import _parser; _parser().format_help(); "
            f"print(sorted(m for m in {heavy} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_model_names_in_the_help_are_the_models():
    from optimlab.cli.train import MODEL_NAMES
    from optimlab.models import model_names

    assert list(MODEL_NAMES) == model_names()


@pytest.fixture
def stored(tmp_path, monkeypatch):
    """A study's file, folder and store where `optimlab study run study.toml` puts them (runs/NAME)."""
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures" / "v0_1"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "fixture").mkdir(parents=True)
    (tmp_path / "runs" / "fixture" / "study.db").write_bytes((fixtures / "study.db").read_bytes())
    (tmp_path / "study.toml").write_text((fixtures / "study.toml").read_text())
    return tmp_path


@pytest.mark.parametrize("where", ["runs/fixture/study.db", "runs/fixture", "runs/fixture/", "study.toml"])
def test_status_report_and_export_take_the_store_its_folder_or_the_study_file(stored, where, capsys):
    assert main(["study", "status", where]) == 0
    assert capsys.readouterr().out.startswith("fixture: 8 runs: 8 completed")
    assert main(["study", "export", where]) == 0
    assert (stored / "runs" / "fixture" / "export" / "runs.csv").is_file()
    assert main(["report", where]) == 0
    assert (stored / "runs" / "fixture" / "report" / "report.html").is_file()


def test_a_folder_or_study_file_without_a_store_is_named(stored, capsys):
    (stored / "empty").mkdir()
    assert main(["study", "status", "empty"]) == 2
    assert "empty is a folder without a study store (study.db)" in capsys.readouterr().err
    (stored / "other.toml").write_text('name = "other"\n')
    assert main(["report", "other.toml"]) == 2
    assert ("the study file other.toml has no store at runs/other/study.db (its default place): run "
            "`optimlab study run other.toml` first") in capsys.readouterr().err
    (stored / "broken.toml").write_text("name = \n")
    assert main(["study", "export", "broken.toml"]) == 2
    assert "broken.toml is not a TOML study file" in capsys.readouterr().err
    assert not (stored / "runs" / "other").exists()


def test_status_summary_counts_per_optimizer(stored, capsys):
    assert main(["study", "status", "study.toml", "--summary"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "fixture: 8 runs: 8 completed, 0 diverged, 0 running, 0 pending, 0 failed"
    assert [line.split() for line in lines[1:]] == [["sgd", "4/4", "done"], ["adam", "4/4", "done"]]
