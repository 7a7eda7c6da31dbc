"""A constraint's measure of the user's own, by import path (or a plugin's name): the run is the
constrained run of that measure, and the vectorized engine, which has no stacked twin of it, trains
its runs one by one."""

import sys
import textwrap

import pytest
import torch

from optimlab.constrained.named import parse_constraint
from optimlab.data import Dataset
from optimlab.engine.group import group_refusal
from optimlab.errors import OptimlabError
from optimlab.training import TrainConfig, train


@pytest.fixture
def measures(tmp_path, monkeypatch):
    (tmp_path / "mymeasures.py").write_text(textwrap.dedent("""
        def l2norm_again(model):
            return sum(p.pow(2).sum() for p in model.parameters())

        NOT_A_FUNCTION = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("mymeasures", None)


@pytest.fixture(scope="module")
def digits(mnist10k):
    d = mnist10k
    return Dataset(d.name, d.x_train[:600], d.y_train[:600], d.x_test[:200], d.y_test[:200], d.task,
                   d.classes)


def config(constraint):
    return TrainConfig(model="logreg", optimizer="adam", lr=1e-2, batch_size=100, iterations=12,
                       eval_every=6, constraints=[constraint], dual_lr=0.1, device="cpu")


def test_a_measure_by_import_path_is_the_constrained_run_of_that_measure(measures, digits):
    named = parse_constraint("mymeasures:l2norm_again<=1")
    assert named.key == "mymeasures_l2norm_again_le_1"
    mine, builtin = train(config("mymeasures:l2norm_again<=1"), data=digits), train(config("l2norm<=1"),
                                                                                        data=digits)
    key, ref = "mymeasures_l2norm_again_le_1", "l2norm_le_1"
    assert [r[f"violation_{key}"] for r in mine.evals] == [r[f"violation_{ref}"] for r in builtin.evals]
    assert [r[f"multiplier_{key}"] for r in mine.evals] == [r[f"multiplier_{ref}"] for r in builtin.evals]
    assert [r["loss"] for r in mine.train_log] == [r["loss"] for r in builtin.train_log]
    assert mine.evals[-1][f"multiplier_{key}"] > 0  # the constraint is active: the multiplier moved
    why = group_refusal(config("mymeasures:l2norm_again<=1"), digits)
    assert why == "constraint 'mymeasures:l2norm_again<=1' has no stacked measure"


@pytest.mark.parametrize("text, message", [
    ("mymeasures:nothing<=1", "has no attribute 'nothing'"),
    ("mymeasures:NOT_A_FUNCTION<=1", "is int, not a function measure"),
    ("nomodule_xyz:f<=1", "no module named 'nomodule_xyz'"),
    ("spectral<=1", "unknown constraint 'spectral'; valid: l2norm, l1norm"),
])
def test_bad_measures_are_refused_clearly(measures, text, message):
    with pytest.raises(OptimlabError, match=message):
        TrainConfig(constraints=[text])


def test_the_measure_is_differentiated_like_the_built_in(measures):
    model = torch.nn.Linear(3, 2)
    g = parse_constraint("mymeasures:l2norm_again>=0.5").violation(model)
    h = parse_constraint("l2norm>=0.5").violation(model)
    assert torch.equal(g, h) and g.requires_grad
