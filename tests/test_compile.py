"""``compile = true``: the model compiled by torch.compile trains to the plain run's numbers (up to
the compiled kernels' rounding), its checkpoint keeps the plain model's keys, and a vectorized group
trains such runs one by one, saying why."""

import pytest
import torch
import torch._dynamo

from optimlab.data import Dataset
from optimlab.engine.group import group_refusal
from optimlab.errors import OptimlabError
from optimlab.training import CHECKPOINT, TrainConfig, train

# compiled against plain after 2 epochs of an MLP: fused kernels sum in another order (measured 9e-8)
RTOL = 1e-5


@pytest.fixture(scope="module")
def digits(mnist10k):
    return Dataset(mnist10k.name, mnist10k.x_train[:256], mnist10k.y_train[:256], mnist10k.x_test[:128],
                   mnist10k.y_test[:128], mnist10k.task, mnist10k.classes)


def test_a_compiled_run_has_the_plain_runs_numbers(digits, tmp_path):
    cfg = dict(model="mlp", optimizer="adam", lr=1e-3, batch_size=64, epochs=2, log_every=1, device="cpu")
    plain = train(TrainConfig(**cfg), data=digits)
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = train(TrainConfig(**cfg, compile=True), data=digits, out=tmp_path)
    assert counters["frames"]["ok"] >= 1  # compiled indeed (nn.Module.compile() compiles nothing here)
    steps = list(range(1, 9))  # 4 steps an epoch, every one logged
    assert [r["step"] for r in compiled.train_log] == [r["step"] for r in plain.train_log] == steps
    for a, b in zip(compiled.train_log, plain.train_log, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=RTOL)
    assert compiled.final["test_loss"] == pytest.approx(plain.final["test_loss"], rel=RTOL)
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert set(saved["model"]) == set(plain.model.state_dict())  # no "_orig_mod." prefix


def test_compiled_runs_are_trained_one_by_one_and_bad_values_refused(digits):
    why = group_refusal(TrainConfig(model="mlp", compile=True, device="cpu"), digits)
    assert why.startswith("compile is for runs trained one by one")
    with pytest.raises(OptimlabError, match="compile must be true or false"):
        TrainConfig(compile="yes")
    with pytest.raises(OptimlabError, match="exact-flow is not compiled"):
        TrainConfig(model="logreg", optimizer="exact-flow", compile=True)
