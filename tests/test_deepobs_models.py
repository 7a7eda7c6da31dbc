"""DeepOBS's test-problem networks: ``deepobs-2c2d``, ``deepobs-mlp``, ``deepobs-logreg``."""

import math

import pytest
import torch
from torch import nn

from optimlab.data import Dataset
from optimlab.models import MODELS, DeepOBSLogReg, DeepOBSMLP, TwoConvTwoDense, build_model
from optimlab.study.vectorized import train_group
from optimlab.training import TrainConfig, train

MNIST = (1, 28, 28)
NAMES = ("deepobs-2c2d", "deepobs-mlp", "deepobs-logreg")
# std of a normal(0, sigma) truncated to [-2 sigma, 2 sigma], over sigma: sqrt(1 - 2 a phi(a) / Z), a = 2
TRUNC_STD = math.sqrt(1 - 2 * 2 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def weights_and_biases(model):
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    return [m.weight for m in layers], [m.bias for m in layers]


def small(data: Dataset, n_train: int, n_test: int = 200) -> Dataset:
    return Dataset(data.name, data.x_train[:n_train], data.y_train[:n_train],
                   data.x_test[:n_test], data.y_test[:n_test], data.task, data.classes)


@pytest.fixture(scope="module")
def digits(mnist10k):
    return small(mnist10k, 640)


def test_the_truncated_normal_constant():
    assert TRUNC_STD == pytest.approx(0.8796, abs=1e-4)


@pytest.mark.parametrize("name, cls", [("deepobs-2c2d", TwoConvTwoDense), ("deepobs-mlp", DeepOBSMLP),
                                       ("deepobs-logreg", DeepOBSLogReg)])
def test_registered_as_classifiers_mapping_digits_to_logits(name, cls):
    assert MODELS[name].task == "classification" and MODELS[name].options() == []
    model = build_model(name, MNIST, 10)
    assert isinstance(model, cls)
    assert model(torch.randn(5, *MNIST)).shape == (5, 10)
    assert not list(model.buffers())  # nothing but parameters: the vectorized engine stacks them


def test_2c2d_takes_any_channels_and_refuses_vectors():
    assert build_model("deepobs-2c2d", (3, 32, 32), 7)(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(Exception, match="deepobs-2c2d needs images"):
        build_model("deepobs-2c2d", (50,), 10)


def test_parameter_counts():
    c2d = (5 * 5 * 1 * 32 + 32) + (5 * 5 * 32 * 64 + 64) + (7 * 7 * 64 * 1024 + 1024) + (1024 * 10 + 10)
    mlp = 784 * 1000 + 1000 + 1000 * 500 + 500 + 500 * 100 + 100 + 100 * 10 + 10
    assert (c2d, mlp) == (3_274_634, 1_336_610)
    assert n_params(build_model("deepobs-2c2d", MNIST, 10)) == c2d
    assert n_params(build_model("deepobs-mlp", MNIST, 10)) == mlp
    assert n_params(build_model("deepobs-logreg", MNIST, 10)) == 784 * 10 + 10
    conv = [m for m in build_model("deepobs-2c2d", MNIST, 10).modules() if isinstance(m, nn.Conv2d)]
    assert [(m.kernel_size, m.padding) for m in conv] == [((5, 5), (2, 2))] * 2


@pytest.mark.parametrize("name, std, bias, big", [("deepobs-2c2d", 0.05, 0.05, 2),
                                                  ("deepobs-mlp", 0.03, 0.0, 0)])
def test_truncated_normal_weights_and_constant_biases(name, std, bias, big):
    torch.manual_seed(0)
    weights, biases = weights_and_biases(build_model(name, MNIST, 10))
    for w in weights:
        assert w.abs().max().item() <= 2 * std
        assert w.mean().item() == pytest.approx(0.0, abs=0.1 * std)
    for b in biases:
        assert torch.equal(b, torch.full_like(b, bias))
    # the largest matrix (2c2d: the 3136x1024 dense layer, mlp: 784x1000): its spread is the truncated one
    assert weights[big].std().item() == pytest.approx(std * TRUNC_STD, rel=0.02)
    assert weights[big].numel() == max(w.numel() for w in weights)


def test_logreg_starts_at_zero():
    model = build_model("deepobs-logreg", MNIST, 10)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in model.parameters())
    logits = model(torch.randn(4, *MNIST))
    assert torch.equal(logits, torch.zeros(4, 10))


@pytest.mark.parametrize("name", ["deepobs-2c2d", "deepobs-mlp"])
def test_the_same_seed_the_same_parameters(name):
    def init(seed):
        torch.manual_seed(seed)
        return [p.detach().clone() for p in build_model(name, MNIST, 10).parameters()]

    a, b, c = init(3), init(3), init(4)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    weights_a, weights_c = a[::2], c[::2]  # (weight, bias) per layer
    assert all(not torch.equal(p, q) for p, q in zip(weights_a, weights_c, strict=True))


def test_a_short_run_lowers_the_loss(digits):
    config = TrainConfig(dataset="mnist-10k", model="deepobs-mlp", optimizer="sgd", lr=0.1,
                         iterations=20, batch_size=32, eval_every=20, log_every=1, device="cpu")
    result = train(config, data=digits)
    assert result.status == "completed" and result.steps == 20
    losses = [r["loss"] for r in result.train_log]
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(math.log(10), rel=0.05)  # small logits at the start
    assert sum(losses[-5:]) / 5 < losses[0]
    first, last = result.evals[0], result.evals[-1]
    assert first["step"] == 0 and last["step"] == 20
    assert last["train_loss"] < first["train_loss"] and last["test_loss"] < first["test_loss"]


@pytest.mark.parametrize("name, lrs", [("deepobs-mlp", (0.1, 0.03, 0.01)),
                                       ("deepobs-logreg", (0.5, 0.1, 0.03))])
def test_a_vectorized_group_equals_each_run_alone(digits, name, lrs):
    configs = [TrainConfig(model=name, optimizer="sgd(momentum=0.9)", lr=lr, seed=seed, batch_size=64,
                           iterations=6, eval_every=3, log_every=2, device="cpu")
               for seed, lr in zip((0, 1, 0), lrs, strict=True)]
    group = train_group(configs, data=digits)
    assert len(group) == len(configs)
    for got, config in zip(group, configs, strict=True):
        want = train(config, data=digits)
        assert (got.config, got.status, got.steps) == (want.config, want.status, want.steps) == (
            config, "completed", 6)
        assert len(got.evals) == len(want.evals) == 3
        for a, b in zip(got.evals, want.evals, strict=True):
            assert a["step"] == b["step"]
            for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
                assert a[k] == pytest.approx(b[k], rel=1e-5), (k, a["step"])
        assert [r["loss"] for r in got.train_log] == pytest.approx([r["loss"] for r in want.train_log],
                                                                    rel=1e-5)
        for (pname, p), q in zip(got.model.named_parameters(), want.model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=5e-6, msg=pname)
    assert not all(torch.equal(a, b) for a, b in zip(group[0].model.parameters(),
                                                     group[1].model.parameters(), strict=True))


def test_every_name_builds_through_build_model():
    for name in NAMES:
        torch.manual_seed(0)
        assert build_model(name, MNIST, 10)(torch.zeros(1, *MNIST)).shape == (1, 10)
