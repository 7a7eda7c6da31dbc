"""The user's own optimizers in vectorized studies: stacked only when declared lr-linear (and then each
slice equals its independent run), else trained run by run with the reason in the store."""

import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from optimlab.errors import OptimlabError
from optimlab.registry import resolve_optimizer
from optimlab.study.results import load_results
from optimlab.study.runner import run_study
from optimlab.study.spec import parse_study
from optimlab.study.store import StudyStore
from optimlab.study.vectorized import train_group
from optimlab.training import train

OPTIM = (Path(__file__).parents[1] / "user_optimizers.py").read_text()  # Saturating, SignMomentum
# the tolerances of test_vectorized.py (recorded metrics: relative; parameters). Measured here: 2e-7
# and 1e-8. Small learning rates: sign(m) of every weight moves the logits fast, and at losses near 0
# (2e-5 after 20 steps at lr 0.01) the cross-entropy's cancellation alone is 0.2% relative
RTOL = 1e-5
PARAM_RTOL, PARAM_ATOL = 1e-5, 5e-6


def forget() -> None:
    for name in [m for m in sys.modules if m == "useropt" or m.startswith("useropt.")]:
        del sys.modules[name]


@pytest.fixture
def useropt(tmp_path, monkeypatch):
    """The package ``useropt`` (module ``useropt.optim``) on the Python path for this test."""
    folder = tmp_path / "code"
    (folder / "useropt").mkdir(parents=True)
    (folder / "useropt" / "__init__.py").write_text("")
    (folder / "useropt" / "optim.py").write_text(textwrap.dedent(OPTIM))
    forget()
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    forget()


def study(optimizer: str, learning_rates=(0.05, 0.01)) -> str:
    """Logistic regression on two digits, 2 learning rates x 2 seeds, 20 iterations (stacked wherever
    exact, however fast)."""
    lrs = ", ".join(map(str, learning_rates))
    return textwrap.dedent(f"""
        name = "mine"
        dataset = "mnist-10k:0,1"
        model = "logreg"
        batch_size = 50
        iterations = 20
        eval_every = 10
        log_every = 5
        device = "cpu"
        optimizers = [{optimizer}]
        learning_rates = [{lrs}]
        seeds = [0, 1]
        [executor]
        stack = "always"
        """)


def identical(got: list, want: list) -> bool:
    """Equal numbers, bit for bit (a store's NaN is a run's None: batch_loss at step 0)."""
    return len(got) == len(want) and all(
        a == b or (b is None or math.isnan(b)) and math.isnan(a) for a, b in zip(got, want, strict=True))


def runs_of(db) -> list[dict]:
    store = StudyStore.open(db)
    try:
        return store.runs()
    finally:
        store.close()


def records(db) -> dict:
    """(optimizer, lr, seed) -> its evaluation rows and train-log rows, without the wall times."""
    results = load_results(db)
    out = {}
    for frame, kind in ((results.evals, "evals"), (results.train_log, "train_log")):
        frame = frame.drop(columns=[c for c in ("wall_time", "run_id") if c in frame])
        for key, rows in frame.groupby(["optimizer", "lr", "seed"]):
            out.setdefault(key, {})[kind] = rows.reset_index(drop=True)
    return out


def run_both(text: str, tmp_path) -> tuple:
    spec = parse_study(text)
    vectorized = run_study(spec, out=tmp_path / "vectorized", executor="vectorized")
    sequential = run_study(spec, out=tmp_path / "sequential", executor="sequential")
    for outcome in (vectorized, sequential):
        assert (outcome.completed, outcome.failed, outcome.pending) == (len(spec.grid), 0, 0)
    return spec, vectorized.store, sequential.store


def test_an_optimizer_not_declared_lr_linear_is_trained_run_by_run_as_the_sequential_executor(
        useropt, tmp_path):
    table = '{ name = "saturating", class = "useropt.optim:Saturating" }'
    _, db, reference = run_both(study(table), tmp_path)
    engines = [r["engine"] for r in runs_of(db)]
    assert len(engines) == 4 and all(e.startswith("one by one: optimizer saturating is not declared "
                                                  "lr-linear") for e in engines), engines
    assert {r["engine"] for r in runs_of(reference)} == {"one by one (executor)"}
    got, want = records(db), records(reference)
    assert got.keys() == want.keys() and len(got) == 4
    for key in want:  # the same train() of each run: bit for bit
        for kind in ("evals", "train_log"):
            assert got[key][kind].equals(want[key][kind]), (key, kind)


def test_prodigy_is_trained_run_by_run_and_refused_as_lr_linear(tmp_path):
    pytest.importorskip("prodigyopt", reason="prodigyopt is not installed (pip install prodigyopt)")
    table = '{ name = "prodigy", class = "prodigyopt:Prodigy", learning_rates = [1.0] }'
    spec = parse_study(study(table))
    db = run_study(spec, out=tmp_path / "vectorized", executor="vectorized").store
    rows = runs_of(db)
    assert [(r["lr"], r["seed"], r["status"]) for r in rows] == [(1.0, 0, "completed"), (1.0, 1, "completed")]
    assert all(r["engine"].startswith("one by one: optimizer prodigy is not declared lr-linear")
               for r in rows), [r["engine"] for r in rows]
    got = records(db)
    for config in spec.configs():  # each run as its independent train gives it
        want = train(config)
        rows = got[("prodigy", config.lr, config.seed)]["evals"]
        assert rows["step"].tolist() == [e["step"] for e in want.evals] == [0, 10, 20]
        for k in ("batch_loss", "train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert identical(rows[k].tolist(), [e[k] for e in want.evals]), k
    with pytest.raises(OptimlabError, match=r"optimizer 'prodigy' is declared lr_linear, but its step at "
                                            r"lr 1e-07 is not 1e-07/0.1 times .*relative difference"):
        resolve_optimizer({"name": "prodigy", "class": "prodigyopt:Prodigy", "lr_linear": True})
    with pytest.raises(OptimlabError, match=r"optimizers\[0\]: optimizer 'prodigy' is declared lr_linear"):
        parse_study(study('{ name = "prodigy", class = "prodigyopt:Prodigy", lr_linear = true }'))


def test_an_lr_linear_optimizer_of_ones_own_is_stacked_and_each_slice_is_its_own_run(useropt, tmp_path):
    table = '{ name = "signum", class = "useropt.optim:SignMomentum", lr_linear = true }'
    spec, db, reference = run_both(study(table, learning_rates=(3e-4, 1e-4)), tmp_path)
    assert {r["engine"] for r in runs_of(db)} == {"vectorized: a group of 4 runs"}
    got, want = records(db), records(reference)
    assert got.keys() == want.keys() and len(got) == 4
    for key in want:
        for kind in ("evals", "train_log"):
            a, b = got[key][kind], want[key][kind]
            assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
            for column in a.columns:
                if a[column].dtype.kind == "f":
                    assert a[column].tolist() == pytest.approx(b[column].tolist(), rel=RTOL, nan_ok=True), \
                        (key, column)
                else:
                    assert a[column].tolist() == b[column].tolist(), (key, column)
    configs = spec.configs()  # the group itself: each slice's parameters are its run's
    for slice_, config in zip(train_group(configs), configs, strict=True):
        alone = train(config)
        assert slice_.steps == alone.steps == 20
        for (name, p), q in zip(slice_.model.named_parameters(), alone.model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=PARAM_RTOL, atol=PARAM_ATOL, msg=name)
