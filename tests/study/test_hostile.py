"""A read-only store or folder and a full disk: one plain message each (exit status 2), the store as it
was, readers (status, report, export, check) still working, and the study continuing once the cause is
gone, to the same numbers as a study that never met it.

The file systems are real: a small tmpfs, mounted here, filled and enlarged, or remounted read-only;
a read-only store file is a read-only bind mount over it. That needs root (CI runs as root); elsewhere
the read-only cases use file modes and the full-disk cases skip.
"""

import contextlib
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from optimlab.cli import main
from optimlab.study import load_results, parse_study, run_study

STUDY = """name = "hostile"
dataset = "mnist-10k"
model = "mlp"
batch_size = 500
epochs = 3
eval_every = 10
log_every = 5
seeds = [0]
learning_rates = [0.1, 0.01]
optimizers = ["sgd", "adam"]
[executor]
kind = "{kind}"
"""
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount here ({done.stderr.strip()})")


@contextlib.contextmanager
def tmpfs(where: Path, size: str):
    """A tmpfs of ``size`` at ``where`` (root only), unmounted afterwards."""
    if not ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")
    where.mkdir()
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` (a file, or the mount point of a tmpfs) read-only while in the block."""
    if ROOT:
        if path.is_dir():
            _mount("-o", "remount,ro", str(path))
            undo = ["mount", "-o", "remount,rw", str(path)]
        else:
            _mount("--bind", str(path), str(path))
            _mount("-o", "remount,ro,bind", str(path))
            undo = ["umount", str(path)]
    else:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        yield
    finally:
        if ROOT:
            subprocess.run(undo, capture_output=True)
        else:
            path.chmod(mode)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def study_file(tmp_path: Path, kind: str = "sequential") -> Path:
    path = tmp_path / f"study-{kind}.toml"
    path.write_text(STUDY.format(kind=kind))
    return path


def curves(db: Path):
    results = load_results(db)
    cols = ["optimizer", "lr", "seed", "step", "batch_loss", "test_loss", "test_accuracy", "train_loss"]
    return results.evals[cols].sort_values(["optimizer", "lr", "step"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The curves of the study that met no fault, by executor."""
    made = {}

    def of(kind: str = "sequential"):
        if kind not in made:
            out = tmp_path_factory.mktemp(f"reference-{kind}")
            outcome = run_study(parse_study(STUDY.format(kind=kind)), out=out, progress=False)
            made[kind] = curves(outcome.store)
        return made[kind]

    return of


@contextlib.contextmanager
def folder(where: Path):
    """A folder that can be made read-only: a tmpfs as root, else a plain one (file modes)."""
    if ROOT and shutil.which("mount"):
        with tmpfs(where, "64m"):
            yield where
    else:
        where.mkdir()
        yield where


def test_a_read_only_folder_is_read_but_not_written(tmp_path, capsys, reference):
    file = study_file(tmp_path)
    with folder(tmp_path / "disk") as where:
        db = where / "s" / "study.db"
        assert main(["study", "run", str(file), "--out", str(where / "s"), "-q"]) == 0
        before = digest(db)
        with read_only(where):
            capsys.readouterr()
            assert main(["study", "run", str(file), "--out", str(where / "s"), "-q"]) == 2
            err = capsys.readouterr().err
            assert "cannot be written" in err and "read-only" in err and "Traceback" not in err
            assert main(["study", "status", str(db)]) == 0
            assert "4 completed" in capsys.readouterr().out
            assert main(["study", "check", str(db)]) == 0
            assert main(["study", "export", str(db), "--out", str(tmp_path / "export")]) == 0
            assert main(["report", str(db), "--out", str(tmp_path / "report")]) == 0
            assert (tmp_path / "report" / "report.html").exists()
            assert curves(db).equals(reference())
            assert main(["report", str(db)]) == 2  # beside the store: refused plainly
            assert "choose a folder you can write to with --out" in capsys.readouterr().err
        assert digest(db) == before
        assert sorted(p.name for p in db.parent.iterdir()) == ["study.db"]


def test_a_read_only_store_file_in_a_writable_folder(tmp_path, capsys):
    file = study_file(tmp_path)
    out = tmp_path / "s"
    assert main(["study", "run", str(file), "--out", str(out), "-q"]) == 0
    db = out / "study.db"
    before = digest(db)
    with read_only(db):
        capsys.readouterr()
        assert main(["study", "run", str(file), "--out", str(out), "-q"]) == 2
        err = capsys.readouterr().err
        assert f"the file {db} is read-only" in err and "Traceback" not in err
        assert main(["study", "status", str(db)]) == 0
        assert "4 completed" in capsys.readouterr().out
    assert digest(db) == before


@pytest.mark.parametrize("kind", ["sequential", "vectorized"])
def test_a_full_disk_stops_the_study_plainly_and_it_continues_once_there_is_room(
        tmp_path, capsys, reference, kind):
    file = study_file(tmp_path, kind)
    with tmpfs(tmp_path / "disk", "1m") as disk:
        db = disk / "s" / "study.db"
        assert main(["study", "run", str(file), "--out", str(disk / "s"), "-q"]) == 2
        err = capsys.readouterr().err
        assert f"the disk holding {db} is full" in err and "Traceback" not in err
        assert main(["study", "check", str(db)]) == 0  # intact: the failed transaction left nothing
        assert "intact" in capsys.readouterr().out
        assert len(load_results(db).evals) > 0  # the disk filled up mid-way, after some checkpoints
        _mount("-o", "remount,size=64m", str(disk))
        assert main(["study", "run", str(file), "--out", str(disk / "s"), "-q"]) == 0
        assert curves(db).equals(reference(kind))


def test_a_run_on_a_full_disk_keeps_its_last_checkpoint_and_resumes(tmp_path, capsys):
    train = ["train", "--dataset", "mnist-10k", "--model", "mlp", "--batch-size", "500", "-q"]
    plain = tmp_path / "plain"
    assert main([*train, "--epochs", "3", "--out", str(plain)]) == 0
    with tmpfs(tmp_path / "disk", "300k") as disk:  # less than one checkpoint of the MLP (330 kB)
        out = disk / "run"
        assert main([*train, "--epochs", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "checkpoint.pt was not written: the disk is full; nothing of it was written" in err
        assert "Traceback" not in err and not list(out.glob(".*.partial"))
        _mount("-o", "remount,size=1m", str(disk))  # room for one checkpoint and its replacement
        assert main([*train, "--epochs", "1", "--out", str(out)]) == 0
        assert main([*train, "--epochs", "3", "--out", str(out), "--resume"]) == 0
        assert without_times(out / "evals.csv") == without_times(plain / "evals.csv")


def without_times(csv: Path) -> list[str]:
    return [line.rsplit(",", 1)[0] for line in csv.read_text().splitlines()]  # wall_time is last
