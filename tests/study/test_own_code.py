"""examples/own_code: a study of the user's own network, loader and optimizer (named by import path)
gives the same numbers on every executor, and built from Python objects gives the file's numbers.

Bit for bit where the arithmetic is the same (runs one by one: sequential, the vectorized executor
with the CNN on the CPU, processes, Ray), within the vectorized engine's tolerances where it stacks
(``stack = "always"``). The same arithmetic also needs the same number of torch threads: the processes
executor gives each of 2 workers cpu_count // 2 threads and Ray's workers have 1, so this file runs
everything on 1 thread (in this process, in 2 workers of a 2-CPU count, and in Ray's workers).
"""

import os
import sys
from pathlib import Path

import pytest
import torch

from optimlab.errors import OptimlabError
from optimlab.study.results import load_results
from optimlab.study.runner import run_study
from optimlab.study.spec import ExecutorSpec, parse_study
from optimlab.study.store import StudyStore

OWN = Path(__file__).resolve().parents[2] / "examples" / "own_code"
if str(OWN) not in sys.path:
    sys.path.insert(0, str(OWN))

from mycode.data import load, write_npz  # noqa: E402 - examples/own_code on the path first
from mycode.optim import SignMomentum  # noqa: E402
from run_from_python import study_from_objects  # noqa: E402

from optimlab.optimizers import OptimizerEntry  # noqa: E402

RTOL = 1e-5  # tests/study/test_vectorized.py's, on every recorded metric
# Stacked, the CNN keeps to RTOL only as long as no ReLU input or max-pool pair within rounding of a
# tie goes the other way (BatchNorm puts many inputs near 0): one that does moves the loss by ~1e-5 at
# once, and training amplifies it. Measured here (momentum, train_log): at lr 0.01 the first such jump
# at step 35, 1e-3 apart at step 60; at lr 0.005 none (4e-7). The same sequential runs on 1 and on 2
# torch threads drift as much or more (first jumps at steps 5 and 10; 9e-3 and 2e-3 at step 60).
# Signum (the sign of m, blind to rounding) stays within 1e-7 all along.
EXACT_STEPS = 5  # every record of the first steps within RTOL
DRIFT = 0.03  # every record: relative, losses; absolute, accuracies (fractions of 200 test images)
METRICS = ["batch_loss", "test_loss", "test_accuracy"]  # what the study records (eval_train = false)
# a stored row, less what differs between two stores of the same runs
ROW = ["optimizer", "lr", "seed", "step", "epoch", *METRICS]
KEY = ["optimizer", "lr", "seed", "step"]
CONVOLUTIONS = "one by one: stacked, a step of 2 of these runs was measured"
# shrinking study.toml: 1 seed x 2 lrs x 2 optimizers, 60 steps on 640 digits (no validation set)
SHRINK = [
    ("seeds = [0, 1]", "seeds = [0]\nvalidation = 0"),  # all 640 digits: what RTOL's steps were measured on
    ("epochs = 1", "iterations = 60"),
    ("eval_every = 21", "eval_every = 20\nlog_every = 1"),
    ("learning_rates = [0.01, 0.05]", "learning_rates = [0.005, 0.01]"),
]
SHRUNK = {"seeds": [0], "iterations": 60, "eval_every": 20, "log_every": 1, "learning_rates": [0.005, 0.01],
          "validation": 0}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> str:
    return str(write_npz(tmp_path_factory.mktemp("own") / "digits.npz", n_train=640, n_test=200))


def study_text(npz: str, stack: bool = False) -> str:
    """study.toml, shrunk, reading ``npz``, without adam (and with ``stack = "always"``)."""
    text = (OWN / "study.toml").read_text()
    changes = [*SHRINK, ('path = "examples/own_code/digits.npz"', f"path = {npz!r}")]
    if stack:
        changes.append(('# stack = "always"', 'stack = "always"'))
    for old, new in changes:
        assert text.count(old) == 1, f"study.toml no longer has {old!r} once: update this test"
        text = text.replace(old, new)
    lines = [line for line in text.splitlines() if '{ name = "adam"' not in line]
    assert len(lines) == len(text.splitlines()) - 1, "study.toml's adam line moved: update this test"
    return "\n".join(lines)


def run(tmp_path, npz: str, executor: ExecutorSpec, stack: bool = False, layout: str | None = None):
    text = study_text(npz, stack)
    if layout is not None:  # a top-level field: before the file's first table
        text = f"memory_format = {layout!r}\n{text}"
    spec = parse_study(text, "study.toml", base=OWN)
    outcome = run_study(spec, out=tmp_path / executor.kind, executor=executor)
    assert (outcome.completed, outcome.diverged, outcome.failed) == (4, 0, 0)
    store = StudyStore.open(outcome.store)
    try:
        engines = {(r["optimizer"], r["lr"]): r["engine"] for r in store.runs()}
    finally:
        store.close()
    return load_results(outcome.store), engines


def rows(results, frame: str = "evals"):
    table = getattr(results, frame)
    columns = ROW if frame == "evals" else ["optimizer", "lr", "seed", "step", "epoch", "loss"]
    return table.sort_values(KEY)[columns].reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, npz):
    results, engines = run(tmp_path_factory.mktemp("sequential"), npz, ExecutorSpec(kind="sequential"))
    assert set(engines.values()) == {"one by one (executor)"}
    assert sorted(engines) == [("momentum", 0.005), ("momentum", 0.01), ("signum", 0.001), ("signum", 0.003)]
    assert len(results.evals) == 4 * 4  # steps 0, 20, 40, 60
    assert (results.evals.groupby("run_id").test_accuracy.last() > 0.5).all()  # it learns
    return results


@pytest.mark.parametrize("kind", ["vectorized", "processes", "ray"])
def test_runs_one_by_one_give_the_sequential_numbers_bit_for_bit(tmp_path, npz, reference, kind,
                                                                  monkeypatch):
    if kind == "ray":
        pytest.importorskip("ray", reason="Ray is not installed (pip install 'optimlab[ray]')")
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # Ray's own default for 1-CPU tasks, whatever is set
    if kind == "processes":
        monkeypatch.setattr(os, "cpu_count", lambda: 2)  # 2 workers of 1 thread each, on any machine
    executor = ExecutorSpec(kind=kind, workers=None if kind == "vectorized" else 2)
    results, engines = run(tmp_path, npz, executor)
    if kind in ("vectorized", "processes"):  # groups where they pay: the CNN on the CPU one by one, said why
        assert all(e.startswith(CONVOLUTIONS) for e in engines.values()), engines
    else:
        assert set(engines.values()) == {"one by one (executor)"}
    assert rows(results).equals(rows(reference))
    assert rows(results, "train_log").equals(rows(reference, "train_log"))


@pytest.fixture(scope="module")
def contiguous(tmp_path_factory, npz):
    """The reference runs in the contiguous layout, the stacked tensors' (memory_format = "auto" may
    give runs one by one channels-last, another summation order)."""
    return run(tmp_path_factory.mktemp("contiguous"), npz, ExecutorSpec(kind="sequential"),
               layout="contiguous")[0]


def test_stacking_forced_stacks_each_optimizer_within_the_vectorized_tolerance(tmp_path, npz, contiguous):
    reference = contiguous
    results, engines = run(tmp_path, npz, ExecutorSpec(kind="vectorized", stack="always"), stack=True)
    # signum is the user's class declared lr_linear in study.toml: stacked like the built-in momentum
    assert engines == {k: "vectorized: a group of 2 runs" for k in engines}
    for frame, metrics in (("evals", METRICS), ("train_log", ["loss"])):
        got, want = rows(results, frame), rows(reference, frame)
        assert got[KEY].equals(want[KEY])
        for metric in metrics:
            assert got[metric].isna().equals(want[metric].isna()), metric
            diff = (got[metric] - want[metric]).abs().fillna(0)
            scale = want[metric].abs().fillna(0)
            early = got.step <= EXACT_STEPS
            assert (diff[early] <= RTOL * scale[early]).all(), (frame, metric, diff[early].max())
            bound = DRIFT if metric == "test_accuracy" else DRIFT * scale
            assert (diff <= bound).all(), (frame, metric, (diff / scale).max())
        if frame == "train_log":  # signum keeps to RTOL all along
            signum = got.optimizer == "signum"
            rel = ((got.loss - want.loss).abs() / want.loss.abs())[signum]
            assert rel.max() <= RTOL, rel.max()


def test_the_study_built_from_python_objects_gives_the_file_study_numbers(tmp_path, npz, reference):
    signum = OptimizerEntry("signum", SignMomentum, {"beta": 0.9}, lr_linear=True, elementwise=True)
    spec = study_from_objects(load(npz), **SHRUNK,
                              optimizers=["momentum", {"name": signum, "learning_rates": [1e-3, 3e-3]}])
    assert spec.shared["model"] == "mycode.nets:SmallCNN"  # an importable class is kept by its path
    outcome = run_study(spec, out=tmp_path / "objects", executor="sequential")
    mine = load_results(outcome.store)
    assert rows(mine).equals(rows(reference))
    assert rows(mine, "train_log").equals(rows(reference, "train_log"))


def test_objects_without_an_import_path_are_refused_for_processes_before_anything_is_written(tmp_path,
                                                                                               npz):
    tensors = study_from_objects(load(npz), seeds=[0], iterations=5)  # the data: tensors
    with pytest.raises(OptimlabError, match=r"processes executor .*dataset: <python: tuple>"):
        run_study(tensors, out=tmp_path / "tensors", executor=ExecutorSpec(kind="processes", workers=2))
    # the data by their loader (importable), the loss a lambda: only the loss is named
    lam = study_from_objects(load, dataset_options={"path": npz}, seeds=[0], iterations=5,
                             loss=lambda output, y: torch.nn.functional.cross_entropy(output, y))
    with pytest.raises(OptimlabError, match="processes executor") as refused:
        run_study(lam, out=tmp_path / "closure", executor=ExecutorSpec(kind="processes", workers=2))
    message = str(refused.value)
    assert "loss: <python: test_objects_without_an_import_path_are_refused" in message, message
    assert "<lambda>>" in message and "dataset:" not in message, message
    assert not (tmp_path / "tensors").exists() and not (tmp_path / "closure").exists()
