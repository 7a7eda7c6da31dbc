"""Damaged stores and checkpoints: found and named when a store is opened and by `optimlab study
check`; a checkpoint that cannot be read is dropped and its unit trained again from the start."""

import sqlite3

import pytest

from optimlab.cli import main
from optimlab.errors import OptimlabError
from optimlab.study import load_results, parse_study, run_study
from optimlab.study.store import StudyStore

STUDY = """name = "damage"
dataset = "mnist-10k"
model = "logreg"
batch_size = 500
epochs = 3
eval_every = 4
log_every = 1
seeds = [0, 1]
learning_rates = [0.1, 0.01]
optimizers = ["sgd"]
[executor]
kind = "sequential"
"""


def rows(results, table):
    frame = getattr(results, table).drop(columns=["wall_time", "run_id"], errors="ignore")
    return frame.sort_values(["lr", "seed", "step"]).reset_index(drop=True)


def damage(db, table: str, first: bool) -> None:
    """Garbage over the first (or last) leaf page of ``table`` in the file ``db``."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    try:
        leaves = [n for (n,) in conn.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' "
                                             "ORDER BY pageno", (table,))]
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat table to find the table's pages")
    finally:
        conn.close()
    with open(db, "r+b") as f:
        f.seek(page * ((leaves[0] if first else leaves[-1]) - 1))
        f.write(bytes(range(256)) * (page // 256))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return load_results(run_study(parse_study(STUDY), out=out, progress=False).store)


@pytest.mark.parametrize("table", ["evals", "train_log", "runs"])
def test_a_damaged_page_is_named_on_open_and_by_study_check(reference, tmp_path, capsys, table):
    db = run_study(parse_study(STUDY), out=tmp_path, progress=False).store
    damage(db, table, first=True)
    with pytest.raises(OptimlabError, match="is damaged .*optimlab study check"):
        StudyStore.open(db)
    assert main(["study", "status", str(db)]) == 2
    assert "is damaged" in capsys.readouterr().err
    assert main(["study", "check", str(db)]) == 1
    said = capsys.readouterr().out
    assert "damaged:" in said and "Traceback" not in said


def test_a_checkpoint_that_cannot_be_read_is_trained_again_from_the_start(reference, tmp_path, monkeypatch):
    commit = StudyStore.commit
    calls = []

    def crash_after_the_first_checkpoint(self, *args, **kwargs):
        commit(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(StudyStore, "commit", crash_after_the_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_study(parse_study(STUDY), out=tmp_path, progress=False)
    monkeypatch.setattr(StudyStore, "commit", commit)
    conn = sqlite3.connect(tmp_path / "study.db")
    assert conn.execute("UPDATE checkpoints SET data = X'00ff00ff'").rowcount == 1
    conn.commit()
    conn.close()
    outcome = run_study(parse_study(STUDY), out=tmp_path, progress=False)
    assert (outcome.completed, outcome.failed) == (4, 0)
    final = load_results(outcome.store)
    assert rows(final, "evals").equals(rows(reference, "evals"))
    assert rows(final, "train_log").equals(rows(reference, "train_log"))
    assert final.runs.error.str.contains("checkpoint could not be read").sum() == 1


def test_a_damaged_store_is_salvaged_and_its_study_finished_to_the_same_numbers(reference, tmp_path, capsys):
    db = run_study(parse_study(STUDY), out=tmp_path / "damaged", progress=False).store
    damage(db, "train_log", first=False)  # its last page: the rows of the last run(s)
    out = tmp_path / "salvaged"
    assert main(["study", "salvage", str(db), str(out)]) == 0
    said = capsys.readouterr().out
    copied, again = (int(w) for w in (said.split(": ")[1].split()[0], said.split(", ")[1].split()[0]))
    assert copied + again == 4 and again >= 1 and copied >= 1
    store = StudyStore.open(out / "study.db")  # intact: it passes the check on open
    pending = [r["id"] for r in store.runs() if r["status"] == "pending"]
    store.close()
    assert len(pending) == again
    outcome = run_study(parse_study(STUDY), out=out, progress=False)  # the same study: it goes on
    assert (outcome.completed, outcome.pending) == (4, 0)
    final = load_results(outcome.store)
    assert rows(final, "evals").equals(rows(reference, "evals"))
    assert rows(final, "train_log").equals(rows(reference, "train_log"))
    assert main(["study", "salvage", str(db), str(out)]) == 2  # never over a folder with a store
