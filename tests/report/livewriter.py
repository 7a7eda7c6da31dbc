"""A process that writes a made-up study into a store in two stages, as a study process would, while a
test watches its dashboard: ``python livewriter.py STORE FOLDER``. Stage 0 at once, then the file
``ready-0`` in FOLDER; stage 1 once ``go-1`` appears there, then ``ready-1``; then it exits, leaving
the claim of run 5 behind (dead: its process is gone)."""

import sys
import time
from pathlib import Path

from madeup import _study, evals

from optimlab.study.store import StudyStore

ERROR = "Traceback (most recent call last):\nRuntimeError: a bug of the made-up study"


def accuracies(run_id: int, count: int = 4) -> list[float]:
    """Run ``run_id``'s test accuracy at steps 0, 10, 20, 30: every run's apart from the others'."""
    return [round(0.1 + 0.2 * k + 0.03 * run_id, 6) for k in range(count)]


def result(run_id: int, count: int, status: str = "running", diverged_at=None) -> dict:
    rows = evals(accuracies(run_id, count))
    return {"status": status, "steps": rows[-1]["step"], "diverged_at": diverged_at, "wall_time": 1.0,
            "evals": rows, "train_log": []}


def main(db: str, folder: str) -> None:
    folder = Path(folder)
    store = StudyStore.create(db, _study(["sgd", "adam"], [0.01, 0.1], [0, 1]))
    store.start_unit("run:2", [2])
    store.commit("run:2", [2], None, [result(2, 4)], finished=True)  # completed
    store.start_unit("run:3", [3])
    store.commit("run:3", [3], None, [result(3, 2, "diverged", 15)], finished=True)
    store.start_unit("run:4", [4])
    store.fail("run:4", [4], ERROR, retry=False)
    store.start_unit("run:1", [1])
    store.commit("run:1", [1], None, [result(1, 2)], finished=False)  # running: steps 0 and 10
    (folder / "ready-0").touch()
    deadline = time.time() + 60
    while not (folder / "go-1").exists() and time.time() < deadline:
        time.sleep(0.05)
    store.commit("run:1", [1], None, [result(1, 4)], finished=True)  # steps 20 and 30: completed
    store.start_unit("run:5", [5])
    store.commit("run:5", [5], None, [result(5, 2)], finished=False)
    store.close()
    (folder / "ready-1").touch()


if __name__ == "__main__":
    main(*sys.argv[1:3])
