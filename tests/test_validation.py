"""The validation set: held out of the training set by a seeded split that is the same for every run,
evaluated at every evaluation beside the test set, and a study's default (0.1)."""

import pytest
import torch

from optimlab.data import Dataset
from optimlab.engine.records import evaluate
from optimlab.errors import OptimlabError
from optimlab.study import load_results, run_study
from optimlab.study.spec import parse_study
from optimlab.training import TrainConfig, train

STUDY = """name = "val"
dataset = "mnist-10k:0,1"
model = "logreg"
batch_size = 100
epochs = 1
seeds = [0]
learning_rates = [0.1, 0.01]
optimizers = ["sgd"]
"""


@pytest.fixture(scope="module")
def small(mnist10k):
    d = mnist10k
    return Dataset(d.name, d.x_train[:1000], d.y_train[:1000], d.x_test[:300], d.y_test[:300], d.task,
                   d.classes)


def rows_of(x: torch.Tensor, within: torch.Tensor) -> list[int]:
    """The indices in ``within`` of the rows of ``x`` (each row found once)."""
    flat, pool = x.flatten(1), within.flatten(1)
    return [int(torch.nonzero((pool == row).all(1)).flatten()[0]) for row in flat]


def test_the_split_partitions_the_training_set_the_same_way_every_time(small):
    a, b = small.with_validation(0.1), small.with_validation(100)
    assert (a.num_val, a.num_train, a.num_test) == (100, 900, 300)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.x_train, b.x_train)  # 0.1 of 1000 is 100
    held, kept = rows_of(a.x_val, small.x_train), rows_of(a.x_train, small.x_train)
    assert sorted(held + kept) == list(range(1000))  # disjoint, and together the training set
    assert held == sorted(held) and kept == sorted(kept)  # each part in the original order
    assert torch.equal(small.y_train[held], a.y_val) and torch.equal(a.x_test, small.x_test)
    want = torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:100].sort().values.tolist()
    assert held == want  # the first 100 of the permutation of seed 0
    assert small.with_validation(100, seed=1).x_val.ne(a.x_val).any()


@pytest.mark.parametrize("size, message", [
    (0, "holds out nothing"), (-1, "a fraction in \\(0, 1\\)"), (1.0, "fraction must be < 1"),
    (float("nan"), "a fraction in"), (True, "a fraction in"), ("0.1", "a fraction in"),
    (1000, "1 to 999"), (0.0001, "holds out 0"),
])
def test_a_validation_size_that_leaves_a_part_empty_or_is_no_size_is_refused(small, size, message):
    with pytest.raises(OptimlabError, match=message):
        small.with_validation(size)


def test_a_split_that_leaves_a_class_out_of_a_part_is_refused(small):
    one_of_a_kind = Dataset("odd", small.x_train[:50], torch.cat([torch.zeros(49, dtype=torch.long),
                                                                  torch.ones(1, dtype=torch.long)]),
                            small.x_test, small.y_test, "classification", ("a", "b"))
    with pytest.raises(OptimlabError, match="without an example of class b"):
        one_of_a_kind.with_validation(10)


def test_a_run_evaluates_its_validation_set_and_trains_on_the_rest(small):
    config = TrainConfig(dataset="mnist-10k", model="logreg", batch_size=100, epochs=2, validation=200,
                         device="cpu")
    result = train(config, data=small)
    assert result.steps == 16  # 800 training examples: 8 batches an epoch
    split = small.with_validation(200)
    last = result.evals[-1]
    assert (last["val_loss"], last["val_accuracy"]) == evaluate(result.model, split.x_val, split.y_val,
                                                                "classification")
    assert (last["test_loss"], last["test_accuracy"]) == evaluate(result.model, small.x_test, small.y_test,
                                                                  "classification")
    plain = train(TrainConfig(dataset="mnist-10k", model="logreg", batch_size=100, epochs=2, device="cpu"),
                  data=small)
    assert "val_loss" not in plain.evals[-1] and plain.steps == 20


def test_a_study_holds_out_a_tenth_by_default_and_records_it(tmp_path):
    spec = parse_study(STUDY)
    assert spec.shared["validation"] == 0.1 and spec.defaulted == ("validation",)
    results = load_results(run_study(spec, out=tmp_path / "default", progress=False).store)
    assert results.evals.val_accuracy.notna().all() and results.evals.val_loss.notna().all()
    assert results.meta["definition"]["shared"]["validation"] == 0.1
    none = load_results(run_study(parse_study(STUDY + "validation = 0\n"), out=tmp_path / "none",
                                  progress=False).store)
    assert none.evals.val_loss.isna().all() and "validation" not in none.meta["definition"]["shared"]
