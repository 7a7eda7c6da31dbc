"""Whether a group is stacked is measured: a dense network's group is measured faster stacked, and so
stacked; seed 004's CNN on the CPU is measured slower stacked and trained one by one (the reason
gives both times); the measurement is made once per group and leaves the random state alone,
``stack = "always"`` skips it, and a resumed study keeps what its runs were trained with."""

import pytest
import torch

from optimlab.data import Dataset
from optimlab.engine import payoff
from optimlab.engine.group import vectorizable_key
from optimlab.study.units import plan_units
from optimlab.training import TrainConfig


@pytest.fixture(scope="module")
def images(mnist10k):
    return Dataset(mnist10k.name, mnist10k.x_train[:512], mnist10k.y_train[:512], mnist10k.x_test[:64],
                   mnist10k.y_test[:64], mnist10k.task, mnist10k.classes)


def group(model: str, n: int = 6) -> list[TrainConfig]:
    return [TrainConfig(model=model, optimizer="adam", lr=lr, seed=seed, batch_size=128, epochs=1,
                        device="cpu", memory_format="contiguous")
            for lr in (1e-3, 3e-3, 1e-2)[: n // 2] for seed in (0, 1)]


def test_a_dense_group_is_measured_faster_stacked(images):
    configs = group("mlp")
    assert payoff.slower_stacked(configs, images) is None
    (k, stacked, alone), = [v for key, v in payoff._MEASURED.items()
                            if key[0] == vectorizable_key(configs[0])]
    assert k == 6 and 0 < stacked < alone  # 6 Adam steps of the MLP at once against 6 one after another


def test_a_cnn_group_on_the_cpu_is_measured_slower_stacked_and_the_reason_says_by_how_much(images):
    why = payoff.slower_stacked(group("cnn"), images)
    assert why is not None and why.startswith("stacked, a step of 2 of these runs was measured ")  # slow
    ratio = float(why.split("measured ")[1].split("x slower")[0])
    assert ratio > payoff.MARGIN
    assert 'stack = "always" stacks them anyway' in why


def test_a_group_is_measured_once_and_the_random_state_is_left_alone(images, monkeypatch):
    calls = []
    real = payoff._step_times
    monkeypatch.setattr(payoff, "_step_times", lambda *a: calls.append(1) or real(*a))
    configs = group("logreg", 4)
    state = torch.random.get_rng_state()
    first = payoff.slower_stacked(configs, images)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert payoff.slower_stacked(configs, images) == first and len(calls) == 1


def test_a_study_plans_by_the_measurement_unless_told_to_stack_always(images, monkeypatch):
    monkeypatch.setattr("optimlab.study.units.unit_data", lambda config, data_dir=None: images)
    runs = [{"id": i, "config": c.to_dict()} for i, c in enumerate(group("cnn"), 1)]
    measured = plan_units(runs, groups=True)
    assert [u.kind for u in measured] == ["run"] * 6
    assert all(u.engine.startswith("one by one: stacked, a step of 2") for u in measured)
    monkeypatch.setattr(payoff, "_step_times", lambda *a: pytest.fail("measured under always"))
    (always,) = plan_units(runs, groups=True, stack_always=True)
    assert always.kind == "group" and always.run_ids == [1, 2, 3, 4, 5, 6]
    dense = [{"id": i, "config": c.to_dict()} for i, c in enumerate(group("mlp"), 1)]
    monkeypatch.undo()
    monkeypatch.setattr("optimlab.study.units.unit_data", lambda config, data_dir=None: images)
    (stacked,) = plan_units(dense, groups=True)
    assert stacked.engine == "vectorized: a group of 6 runs"


def test_a_study_resumed_goes_on_as_its_runs_were_measured_before(images, monkeypatch):
    monkeypatch.setattr("optimlab.study.units.unit_data", lambda config, data_dir=None: images)
    monkeypatch.setattr(payoff, "_step_times", lambda *a: pytest.fail("measured again"))
    cnn = [{"id": i, "config": c.to_dict(), "engine": "vectorized: a group of 6 runs" if i == 1 else None}
           for i, c in enumerate(group("cnn"), 1)]
    (stacked,) = plan_units(cnn, groups=True)  # its checkpoint is a group's: it continues as one
    assert stacked.kind == "group" and stacked.run_ids == [1, 2, 3, 4, 5, 6]
    note = "one by one: stacked, a step of 6 of these runs was measured 1.2x slower than one by one (x)"
    mlp = [{"id": i, "config": c.to_dict(), "engine": note} for i, c in enumerate(group("mlp"), 1)]
    alone = plan_units(mlp, groups=True)
    assert [u.kind for u in alone] == ["run"] * 6 and {u.engine for u in alone} == {note}
