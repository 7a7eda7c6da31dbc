import json
import math

import pytest
import torch
import torch.nn.functional as F

from optimlab.data import Dataset, load_dataset, make_lls
from optimlab.errors import OptimlabError
from optimlab.models import build_model
from optimlab.training import CHECKPOINT, TrainConfig, evaluate, train


def small(data: Dataset, n_train: int, n_test: int = 200) -> Dataset:
    """A prefix of a data set: fast runs with real digits."""
    return Dataset(data.name, data.x_train[:n_train], data.y_train[:n_train],
                   data.x_test[:n_test], data.y_test[:n_test], data.task, data.classes)


@pytest.fixture(scope="module")
def digits(mnist10k):
    return small(mnist10k, 1000)


def no_time(rows):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def plain_loop(data, model_name, opt_cls, lr, batch_size, epochs, seed, **opt_kwargs):
    """The training loop written out by hand, as in the seeds, with the documented seeding."""
    torch.manual_seed(seed)
    model = build_model(model_name, data.input_shape, data.num_classes, data.task)
    opt = opt_cls(model.parameters(), lr=lr, **opt_kwargs)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        for idx in torch.randperm(data.num_train, generator=g).split(batch_size):
            opt.zero_grad()
            loss = (F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                    if data.task == "classification"
                    else 0.5 * F.mse_loss(model(data.x_train[idx]), data.y_train[idx]))
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return model, losses


@pytest.mark.parametrize("opt, cls, kw", [("sgd", torch.optim.SGD, {}),
                                          ("momentum", torch.optim.SGD, {"momentum": 0.9}),
                                          ("adam", torch.optim.Adam, {})])
def test_run_equals_the_hand_written_loop(digits, opt, cls, kw):
    lr = 0.05 if opt != "adam" else 1e-3
    cfg = TrainConfig(model="mlp", optimizer=opt, lr=lr, batch_size=64, epochs=2, log_every=1,
                      device="cpu")
    result = train(cfg, data=digits)
    model, losses = plain_loop(digits, "mlp", cls, lr, 64, 2, seed=0, **kw)
    assert result.steps == len(losses) == 2 * math.ceil(1000 / 64)
    assert [r["loss"] for r in result.train_log] == pytest.approx(losses, rel=1e-6, abs=1e-7)
    for a, b in zip(params(result.model), params(model), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    test_loss, test_acc = evaluate(model, digits.x_test, digits.y_test, "classification")
    assert result.final["test_loss"] == pytest.approx(test_loss, rel=1e-9)
    assert result.final["test_accuracy"] == test_acc


def test_same_seed_same_numbers_other_seed_other_numbers(digits):
    cfg = TrainConfig(model="logreg", optimizer="adam", lr=1e-3, batch_size=50, iterations=60,
                      eval_every=20, device="cpu")
    a, b = train(cfg, data=digits), train(cfg, data=digits)
    c = train(TrainConfig(**{**cfg.to_dict(), "seed": 1}), data=digits)
    assert no_time(a.evals) == no_time(b.evals)
    assert a.train_log == b.train_log
    assert no_time(a.evals) != no_time(c.evals)


def test_evaluation_rows_budget_and_cadence(digits):
    r = train(TrainConfig(model="logreg", lr=0.1, batch_size=100, iterations=45, eval_every=20,
                          log_every=7, device="cpu"), data=digits)
    assert r.status == "completed" and r.steps == 45
    assert [e["step"] for e in r.evals] == [0, 20, 40, 45]  # initial, every 20, and the end
    assert [t["step"] for t in r.train_log] == [7, 14, 21, 28, 35, 42]
    assert r.evals[1]["epoch"] == 2.0 and r.evals[-1]["epoch"] == 4.5
    assert all(0 <= e["test_accuracy"] <= 1 and e["lr"] == 0.1 for e in r.evals)
    assert r.evals[-1]["wall_time"] >= r.evals[1]["wall_time"] > 0
    # per epoch, with drop_last: 1000 // 300 = 3 steps an epoch
    r = train(TrainConfig(model="logreg", lr=0.1, batch_size=300, epochs=2, drop_last=True,
                          device="cpu"), data=digits)
    assert [e["step"] for e in r.evals] == [0, 3, 6]
    assert [e["epoch"] for e in r.evals] == [0.0, 1.0, 2.0]


def test_training_learns_the_digits(mnist10k):
    r = train(TrainConfig(model="mlp", optimizer="sgd", lr=0.1, batch_size=100, epochs=5,
                          device="cpu"), data=mnist10k)
    assert r.evals[0]["test_accuracy"] < 0.2
    assert r.final["test_accuracy"] > 0.9
    assert r.final["train_loss"] < r.evals[0]["train_loss"] / 5


def test_regression_reaches_the_known_solution():
    data = make_lls(n=200, p=10, noise=0.1, cond=10.0, seed=1)
    r = train(TrainConfig(dataset="lls", model="linear", optimizer="sgd", lr=0.5,
                          batch_size=200, iterations=400, device="cpu"), data=data)
    assert r.final["test_accuracy"] is None
    assert r.final["train_loss"] == pytest.approx(data.extras["optimal_loss"], rel=1e-4)
    theta = r.model.linear.weight.detach().squeeze(0)
    torch.testing.assert_close(theta, data.extras["theta_star"], rtol=1e-3, atol=1e-4)


def test_a_diverging_run_stops_at_the_first_non_finite_loss():
    data = make_lls(n=100, p=10, cond=10.0, seed=0)
    cfg = TrainConfig(dataset="lls", model="linear", optimizer="sgd", lr=60.0, batch_size=20,
                      epochs=50, log_every=1000, device="cpu")
    r = train(cfg, data=data)
    _, losses = plain_loop(data, "linear", torch.optim.SGD, 60.0, 20, 50, seed=0)
    first_bad = next(i + 1 for i, v in enumerate(losses) if not math.isfinite(v))
    assert r.status == "diverged"
    assert r.diverged_at == r.steps == first_bad
    assert r.evals and all(math.isfinite(e["test_loss"]) for e in r.evals)
    assert all(e["step"] < first_bad for e in r.evals)


def test_resume_after_a_crash_ends_with_the_uninterrupted_metrics(digits, tmp_path):
    cfg = TrainConfig(model="mlp", optimizer="adam", lr=1e-3, batch_size=64, epochs=4,
                      eval_every=25, log_every=5, device="cpu")
    whole = train(cfg, data=digits, out=tmp_path / "whole")

    class Crash(Exception):
        pass

    def crash_at_50(row):
        if row["step"] == 50:  # mid-way through epoch 4 (16 steps an epoch)
            raise Crash

    with pytest.raises(Crash):
        train(cfg, data=digits, out=tmp_path / "run", on_eval=crash_at_50)
    saved = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert saved["progress"]["step"] == 48 and saved["progress"]["epoch"] == 3
    resumed = train(cfg, data=digits, out=tmp_path / "run", resume=True)
    assert no_time(resumed.evals) == no_time(whole.evals)
    assert resumed.train_log == whole.train_log
    for a, b in zip(params(resumed.model), params(whole.model), strict=True):
        assert torch.equal(a, b)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["status"] == "completed" and no_time(on_disk["evals"]) == no_time(whole.evals)
    lines = (tmp_path / "run" / "evals.csv").read_text().splitlines()
    assert lines[0].startswith("step,epoch,batch_loss") and len(lines) == 1 + len(whole.evals)


def test_a_longer_budget_continues_a_finished_run_mid_epoch(digits, tmp_path):
    cfg = dict(model="logreg", optimizer="momentum", lr=0.05, batch_size=64, log_every=1,
               device="cpu")
    whole = train(TrainConfig(iterations=70, **cfg), data=digits)
    first = train(TrainConfig(iterations=30, **cfg), data=digits, out=tmp_path)
    assert first.steps == 30
    more = train(TrainConfig(iterations=70, **cfg), data=digits, out=tmp_path, resume=True)
    assert more.train_log == whole.train_log
    for a, b in zip(params(more.model), params(whole.model), strict=True):
        assert torch.equal(a, b)
    # resuming a finished run with the same budget changes nothing
    again = train(TrainConfig(iterations=70, **cfg), data=digits, out=tmp_path, resume=True)
    assert again.steps == 70 and no_time(again.evals) == no_time(more.evals)


def test_partial_files_of_a_killed_write_are_cleaned_up(digits, tmp_path):
    leftover = tmp_path / ".checkpoint.pt.abc123.partial"
    leftover.write_bytes(b"half a checkpoint")
    train(TrainConfig(model="logreg", lr=0.1, iterations=3, device="cpu"), data=digits, out=tmp_path,
          resume=True)
    assert not leftover.exists() and (tmp_path / CHECKPOINT).exists()


def test_the_checkpoint_loads_with_weights_only(digits, tmp_path):
    train(TrainConfig(model="logreg", lr=0.1, epochs=1, device="cpu"), data=digits, out=tmp_path)
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert set(ckpt) >= {"format", "config", "model", "optimizer", "rng", "progress"}
    assert ckpt["progress"]["status"] == "completed"


def test_resume_refuses_a_checkpoint_of_another_run(digits, tmp_path):
    train(TrainConfig(model="logreg", lr=0.1, epochs=1, device="cpu"), data=digits, out=tmp_path)
    with pytest.raises(OptimlabError, match="different run .*lr: checkpoint 0.1, now 0.2"):
        train(TrainConfig(model="logreg", lr=0.2, epochs=1, device="cpu"), data=digits,
              out=tmp_path, resume=True)


def test_resume_refuses_a_corrupt_checkpoint(digits, tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(OptimlabError, match="not a readable optimlab checkpoint"):
        train(TrainConfig(model="logreg", lr=0.1, epochs=1, device="cpu"), data=digits,
              out=tmp_path, resume=True)
    torch.save({"format": "something/else"}, tmp_path / CHECKPOINT)
    with pytest.raises(OptimlabError, match="not an optimlab checkpoint"):
        train(TrainConfig(model="logreg", lr=0.1, epochs=1, device="cpu"), data=digits,
              out=tmp_path, resume=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1"),
        ({"epochs": 1, "iterations": 5}, "not both"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"eval_every": -3}, "eval_every must be an integer >= 1"),
        ({"lr": 0}, "finite number > 0"),
        ({"optimizer": "adamm"}, "unknown optimizer"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(OptimlabError, match=message):
        TrainConfig(**kwargs)


def test_bad_runs_are_refused(digits, tmp_path):
    with pytest.raises(OptimlabError, match="larger than the training set"):
        train(TrainConfig(batch_size=1001, device="cpu"), data=digits)
    with pytest.raises(OptimlabError, match="unknown model"):
        train(TrainConfig(model="resnet", device="cpu"), data=digits)
    with pytest.raises(OptimlabError, match="unknown data set 'imagenet'"):
        train(TrainConfig(dataset="imagenet", device="cpu"))
    with pytest.raises(OptimlabError, match="resume needs the output folder"):
        train(TrainConfig(device="cpu"), data=digits, resume=True)
    with pytest.raises(OptimlabError, match="unknown device"):
        train(TrainConfig(device="gpu7"), data=digits)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OptimlabError, match="cannot write to the output folder"):
        train(TrainConfig(device="cpu"), data=digits, out=blocker / "out")


FASHION = pytest.mark.skipif(
    __import__("optimlab.data", fromlist=["locate"]).locate("fashion-mnist") is None,
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)",
)


@FASHION
def test_full_fashion_mnist_is_read_normalized_and_learnt():
    data = load_dataset("fashion-mnist")
    assert (data.num_train, data.num_test, data.input_shape) == (60000, 10000, (1, 28, 28))
    assert data.y_train.bincount().tolist() == [6000] * 10  # the published class balance
    assert abs(data.x_train.mean().item()) < 1e-3 and abs(data.x_train.std().item() - 1) < 1e-3
    r = train(TrainConfig(dataset="fashion-mnist", model="logreg", optimizer="adam", lr=1e-3,
                          batch_size=128, epochs=1, eval_train=False, device="cpu"), data=data)
    assert r.final["test_accuracy"] > 0.80  # about 0.84 after 7 epochs
