"""The offline task suite: named tasks of a study (``[[tasks]] suite = "fmnist_mlp"``) that follow
DeepOBS's test problems (Schneider, Balles and Hennig, ICLR 2019) where their data exist offline.

Each is the settings DeepOBS defines: pixels / 255 without normalisation (``normalize = false``), the
last incomplete batch dropped, no weight decay, its batch size and its budget in epochs, and 10,000
training images held out for validation as DeepOBS's later versions do (``mnist-10k`` has 8,000
training images: 1,000 are held out; ``quadratic-deep`` has its own validation draw). A study may
scale one down by setting fields in the task's table (``epochs``, ``iterations``, ...); a scaled task
says so on the report's page, and its settings are in the store.
"""

from __future__ import annotations

from optimlab.errors import OptimlabError

_IMAGES = {"normalize": False, "drop_last": True}
SUITE: dict[str, dict] = {
    "quadratic_deep": {"dataset": "quadratic-deep", "model": "quadratic-deep", "batch_size": 128,
                       "epochs": 100, "drop_last": True, "validation": None},
    "fmnist_2c2d": {"dataset": "fashion-mnist", "model": "deepobs-2c2d", "batch_size": 128, "epochs": 100,
                    "validation": 10_000, **_IMAGES},
    "fmnist_mlp": {"dataset": "fashion-mnist", "model": "deepobs-mlp", "batch_size": 128, "epochs": 100,
                   "validation": 10_000, **_IMAGES},
    "fmnist_logreg": {"dataset": "fashion-mnist", "model": "deepobs-logreg", "batch_size": 128,
                      "epochs": 50, "validation": 10_000, **_IMAGES},
    "mnist10k_logreg": {"dataset": "mnist-10k", "model": "deepobs-logreg", "batch_size": 128, "epochs": 50,
                        "validation": 1_000, **_IMAGES},
    "mnist10k_mlp": {"dataset": "mnist-10k", "model": "deepobs-mlp", "batch_size": 128, "epochs": 100,
                     "validation": 1_000, **_IMAGES},
    # not DeepOBS's: optimlab's synthetic least squares (condition number 100), its solution known
    "lls": {"dataset": "lls", "model": "linear", "batch_size": 100, "epochs": 20, "validation": 0.1},
}


def suite_task(name: object, where: str) -> dict:
    """The settings of the suite's task ``name`` (a copy)."""
    if not isinstance(name, str) or name not in SUITE:
        raise OptimlabError(f"{where}: {name!r} is not a task of the suite; valid: {', '.join(SUITE)}")
    return dict(SUITE[name])
