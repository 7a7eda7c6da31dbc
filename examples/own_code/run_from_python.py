"""The study of ``study.toml`` built from Python objects instead of a file: the model class, the loaded
tensors and the optimizer class themselves, given to :func:`optimlab.study.spec.build_study`, run with
:func:`optimlab.study.runner.run_study`, then a table of the final test accuracy (mean over seeds) per
optimizer and learning rate from :func:`optimlab.study.results.load_results`.

    python examples/own_code/run_from_python.py                 # -> runs/own-code-python/study.db
    python examples/own_code/run_from_python.py --executor sequential

Data given as tensors (not a loader's import path) stay in this process: such a study runs on the
sequential and vectorized executors only (processes and ray are refused before anything is written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script, this folder is on the path already; imported, maybe not
    sys.path.insert(0, str(HERE))

from mycode.data import load  # noqa: E402 - after the path is set
from mycode.nets import SmallCNN  # noqa: E402
from mycode.optim import SignMomentum  # noqa: E402

from optimlab.study.results import load_results  # noqa: E402
from optimlab.study.runner import run_study  # noqa: E402
from optimlab.study.spec import StudySpec, build_study  # noqa: E402

DATA = HERE / "digits.npz"  # the file study.toml reads (written on first use)


def study_from_objects(data: tuple, **overrides) -> StudySpec:
    """study.toml's study with Python objects; ``overrides``: any study field (``iterations``
    replaces ``epochs``)."""
    # the class itself, in the table study.toml has: its name there, lr-linearity declared (optimlab
    # checks the declaration with a probe)
    signum = {"name": "signum", "class": SignMomentum, "lr_linear": True, "options": {"beta": 0.9},
              "learning_rates": [1e-3, 3e-3]}
    fields = dict(
        name="own-code-python",
        model=SmallCNN,
        model_options={"channels": 8},
        dataset=data,  # (x_train, y_train, x_test, y_test)
        batch_size=64,
        epochs=1,
        eval_every=21,
        eval_train=False,
        optimizers=["momentum", signum,
                    {"name": "adam", "learning_rates": [1e-3, 3e-3]}],
        learning_rates=[0.01, 0.05],
        seeds=[0, 1],
    )
    if "iterations" in overrides:
        fields.pop("epochs")
    return build_study(**{**fields, **overrides})


def accuracy_table(store: str | Path):
    """Final test accuracy, mean over seeds: one row per optimizer, one column per learning rate."""
    evals = load_results(store).evals
    final = evals[evals.step == evals.groupby("run_id").step.transform("max")]
    return final.pivot_table(index="optimizer", columns="lr", values="test_accuracy", aggfunc="mean",
                             sort=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executor", default="vectorized", choices=["sequential", "vectorized"])
    parser.add_argument("--out", default="runs/own-code-python")
    args = parser.parse_args()
    spec = study_from_objects(load(str(DATA)))
    outcome = run_study(spec, out=args.out, executor=args.executor)
    print(f"{outcome.completed} runs completed, {outcome.diverged} diverged, {outcome.failed} failed "
          f"in {outcome.wall_time:.1f} s; store: {outcome.store}")
    print("\nfinal test accuracy (mean over seeds) by learning rate")
    print(accuracy_table(outcome.store).to_string(float_format=lambda a: f"{a:.3f}"))


if __name__ == "__main__":
    main()
