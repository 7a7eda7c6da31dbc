"""Claims on a store's units, as two processes see them (two connections here): one claim a unit, a
lease that expires, a takeover, and a lost claim that writes nothing."""

import sqlite3

import pytest

from optimlab.study import parse_study
from optimlab.study.store import LEASE_S, LostClaim, StudyStore, checkpoint_bytes

STUDY = """name = "claims"
dataset = "mnist-10k:0,1"
model = "logreg"
batch_size = 100
iterations = 4
seeds = [0, 1]
learning_rates = [0.1]
optimizers = ["sgd"]
"""
RESULT = {"status": "running", "steps": 2, "diverged_at": None, "wall_time": 1.0,
          "evals": [{"step": 0, "epoch": 0.0, "batch_loss": None, "train_loss": 0.7, "train_accuracy": 0.5,
                     "test_loss": 0.7, "test_accuracy": 0.5, "lr": 0.1, "wall_time": 0.0}], "train_log": []}


@pytest.fixture
def two(tmp_path):
    """The same store opened twice, as by two processes."""
    a = StudyStore.create(tmp_path / "study.db", parse_study(STUDY))
    b = StudyStore.open(tmp_path / "study.db")
    yield a, b
    a.close()
    b.close()


def age(db, unit, seconds):
    conn = sqlite3.connect(db)
    conn.execute("UPDATE claims SET heartbeat = heartbeat - ? WHERE unit = ?", (seconds, unit))
    conn.commit()
    conn.close()


def test_a_unit_is_claimed_once_and_its_runs_are_not_claimable_in_another_cut(two):
    a, b = two
    assert a.claim_unit("group:1,2", [1, 2]) is not None
    assert b.claim_unit("group:1,2", [1, 2]) is None
    assert b.claim_unit("run:2", [2]) is None  # another cut of the same runs
    assert b.claimed_runs() == {1, 2}
    [claim] = b.claims()
    assert claim["live"] and claim["runs"] == [1, 2] and claim["unit"] == "group:1,2"


def test_a_silent_holder_loses_its_claim_and_its_late_commit_writes_nothing(two, tmp_path):
    a, b = two
    assert a.claim_unit("run:1", [1]) is not None
    mine = checkpoint_bytes({"progress": {"step": 2}})
    a.commit("run:1", [1], mine, [RESULT], finished=False)
    age(tmp_path / "study.db", "run:1", LEASE_S + 1)  # a froze: no heartbeat for longer than the lease
    assert not b.claims()[0]["live"]
    taken = b.claim_unit("run:1", [1])
    assert taken is not None and taken.checkpoint == mine  # continued from a's checkpoint
    with pytest.raises(LostClaim):
        a.commit("run:1", [1], checkpoint_bytes({"late": 1}), [{**RESULT, "steps": 3}], finished=False)
    assert b.checkpoint("run:1") == mine and b.runs()[0]["steps"] == 2  # nothing written
    b.commit("run:1", [1], None, [{**RESULT, "status": "completed", "steps": 4}], finished=True)
    assert b.runs()[0]["status"] == "completed" and b.claims() == []


def test_dead_claims_are_released_and_their_runs_pending_again(two, tmp_path):
    a, b = two
    a.claim_unit("run:1", [1])
    a.claim_unit("run:2", [2])
    age(tmp_path / "study.db", "run:2", LEASE_S + 1)
    dead = b.release_dead_claims()
    assert [c["unit"] for c in dead] == ["run:2"]
    assert [(r["id"], r["status"]) for r in b.runs()] == [(1, "running"), (2, "pending")]
    a.fail("run:1", [1], "a bug", retry=False)  # a failure releases the claim too
    assert b.claims() == [] and b.runs()[0]["status"] == "failed"
