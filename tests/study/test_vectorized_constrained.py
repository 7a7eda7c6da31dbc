"""The vectorized engine on constrained runs: every slice of a group (runs that differ in lr, seed,
dual_lr and penalty) equals the independent ``train`` run of its config, records included."""

import math

import pytest
import torch
from groupsaves import checkpoints_of, no_time

from optimlab.constrained.named import parse_constraint
from optimlab.errors import OptimlabError
from optimlab.study.units import plan_units
from optimlab.study.vectorized import group_refusal, train_group, vectorizable_key
from optimlab.training import TrainConfig, train

RTOL, ATOL = 1e-5, 1e-6  # recorded metrics (violations and multipliers cross 0: an absolute floor)
# Final parameters: every element within rtol 1e-5 + atol 1e-6 but for a few (at most 1 in 1000, up
# to 5e-6): as in test_vectorized.py, Adam divides a first gradient near 0 made of cancelling terms
# (pixels constant over the batch) by sqrt(g^2) + eps, and the batched kernels sum in another order.
PARAM_RTOL, PARAM_ATOL, FEW_ATOL, MOST = 1e-5, 1e-6, 5e-6, 0.999


def grid(seeds=(0, 1), lrs=(1e-2, 3e-3), dual_lrs=(0.05, 0.5), penalties=(None,), **settings):
    base = dict(model="mlp", model_options={"hidden": 16}, optimizer="adam", batch_size=64, epochs=2,
                eval_every=5, log_every=3, constraints=["l2norm<=1"], device="cpu")
    base.update(settings)
    if "iterations" in settings:
        del base["epochs"]
    return [TrainConfig(lr=lr, seed=seed, dual_lr=dual_lr, penalty=c, **base)
            for seed in seeds for lr in lrs for dual_lr in dual_lrs for c in penalties]


def assert_same_rows(got: list[dict], want: list[dict], bounds: dict[str, float]) -> None:
    """``bounds``: violation column -> the constraint's bound. A violation g = measure - bound is a
    float32 sum over all parameters less the bound: equal to RTOL relative to the measure."""
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for k, v in b.items():
            if k == "wall_time":
                continue
            if isinstance(v, float) and k not in ("epoch", "lr"):
                floor = RTOL * (abs(v) + abs(bounds[k])) if k in bounds else ATOL
                assert a[k] == pytest.approx(v, rel=RTOL, abs=floor), (k, b["step"])
            else:
                assert a[k] == v, (k, b["step"])


def check_group(configs, data, **kwargs):
    group = train_group(configs, data=data, **kwargs)
    assert len(group) == len(configs)
    for got, config in zip(group, configs, strict=True):
        want = train(config, data=data)
        assert (got.config, got.status, got.steps, got.diverged_at) == (
            want.config, want.status, want.steps, want.diverged_at)
        named = [parse_constraint(c) for c in config.constraints]
        bounds = {f"violation_{c.key}": c.bound for c in named}
        assert_same_rows(got.evals, want.evals, bounds)
        assert_same_rows(got.train_log, want.train_log, bounds)
        if want.status == "completed":
            for (name, a), b in zip(got.model.named_parameters(), want.model.parameters(), strict=True):
                torch.testing.assert_close(a, b, rtol=PARAM_RTOL, atol=FEW_ATOL, msg=name)
                close = torch.isclose(a, b, rtol=PARAM_RTOL, atol=PARAM_ATOL)
                assert close.double().mean() >= MOST, (name, (~close).sum().item(), b.numel())
    return group


def test_lagrangian_with_sgd_ascent_two_constraints(digits):
    configs = grid(constraints=["l2norm<=1", "l1norm>=40"])
    group = check_group(configs, digits)
    last = group[-1].train_log[-1]
    assert {"violation_l2norm_le_1", "multiplier_l2norm_le_1", "violation_l1norm_ge_40",
            "multiplier_l1norm_ge_40", "accuracy"} <= last.keys()
    # the dual lr matters: the runs differ in their multipliers
    finals = {r.config.dual_lr: r.final["multiplier_l2norm_le_1"] for r in group if r.config.seed == 0}
    assert finals[0.5] > finals[0.05] > 0


def test_lagrangian_with_adam_ascent(digits):
    check_group(grid(model="logreg", model_options={}, optimizer="sgd(momentum=0.9)", lrs=(0.05, 0.01),
                     dual_optimizer="adam", dual_lrs=(1e-2, 1e-1)), digits)


def test_augmented_lagrangian_with_an_equality(digits):
    configs = grid(formulation="augmented_lagrangian", penalties=(1.0, 10.0), dual_lrs=(0.1, 1.0),
                   lrs=(3e-3,), constraints=["l2norm<=1", "l1norm==300"])
    group = check_group(configs, digits)
    assert any(r.final["multiplier_l1norm_eq_300"] < 0 for r in group)  # (224 at the start) free


def test_quadratic_penalty(digits):
    configs = grid(formulation="quadratic_penalty", penalties=(10.0, 30.0), dual_lrs=(1e-3,))
    group = check_group(configs, digits)
    assert all("multiplier_l2norm_le_1" not in r.final and "accuracy" in r.train_log[0] for r in group)


@pytest.mark.parametrize("formulation, dual, penalties", [
    ("lagrangian", "adam", (None,)), ("augmented_lagrangian", "sgd", (1.0, 10.0))])
def test_resume_from_the_first_epoch_ends_as_the_uninterrupted_group(digits, formulation, dual, penalties):
    configs = grid(model="logreg", model_options={}, formulation=formulation, dual_optimizer=dual,
                   penalties=penalties, lrs=(1e-2,))
    whole, saved = checkpoints_of(configs, digits)
    first = saved[0][0]
    assert first["format"] == "optimlab.group/1" and first["progress"]["epoch"] == 1
    assert first["constrained"]["multipliers"].shape == (2, 2 * len(penalties), 1)
    assert (first["constrained"]["optimizer"]["state"] != {}) == (dual == "adam")
    resumed = train_group(configs, data=digits, resume_from=first)
    for x, y in zip(resumed, whole, strict=True):
        assert x.train_log == y.train_log and no_time(x.evals) == no_time(y.evals)
        for p, q in zip(x.model.parameters(), y.model.parameters(), strict=True):
            assert torch.equal(p, q)


def test_a_diverging_slice_is_masked_with_its_multiplier(lls):
    configs = grid(lrs=(0.05, 60.0, 0.2), dual_lrs=(0.01, 0.1), dataset="lls", model="linear",
                   model_options={}, optimizer="sgd", batch_size=20, epochs=20, eval_every=None,
                   log_every=7, constraints=["l2norm<=2"])
    group = check_group(configs, lls)
    status = [(r.config.lr, r.status) for r in group]
    assert [s for lr, s in status if lr == 60.0] == ["diverged"] * 4, status
    assert all(s == "completed" for lr, s in status if lr != 60.0)
    for r in group:
        assert all(math.isfinite(e["multiplier_l2norm_le_2"]) for e in r.evals)
    # and resumed after the divergence, from the last checkpoint: the same
    whole, saved = checkpoints_of(configs, lls)
    mid = saved[len(saved) // 2][0]
    assert mid["constrained"]["multipliers"][:, 2:4].abs().sum() == 0  # the masked slices (lr 60)
    resumed = train_group(configs, data=lls, resume_from=mid)
    for x, y in zip(resumed, whole, strict=True):
        assert (x.status, x.diverged_at, x.train_log) == (y.status, y.diverged_at, y.train_log)


def test_grouping_of_constrained_runs(digits):
    a, b, c = grid(seeds=(0,), lrs=(1e-2,), dual_lrs=(0.05, 0.5), penalties=(1.0, 10.0),
                   formulation="augmented_lagrangian")[:3]
    assert vectorizable_key(a) == vectorizable_key(b) == vectorizable_key(c)
    other = grid(seeds=(0,), lrs=(1e-2,), constraints=["l2norm<=2"])[0]
    assert vectorizable_key(other) != vectorizable_key(grid(seeds=(0,), lrs=(1e-2,))[0])
    assert group_refusal(a, digits) is None
    runs = [{"id": i, "config": cfg.to_dict()} for i, cfg in enumerate(grid() + [other])]
    assert [u.kind for u in plan_units(runs, groups=True, stack_always=True)] == ["group", "run"]
    with pytest.raises(OptimlabError, match="differ only in lr, seed, dual_lr and penalty; run 1 has "
                                            "constraints=\\['l2norm<=2'\\]"):
        train_group([grid(seeds=(0,), lrs=(1e-2,))[0], other], data=digits)
    with pytest.raises(OptimlabError, match="run 1 has formulation='augmented_lagrangian'"):
        train_group([grid(seeds=(0,), lrs=(1e-2,))[0], a], data=digits)


def test_a_measure_without_a_stacked_twin_trains_run_by_run(digits, monkeypatch):
    from optimlab.constrained import named

    monkeypatch.setitem(named.MEASURES, "maxabs",
                        lambda model: max(p.abs().max() for p in model.parameters()))
    configs = grid(seeds=(0,), lrs=(1e-2, 3e-3), dual_lrs=(0.05,), constraints=["maxabs<=1"])
    assert group_refusal(configs[0], digits) == "constraint 'maxabs<=1' has no stacked measure"
    runs = [{"id": i, "config": cfg.to_dict()} for i, cfg in enumerate(configs)]
    assert [u.kind for u in plan_units(runs, groups=True)] == ["run", "run"]
    with pytest.raises(OptimlabError, match="constraint 'maxabs<=1' is not trained in vectorized groups"):
        train_group(configs, data=digits)
