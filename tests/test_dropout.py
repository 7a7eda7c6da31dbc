"""A model with Dropout: its masks come from a stream seeded for the run, so that a run is
reproducible from its settings, resumes exactly, and leaves the caller's generator alone; the
vectorized engine trains such runs one by one, and says why."""

import pytest
import torch
from torch import nn

from optimlab.data import Dataset
from optimlab.study.vectorized import group_refusal
from optimlab.training import TrainConfig, train


class DropoutMLP(nn.Module):
    def __init__(self, input_shape, num_classes, hidden: int = 16, p: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), hidden),
                                 nn.ReLU(), nn.Dropout(p), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def digits600(mnist10k):
    """600 training and 200 test images: 3 steps an epoch at batch 200."""
    d = mnist10k
    return Dataset(d.name, d.x_train[:600], d.y_train[:600], d.x_test[:200], d.y_test[:200],
                   d.task, d.classes)


def config(**changes):
    base = dict(dataset="mnist-10k", model=DropoutMLP, optimizer="sgd", lr=0.1, batch_size=200,
                epochs=2, log_every=1, device="cpu")
    return TrainConfig(**{**base, **changes})


def test_the_masks_are_the_runs_own(digits600):
    torch.manual_seed(123)
    caller = torch.get_rng_state()
    a = train(config(), data=digits600)
    assert torch.equal(torch.get_rng_state(), caller)  # the caller's stream is left as it was
    torch.manual_seed(999)  # another caller state: the same run
    b = train(config(), data=digits600)
    assert a.train_log == b.train_log
    other_seed = train(config(seed=1), data=digits600)
    assert other_seed.train_log != a.train_log
    # p = 0: no mask; the run differs from p = 0.5 (the masks are really drawn)
    assert train(config(model_options={"p": 0.0}), data=digits600).train_log != a.train_log


def test_a_resumed_dropout_run_draws_the_masks_it_would_have_drawn(digits600):
    whole = train(config(), data=digits600)
    saved = []
    train(config(epochs=1), data=digits600, on_checkpoint=lambda ckpt, result: saved.append(ckpt))
    resumed = train(config(), data=digits600, resume_from=saved[-1])
    assert resumed.train_log == whole.train_log
    assert [r["test_loss"] for r in resumed.evals] == [r["test_loss"] for r in whole.evals]


def test_the_vectorized_engine_trains_dropout_runs_one_by_one(digits600):
    why = group_refusal(config(), digits600)
    assert why.startswith("the model has Dropout") and why.endswith("trained run by run")
    assert group_refusal(config(model_options={"p": 0.0}), digits600) is None
