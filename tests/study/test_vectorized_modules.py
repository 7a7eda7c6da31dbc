"""Models with buffers in the vectorized engine: BatchNorm stacked exactly, and what is refused."""

import re

import pytest
import torch
import torch.nn.functional as F
from groupsaves import checkpoints_of, no_time
from torch import nn

import optimlab.engine.stacking as stacking
import optimlab.models
from optimlab.data import Dataset, epoch_batches
from optimlab.engine.group import train_group
from optimlab.engine.stacking import stacking_refusal
from optimlab.models import MLP, ModelEntry
from optimlab.training import TrainConfig, train

# not zero: the batched kernels under vmap sum in another order than the independent run's
ATOL, RTOL = 1e-5, 1e-4
SEEDS, LRS = (0, 1), {"sgd(momentum=0.9)": (0.05, 0.02), "adam": (3e-3, 1e-3)}
BATCH, STEPS_PER_EPOCH = 32, 8


class BNCNN(nn.Module):
    """Conv -> BatchNorm2d -> ReLU -> MaxPool -> Linear -> BatchNorm1d -> ReLU -> Linear; ``bias``: of
    the layers before a BatchNorm (their gradient is rounding noise: Adam is refused with them)."""

    def __init__(self, input_shape, num_classes, stats: bool = True, bias: bool = False):
        super().__init__()
        c, h, w = input_shape
        self.net = nn.Sequential(
            nn.Conv2d(c, 4, 3, padding=1, bias=bias), nn.BatchNorm2d(4, track_running_stats=stats),
            nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * (h // 2) * (w // 2), 16, bias=bias),
            nn.BatchNorm1d(16, track_running_stats=stats), nn.ReLU(), nn.Linear(16, num_classes))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def small(mnist10k):
    """256 training (8 batches of 32) and 100 test digits, averaged down to 8x8."""
    d = mnist10k
    return Dataset(d.name, F.adaptive_avg_pool2d(d.x_train[:256], 8), d.y_train[:256],
                   F.adaptive_avg_pool2d(d.x_test[:100], 8), d.y_test[:100], d.task, d.classes)


@pytest.fixture
def bncnn(monkeypatch):
    monkeypatch.setitem(optimlab.models.MODELS, "bncnn", ModelEntry("bncnn", BNCNN, "classification"))


def configs(optimizer, stats=True, bias=False, **budget):
    budget = budget or {"epochs": 2}
    return [TrainConfig(model="bncnn", model_options={"stats": stats, "bias": bias}, optimizer=optimizer,
                        lr=lr, seed=seed, batch_size=BATCH, eval_every=5, log_every=1, device="cpu",
                        **budget)
            for seed in SEEDS for lr in LRS[optimizer]]


def plain_loop(config, data):
    """The run by hand: torch.optim over the same batches; (model, per-step losses, eval-mode test
    loss and accuracy)."""
    torch.manual_seed(config.seed)
    model = BNCNN(data.input_shape, data.num_classes, **config.model_options)
    params = model.parameters()
    opt = torch.optim.SGD(params, lr=config.lr, momentum=0.9) if config.optimizer.startswith("sgd") \
        else torch.optim.Adam(params, lr=config.lr)
    order = torch.Generator().manual_seed(config.seed)
    losses = []
    for _ in range(config.epochs):
        for idx in epoch_batches(data.num_train, config.batch_size, order):
            opt.zero_grad()
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        out = model(data.x_test)
        test = F.cross_entropy(out, data.y_test).item(), (out.argmax(1) == data.y_test).double().mean().item()
    return model, losses, test


def assert_same_state(got: nn.Module, want: nn.Module, exact: bool = False) -> None:
    """Parameters and buffers (running statistics, num_batches_tracked) of two models."""
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        if exact or a[name].dtype == torch.int64:  # the counters, always exact
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], atol=ATOL, rtol=RTOL, msg=name)


@pytest.mark.parametrize("optimizer, stats, bias", [("sgd(momentum=0.9)", True, True), ("adam", True, False),
                                                    ("adam", False, False)])
def test_batchnorm_slices_equal_their_independent_runs(small, bncnn, monkeypatch, optimizer, stats, bias):
    assert stacking_refusal(BNCNN(small.input_shape, 10, stats, bias), small.input_shape, optimizer) is None
    # chunks of a few test samples for the group's evaluation (train's: one of all 100): eval-mode
    # BatchNorm is per sample with running statistics; without them, the group keeps train's chunks
    monkeypatch.setattr(stacking, "EVAL_FLOATS", 4 * 4 * 8 * 8 * 3)
    runs = configs(optimizer, stats, bias)
    group = train_group(runs, data=small)
    for got, config in zip(group, runs, strict=True):
        want = train(config, data=small)
        model, losses, (test_loss, test_accuracy) = plain_loop(config, small)
        assert got.status == want.status == "completed" and got.steps == 2 * STEPS_PER_EPOCH
        assert_same_state(got.model, want.model)
        assert_same_state(got.model, model)
        if stats:
            assert got.model.state_dict()["net.1.num_batches_tracked"].item() == 2 * STEPS_PER_EPOCH
        step_losses = torch.tensor([row["loss"] for row in got.train_log])
        torch.testing.assert_close(step_losses, torch.tensor(losses), atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(step_losses, torch.tensor([r["loss"] for r in want.train_log]),
                                   atol=ATOL, rtol=RTOL)
        assert [e["step"] for e in got.evals] == [e["step"] for e in want.evals] == [0, 5, 10, 15, 16]
        for a, b in zip(got.evals, want.evals, strict=True):  # eval mode, as train evaluates
            for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "batch_loss"):
                assert (a[k] is None) == (b[k] is None), k
                if b[k] is not None:
                    torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=RTOL, msg=k)
        torch.testing.assert_close(got.final["test_loss"], test_loss, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(got.final["test_accuracy"], test_accuracy, atol=ATOL, rtol=RTOL)


def assert_identical(a, b, skip_step=None) -> None:
    for x, y in zip(a, b, strict=True):
        assert (x.status, x.steps) == (y.status, y.steps) and x.train_log == y.train_log
        assert no_time([e for e in x.evals if e["step"] != skip_step]) == no_time(y.evals)
        assert_same_state(x.model, y.model, exact=True)


def test_batchnorm_group_resumes_to_the_uninterrupted_numbers(small, bncnn):
    whole, saved = checkpoints_of(configs("sgd(momentum=0.9)"), small)
    first = saved[0][0]  # end of epoch 1: the running statistics of 8 steps
    assert first["progress"]["step"] == STEPS_PER_EPOCH
    assert first["buffers"]["net.1.running_var"].shape == (2, 2, 4)
    assert (first["buffers"]["net.1.num_batches_tracked"] == STEPS_PER_EPOCH).all()
    assert not torch.equal(first["buffers"]["net.6.running_mean"], torch.zeros(2, 2, 16))
    assert_identical(train_group(configs("sgd(momentum=0.9)"), data=small, resume_from=first), whole)
    # mid-epoch: a budget of 11 steps, continued to 16 (train evaluated the first budget's end)
    _, saved = checkpoints_of(configs("sgd(momentum=0.9)", iterations=11), small)
    assert saved[-1][0]["progress"]["step"] == 11
    resumed = train_group(configs("sgd(momentum=0.9)", iterations=16), data=small,
                          resume_from=saved[-1][0])
    assert_identical(resumed, whole, skip_step=11)


class ItemScale(nn.Module):
    """Scales by a Python number read from the activation: vmap refuses ``.item()``."""

    def forward(self, x):
        return x / x.abs().max().item()


class Counter(nn.Module):
    """Replaces its buffer instead of updating it in place: functional_call loses the update."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls = self.calls + 1
        return x


def head(*modules):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), *modules, nn.Linear(8, 3))


@pytest.mark.parametrize("model", [
    MLP((1, 8, 8), 10, hidden=8), BNCNN((1, 8, 8), 10), BNCNN((1, 8, 8), 10, stats=False),
    head(nn.Dropout(0.0)), head(nn.LayerNorm(8)),
], ids=["mlp", "bncnn", "bn-without-stats", "dropout-p0", "layernorm"])
def test_stacking_refusal_accepts(model):
    rng = torch.get_rng_state()
    assert stacking_refusal(model, (1, 8, 8)) is None
    assert torch.equal(torch.get_rng_state(), rng)  # the trial draws from its own stream


@pytest.mark.parametrize("model, reason", [
    (head(nn.Dropout(0.5)), r"^the model has Dropout \(module 2\): its random numbers in training "
                            r"cannot reproduce the independent runs' under vmap; trained run by run$"),
    (head(nn.AlphaDropout(0.1)), r"AlphaDropout .*random numbers.*trained run by run$"),
    (head(nn.RReLU()), r"RReLU .*random numbers.*trained run by run$"),
    (head(nn.BatchNorm1d(8, momentum=None)), r"BatchNorm1d \(module 2\) with momentum=None"),
    (head(ItemScale()), r"^vmap cannot apply the model \(RuntimeError: vmap: It looks like you're "
                        r"calling \.item\(\) on a Tensor\..*\); trained run by run$"),
    (head(Counter()), r"^a stacked copy does not reproduce its own run \(buffer 2\.calls\); trained"),
], ids=["dropout", "alphadropout", "rrelu", "bn-momentum-none", "item", "replaced-buffer"])
def test_stacking_refusal_says_why(model, reason):
    got = stacking_refusal(model, (1, 8, 8))
    assert got is not None and "\n" not in got
    assert re.search(reason, got), got


def test_a_bias_before_batchnorm_is_refused_with_adam_not_with_sgd():
    model = BNCNN((1, 8, 8), 10, bias=True)
    for optimizer in ("adam", "rmsprop(momentum=0.5)", None):
        got = stacking_refusal(model, (1, 8, 8), optimizer)
        assert got is not None and got.startswith("the gradient of net.0.bias is rounding noise only"), got
        assert got.endswith("(give the layer bias=False); trained run by run")
    assert "adam scales it" in stacking_refusal(model, (1, 8, 8), "adam")
    assert stacking_refusal(model, (1, 8, 8), "sgd(momentum=0.9)") is None
    assert stacking_refusal(model, (1, 8, 8), "nesterov") is None
