"""The vectorized engine: every slice of a group equals the independent ``train`` run of its config."""

import math

import pytest
import torch
from groupsaves import checkpoints_of, no_time

from optimlab.errors import OptimlabError
from optimlab.optimizers import OPTIMIZERS
from optimlab.study.vectorized import train_group, vectorizable_key
from optimlab.training import TrainConfig, train

RTOL = 1e-5  # every recorded metric, relative
# Final parameters: 98% of the elements of every tensor within rtol 1e-5 + atol 1e-7, and every
# element within rtol 1e-5 + atol 5e-6. The few others (at most 33 of 12730 on a CPU with AMX; 79 of
# 7840 with AVX-512, whose kernels sum in another order) have a first gradient near 0 made of
# cancelling terms, which RMSprop or Adagrad divide by sqrt(g^2) + eps, or sit at a weight near 0
# after momentum: the summation order of the batched kernels moves them by up to ~1e-3 lr.
PARAM_RTOL, PARAM_ATOL, MOST_ATOL, MOST = 1e-5, 5e-6, 1e-7, 0.98
METRICS = ("batch_loss", "train_loss", "train_accuracy", "test_loss", "test_accuracy")

# two learning rates a small MLP trains well with, per optimizer
LRS = {
    "sgd": (0.1, 0.03), "momentum": (0.05, 0.01), "nesterov": (0.05, 0.01),
    "adam": (1e-3, 3e-3), "adamw": (1e-3, 3e-3), "amsgrad": (1e-3, 3e-3), "nadam": (2e-3, 5e-3),
    "radam": (1e-3, 3e-3), "adagrad": (0.01, 0.05), "adadelta": (1.0, 0.5),
    "adamax": (2e-3, 5e-3), "rmsprop": (1e-3, 3e-4),
}


def grid(seeds=(0, 1), lrs=(0.1, 0.03), **settings) -> list[TrainConfig]:
    base = dict(model="mlp", model_options={"hidden": 16}, batch_size=64, epochs=2, eval_every=5,
                log_every=3, device="cpu")
    base.update(settings)
    if "iterations" in settings:
        del base["epochs"]
    return [TrainConfig(lr=lr, seed=seed, **base) for seed in seeds for lr in lrs]


def assert_same_run(got, want) -> float:
    """``got`` (a slice of a group) equals ``want`` (the independent run); returns the largest
    relative difference of a recorded metric."""
    assert (got.config, got.status, got.steps, got.diverged_at) == (
        want.config, want.status, want.steps, want.diverged_at)
    assert len(got.evals) == len(want.evals) and len(got.train_log) == len(want.train_log)
    worst = 0.0
    for a, b in zip(got.evals, want.evals, strict=True):
        assert a.keys() == b.keys()
        assert (a["step"], a["epoch"], a["lr"]) == (b["step"], b["epoch"], b["lr"])
        for k in (*METRICS, *(m for m in ("val_loss", "val_accuracy") if m in b)):
            assert (a[k] is None) == (b[k] is None), k
            if b[k] is not None:
                assert a[k] == pytest.approx(b[k], rel=RTOL), (k, a["step"])
                worst = max(worst, abs(a[k] - b[k]) / max(abs(b[k]), 1e-30))
    for a, b in zip(got.train_log, want.train_log, strict=True):
        assert (a["step"], a["epoch"], a["lr"]) == (b["step"], b["epoch"], b["lr"])
        assert a["loss"] == pytest.approx(b["loss"], rel=RTOL)
        worst = max(worst, abs(a["loss"] - b["loss"]) / abs(b["loss"]))
    return worst


def assert_same_params(got, want) -> None:
    for (name, a), b in zip(got.model.named_parameters(), want.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=PARAM_RTOL, atol=PARAM_ATOL, msg=name)
        close = torch.isclose(a, b, rtol=PARAM_RTOL, atol=MOST_ATOL)
        assert close.double().mean() >= MOST, (name, (~close).sum().item(), b.numel())


def check_group(configs, data, **kwargs):
    group = train_group(configs, data=data, **kwargs)
    assert len(group) == len(configs)
    for got, config in zip(group, configs, strict=True):
        want = train(config, data=data)
        assert_same_run(got, want)
        if want.status == "completed":
            assert_same_params(got, want)
        else:  # as train returns it: the parameters when the divergence was seen (huge, growing
            for a, b in zip(got.model.parameters(), want.model.parameters(), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=0)  # geometrically: 1e-4)
    return group


@pytest.mark.parametrize("optimizer", [name for name, entry in OPTIMIZERS.items() if entry.stackable])
def test_every_slice_equals_its_independent_run(digits, optimizer):
    group = check_group(grid(lrs=LRS[optimizer], optimizer=optimizer), digits)
    assert all(r.status == "completed" and r.steps == 20 for r in group)
    assert all(r.wall_time == group[0].wall_time > 0 for r in group)


@pytest.mark.parametrize("optimizer, lrs", [
    ("sgd(weight_decay=1e-3, momentum=0.9)", (0.05, 0.01)),
    ("sgd(momentum=0.9, dampening=0.5, nesterov=False)", (0.1, 0.03)),
    ("adamw(weight_decay=0.1)", (1e-3, 3e-3)),
    ("adam(weight_decay=0.01, amsgrad=True)", (1e-3, 3e-3)),
    ("nadam(weight_decay=0.01, decoupled_weight_decay=True)", (2e-3, 5e-3)),
    ("radam(weight_decay=0.01, decoupled_weight_decay=True)", (1e-3, 3e-3)),
    ("adagrad(lr_decay=0.05, weight_decay=1e-3)", (0.01, 0.05)),
    ("rmsprop(momentum=0.5, centered=True, weight_decay=1e-3)", (1e-3, 3e-4)),
])
def test_hyperparameters_that_touch_the_parameters(digits, optimizer, lrs):
    check_group(grid(lrs=lrs, optimizer=optimizer), digits)


def test_a_validation_set_is_evaluated_for_every_slice_as_for_its_run(digits):
    group = check_group(grid(lrs=LRS["adam"], optimizer="adam", validation=0.25), digits)
    assert all(r.steps == 16 for r in group)  # 450 training examples left: 8 batches of 64 an epoch
    assert all(row["val_accuracy"] is not None for r in group for row in r.evals)


def test_logreg_in_any_order_and_an_uneven_grid(digits):
    # seed 1 has three learning rates, seed 0 one: the grid is padded, the order kept
    configs = [TrainConfig(model="logreg", optimizer="momentum", lr=lr, seed=seed, batch_size=50,
                           iterations=25, eval_every=10, log_every=4, device="cpu")
               for seed, lr in [(1, 0.1), (0, 0.05), (1, 0.01), (1, 0.05)]]
    group = check_group(configs, digits)
    assert [(r.config.seed, r.config.lr) for r in group] == [(1, 0.1), (0, 0.05), (1, 0.01), (1, 0.05)]


@pytest.mark.parametrize("optimizer, lrs", [("sgd", (0.05, 0.2)), ("adam", (0.01, 0.03))])
def test_linear_regression_on_lls(lls, optimizer, lrs):
    configs = grid(lrs=lrs, optimizer=optimizer, dataset="lls", model="linear", model_options={},
                   batch_size=20, epochs=3, eval_every=None)
    group = check_group(configs, lls)
    assert all(r.final["test_accuracy"] is None and r.final["train_loss"] > 0 for r in group)


@pytest.mark.parametrize("optimizer", ["sgd", "sgd(weight_decay=1e-4)"])  # lr in grads / lerp
def test_a_diverging_slice_is_recorded_and_masked_without_disturbing_the_others(lls, optimizer):
    configs = grid(lrs=(0.05, 60.0, 0.2), optimizer=optimizer, dataset="lls", model="linear",
                   model_options={}, batch_size=20, epochs=20, eval_every=None, log_every=7)
    group = check_group(configs, lls)  # diverged slices: status, step and every row as train's
    status = [(r.config.lr, r.status) for r in group]
    assert [s for lr, s in status if lr == 60.0] == ["diverged", "diverged"], status
    assert all(s == "completed" for lr, s in status if lr != 60.0)
    for r in group:
        if r.status == "diverged":
            assert r.steps == r.diverged_at < 100 and all(e["step"] < r.diverged_at for e in r.evals)
            assert all(math.isfinite(e["test_loss"]) for e in r.evals)


def test_the_group_stops_when_every_run_diverged(lls):
    configs = grid(lrs=(60.0, 80.0), optimizer="sgd", dataset="lls", model="linear",
                   model_options={}, batch_size=20, epochs=50, eval_every=None, log_every=1)
    group = check_group(configs, lls)
    assert all(r.status == "diverged" for r in group)


def assert_identical(a, b, evals=True) -> None:
    """Two results of the same group: exactly the same numbers (wall times aside)."""
    for x, y in zip(a, b, strict=True):
        assert (x.status, x.steps, x.diverged_at) == (y.status, y.steps, y.diverged_at)
        assert x.train_log == y.train_log and (no_time(x.evals) == no_time(y.evals) or not evals)
        for p, q in zip(x.model.parameters(), y.model.parameters(), strict=True):
            assert torch.equal(p, q)


def test_resume_from_the_first_epoch_ends_as_the_uninterrupted_group(digits):
    configs = grid(optimizer="adam", lrs=(1e-3, 3e-3))
    whole, saved = checkpoints_of(configs, digits)
    assert len(saved) == 2  # end of epoch 1, and the end
    first, results = saved[0]
    assert first["format"] == "optimlab.group/1" and first["progress"]["epoch"] == 1
    assert first["params"]["1.weight"].shape == (2, 2, 16, 784)  # seeds x lrs x parameter
    assert [r.steps for r in results] == [10] * 4 and all(r.status == "running" for r in results)
    assert saved[1][0]["progress"]["runs"][0]["status"] == "completed"
    resumed = train_group(configs, data=digits, resume_from=first)
    assert_identical(resumed, whole)


@pytest.mark.parametrize("schedule", ["cosine(warmup=0.1)", "step(milestones=[0.5], gamma=0.1)"])
def test_a_schedule_multiplies_every_slices_lr_by_one_factor_and_each_slice_is_its_run(digits, schedule):
    configs = grid(lrs=LRS["adam"], optimizer="adam", schedule=schedule)
    group = check_group(configs, digits)
    lrs = [row["lr"] for row in group[1].train_log]
    assert len(set(lrs)) >= 2 and max(lrs) == pytest.approx(3e-3)  # scheduled, the base lr its peak
    whole, saved = checkpoints_of(configs, digits)
    assert_identical(train_group(configs, data=digits, resume_from=saved[0][0]), whole)  # mid-schedule


def test_resume_with_a_diverged_slice_and_a_longer_budget_mid_epoch(lls):
    settings = dict(lrs=(0.05, 60.0), optimizer="momentum", dataset="lls", model="linear",
                    model_options={}, batch_size=30, eval_every=None, log_every=2)
    whole = train_group(grid(iterations=70, **settings), data=lls)
    assert [r.status for r in whole] == ["completed", "diverged"] * 2
    _, saved = checkpoints_of(grid(iterations=31, **settings), lls)  # 4 steps an epoch
    assert saved[-1][0]["progress"]["step"] == 31
    resumed = train_group(grid(iterations=70, **settings), data=lls, resume_from=saved[-1][0])
    assert_identical(resumed, whole, evals=False)
    for x, y in zip(resumed, whole, strict=True):  # as train: the first budget's end was evaluated
        assert no_time([e for e in x.evals if e["step"] != 31]) == no_time(y.evals)


def test_on_eval_sees_every_row_with_its_run(digits):
    seen = []
    configs = grid(seeds=(3,), lrs=(0.1, 0.01), model="logreg", model_options={}, epochs=1)
    group = train_group(configs, data=digits, on_eval=lambda k, row: seen.append((k, row)))
    assert [k for k, _ in seen] == [0, 1] * 3  # steps 0, 5, 10
    assert [row for k, row in seen if k == 1] == group[1].evals


def test_configs_that_differ_in_more_than_lr_and_seed_are_refused(digits):
    with pytest.raises(OptimlabError, match="run 2 has batch_size=32 where run 0 has batch_size=64"):
        train_group(grid(seeds=(0,)) + grid(seeds=(1,), batch_size=32), data=digits)
    with pytest.raises(OptimlabError, match="differ only in lr, seed, dual_lr and penalty; run 2 has "
                                            "optimizer='adam'"):
        train_group(grid(seeds=(0,)) + grid(seeds=(1,), optimizer="adam"), data=digits)
    with pytest.raises(OptimlabError, match="at least one run"):
        train_group([], data=digits)


def test_a_checkpoint_of_another_group_or_of_one_run_is_refused(digits):
    configs = grid(seeds=(0,), model="logreg", model_options={}, epochs=1)
    _, saved = checkpoints_of(configs, digits)
    other = grid(seeds=(0,), lrs=(0.1, 0.05), model="logreg", model_options={}, epochs=1)
    with pytest.raises(OptimlabError, match=r"different group \(run 1: lr: checkpoint 0.03, now 0.05"):
        train_group(other, data=digits, resume_from=saved[0][0])
    with pytest.raises(OptimlabError, match="holds 2 runs, this group has 1"):
        train_group(configs[:1], data=digits, resume_from=saved[0][0])
    one_run = []
    train(configs[0], data=digits, on_checkpoint=lambda ckpt, _: one_run.append(ckpt))
    with pytest.raises(OptimlabError, match="not a checkpoint of a group of runs .*optimlab.run/1"):
        train_group(configs, data=digits, resume_from=one_run[0])


def test_vectorizable_key():
    a, b = grid(seeds=(0, 1), lrs=(0.1, 0.2))[:2]
    assert vectorizable_key(a) == vectorizable_key(b) and hash(vectorizable_key(a))
    assert vectorizable_key(a) != vectorizable_key(grid(batch_size=32)[0])
    assert vectorizable_key(a) != vectorizable_key(grid(model_options={"hidden": 8})[0])
