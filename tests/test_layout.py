"""``memory_format``: a convolutional run in channels-last equals its contiguous run up to the kernels'
summation order; ``auto`` takes channels-last only where a probe measures it faster, once per model
and setting, and a study measures once for all its processes; a run resumes in the layout it began
in, bit for bit; bad values are refused."""

import pytest
import torch

from optimlab.data import Dataset
from optimlab.engine import layout
from optimlab.engine.precision import Precision
from optimlab.errors import OptimlabError
from optimlab.models import CNN
from optimlab.study import parse_study
from optimlab.training import CHECKPOINT, TrainConfig, train

# channels-last against contiguous, seed 004's CNN, 12 Adam steps: measured 4e-5 relative (batch loss)
RTOL = 1e-3


@pytest.fixture(scope="module")
def images(mnist10k):
    return Dataset(mnist10k.name, mnist10k.x_train[:192], mnist10k.y_train[:192], mnist10k.x_test[:64],
                   mnist10k.y_test[:64], mnist10k.task, mnist10k.classes)


def cnn(memory_format: str, **kw) -> TrainConfig:
    return TrainConfig(**{"model": "cnn", "optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": 2,
                          "log_every": 1, "device": "cpu", "memory_format": memory_format, **kw})


def test_a_channels_last_run_equals_its_contiguous_run(images):
    plain, last = train(cnn("contiguous"), data=images), train(cnn("channels_last"), data=images)
    assert len(last.train_log) == len(plain.train_log) == 12
    for a, b in zip(last.train_log, plain.train_log, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=RTOL)
    assert last.final["test_loss"] == pytest.approx(plain.final["test_loss"], rel=RTOL)
    conv = last.model.features[3].weight  # (128, 64, 3, 3); the first conv's one channel has one layout
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert set(last.model.state_dict()) == set(plain.model.state_dict())


@pytest.mark.parametrize("began, asked", [("contiguous", "channels_last"), ("channels_last", "auto")])
def test_a_run_resumes_in_the_layout_it_began_in_bit_for_bit(images, tmp_path, began, asked):
    whole = train(cnn(began), data=images)
    train(cnn(began, epochs=1), data=images, out=tmp_path)
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["memory_format"] == began
    resumed = train(cnn(asked), data=images, out=tmp_path, resume=True)  # a layout may not change a run
    def timeless(rows):
        return [{k: v for k, v in row.items() if k != "wall_time"} for row in rows]

    assert resumed.train_log == whole.train_log and timeless(resumed.evals) == timeless(whole.evals)


@pytest.mark.parametrize("plain_s, last_s, chosen", [(0.12, 0.10, "channels_last"),
                                                      (0.12, 0.115, "contiguous")])
def test_auto_takes_channels_last_only_where_measured_faster(monkeypatch, plain_s, last_s, chosen):
    calls = []

    def timed(model, shape, batch, device, precision, memory_format):
        calls.append(memory_format)
        return last_s if memory_format == torch.channels_last else plain_s

    monkeypatch.setattr(layout, "_step_time", timed)
    monkeypatch.setattr(layout, "_CHOSEN", {})
    args = (CNN((1, 28, 28), 10), (1, 28, 28), 32, torch.device("cpu"), Precision("fp32", "cpu"))
    assert layout.choose_layout("auto", *args) == chosen
    assert layout.choose_layout("auto", *args) == chosen
    assert len(calls) == 2  # measured once: both layouts, one time each
    assert layout.choose_layout("contiguous", *args) == "contiguous"  # a setting is taken as it is


def test_auto_measures_nothing_for_a_model_without_convolutions(monkeypatch):
    monkeypatch.setattr(layout, "_step_time", lambda *a: pytest.fail("measured"))
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    assert layout.choose_layout("auto", mlp, (1, 28, 28), 32, torch.device("cpu"),
                                Precision("fp32", "cpu")) == "contiguous"


def test_the_real_probe_times_both_layouts():
    t = layout._step_time(CNN((1, 28, 28), 10), (1, 28, 28), 8, torch.device("cpu"),
                          Precision("fp32", "cpu"), torch.channels_last)
    assert 0 < t < 5


def test_bad_memory_formats_are_refused_and_a_study_is_the_same_in_any_layout():
    with pytest.raises(OptimlabError, match="valid: auto, contiguous, channels_last"):
        TrainConfig(memory_format="nhwc")
    study = ('name = "s"\ndataset = "mnist-10k"\nmodel = "cnn"\noptimizers = ["adam"]\n'
             'learning_rates = [1e-3]\nseeds = [0]\n')
    last = parse_study(study + 'memory_format = "channels_last"\n')
    assert last.definition() == parse_study(study).definition()
    assert {c.memory_format for c in last.configs()} == {"channels_last"}


def test_a_study_measures_once_and_gives_every_process_the_layout_it_chose(monkeypatch):
    import json

    from optimlab.study.runner import _preflight
    from optimlab.study.units import plan_units

    monkeypatch.setattr(layout, "_CHOSEN", {})
    monkeypatch.setattr(layout, "_step_time", lambda *a: 0.05 if a[-1] == torch.channels_last else 0.1)
    spec = parse_study('name = "s"\ndataset = "mnist-10k"\nmodel = "cnn"\noptimizers = ["adam"]\n'
                       'learning_rates = [1e-3, 1e-2]\nseeds = [0]\nbatch_size = 16\n')
    layouts = _preflight(spec.configs(), None, "processes", [(None, None)] * 2)
    assert list(layouts.values()) == ["channels_last"]
    runs = [{"id": i + 1, "config": json.dumps(c.to_dict())} for i, c in enumerate(spec.configs())]
    units = plan_units(runs, groups=False, layouts=layouts)
    assert [u.configs[0].memory_format for u in units] == ["channels_last"] * 2  # what a worker receives
    assert [u.configs[0].memory_format for u in plan_units(runs, groups=False)] == ["auto"] * 2
