"""Stores and checkpoints written by optimlab 0.1.0 before the registry (tests/fixtures/v0_1, made by
that code) still load, continue and give the numbers they would have given."""

import shutil
from pathlib import Path

import pytest
import torch

from optimlab.report import make_report
from optimlab.study import load_results, run_study
from optimlab.study.spec import parse_study
from optimlab.study.store import SCHEMA_VERSION, StudyStore
from optimlab.study.vectorized import train_group
from optimlab.training import TrainConfig, train

FIXTURES = Path(__file__).parent / "fixtures" / "v0_1"
# the settings the fixtures were written with (see their study.toml and the configs below)
RUN = dict(dataset="mnist-10k:0,1", model="mlp", batch_size=500, epochs=2, device="cpu",
           model_options={"hidden": 8})


# The expected numbers were computed on the machine that wrote the fixtures. On the same kind of CPU
# they are met bit for bit; another CPU's kernels round float32 sums otherwise (AVX-512 against AMX,
# say), so the rows are compared to a relative 1e-5 (the differences seen are near 1e-6).
CLOSE = dict(rel=1e-5, abs=1e-7)


def same_rows(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        g = {k: v for k, v in g.items() if k != "wall_time"}
        w = {k: v for k, v in w.items() if k != "wall_time"}
        assert g.keys() == w.keys()
        for k, v in w.items():
            assert g[k] == (v if v is None else pytest.approx(v, **CLOSE)), k


def test_a_run_checkpoint_of_0_1_continues_to_its_uninterrupted_numbers():
    saved = torch.load(FIXTURES / "run_checkpoint.pt", weights_only=True)
    expected = torch.load(FIXTURES / "run_expected.pt", weights_only=True)
    assert "dataset_options" not in saved["config"]  # written before the setting existed
    config = TrainConfig(**RUN, optimizer="momentum", lr=0.05, eval_every=None, seed=3)
    resumed = train(config, resume_from=saved)
    same_rows(resumed.evals, expected["evals"])
    same_rows(resumed.train_log, expected["train_log"])
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected["params"][name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_group_checkpoint_of_0_1_continues_to_its_uninterrupted_numbers():
    saved = torch.load(FIXTURES / "group_checkpoint.pt", weights_only=True)
    expected = torch.load(FIXTURES / "group_expected.pt", weights_only=True)
    configs = [TrainConfig(**RUN, optimizer="adam", lr=lr, seed=s) for s in (0, 1) for lr in (1e-3, 1e-2)]
    resumed = train_group(configs, resume_from=saved)
    for got, want in zip(resumed, expected, strict=True):
        same_rows(got.train_log, want["train_log"])
        same_rows(got.evals, want["evals"])


def test_a_store_of_0_1_is_upgraded_read_reported_and_extended(tmp_path):
    db = tmp_path / "study.db"
    shutil.copy(FIXTURES / "study.db", db)
    before = load_results(db)
    store = StudyStore.open(db)
    assert store.meta("schema_version") == str(SCHEMA_VERSION)
    assert all(r["engine"] is None for r in store.runs())  # not recorded before schema 3
    store.close()
    assert len(before.runs) == 8 and set(before.runs.status) == {"completed"}
    # the same study file is the same study: nothing is run again
    text = (FIXTURES / "study.toml").read_text()
    outcome = run_study(parse_study(text, "fixture.toml"), out=tmp_path, progress=False)
    assert (outcome.completed, outcome.pending) == (8, 0)
    assert load_results(db).evals.equals(before.evals)
    # --extend adds a seed; the old runs keep their rows
    grown = text.replace("seeds = [0, 1]", "seeds = [0, 1, 2]")
    outcome = run_study(parse_study(grown, "fixture.toml"), out=tmp_path, extend=True, progress=False)
    assert outcome.completed == 12
    after = load_results(db)
    old = after.evals[after.evals.run_id.isin(before.runs.run_id)]
    assert old.reset_index(drop=True).equals(before.evals.reset_index(drop=True))
    report = make_report(db)
    assert report.html.exists()


def test_reading_a_store_of_0_1_changes_nothing_in_it(tmp_path):
    db = tmp_path / "study.db"
    shutil.copy(FIXTURES / "study.db", db)
    before = db.read_bytes()
    store = StudyStore.open(db, readonly=True)  # upgraded in a copy in memory
    assert store.meta("schema_version") == str(SCHEMA_VERSION) and len(store.runs()) == 8
    assert store.writers() == {r["id"]: [None] for r in store.runs()}  # its rows name no claim
    store.close()
    assert len(load_results(db).runs) == 8
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["study.db"]
