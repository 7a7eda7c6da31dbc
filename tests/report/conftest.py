"""Fixtures: study stores with hand-made results (see madeup.py)."""

import pytest
from madeup import LRS, _study, fill, standard


@pytest.fixture
def made_up_store(tmp_path):
    return fill(tmp_path / "study.db", _study(["sgd", "adam"], LRS, [0, 1, 2]), standard)


@pytest.fixture
def make_store(tmp_path):
    def make(optimizers, lrs, seeds, outcome, name="s.db"):
        return fill(tmp_path / name, _study(optimizers, lrs, seeds), outcome)

    return make
