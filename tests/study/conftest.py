"""Small data sets of the vectorized-group tests."""

import pytest

from optimlab.data import Dataset, make_lls


@pytest.fixture(scope="module")
def digits(mnist10k):
    """600 training and 200 test images of the bundled set: 10 steps an epoch at batch 64."""
    d = mnist10k
    return Dataset(d.name, d.x_train[:600], d.y_train[:600], d.x_test[:200], d.y_test[:200],
                   d.task, d.classes)


@pytest.fixture(scope="module")
def lls():
    return make_lls(n=100, p=10, cond=10.0, seed=0)
