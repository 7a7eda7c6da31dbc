"""Mixed precision (``precision = "bf16" | "fp16"``): a run is torch.amp's loop written out by hand,
finite and close to its fp32 run (not bit-exact: its own rounding), resumable exactly (fp16's scaler
state in the checkpoint); a vectorized group stacks bf16 runs, each slice close to its own run, and
trains fp16 runs one by one; bad settings are refused with the valid ones named."""

import math

import pytest
import torch
import torch.nn.functional as F

from optimlab.data import Dataset
from optimlab.engine.group import group_refusal, train_group
from optimlab.errors import OptimlabError
from optimlab.models import build_model
from optimlab.study import parse_study
from optimlab.training import CHECKPOINT, TrainConfig, train

# a mixed-precision run's final test loss against its fp32 run's (3 epochs of an MLP on 1,000
# digits; measured: bf16 3e-3, fp16 1e-3 relative)
CLOSE_RTOL = 3e-2
# a bf16 slice of a group against its own bf16 run: the same rounding but for the batched kernels'
# summation order (measured 4e-3 relative after 48 Adam steps)
SLICE_RTOL = 2e-2


@pytest.fixture(scope="module")
def digits(mnist10k):
    return Dataset(mnist10k.name, mnist10k.x_train[:1000], mnist10k.y_train[:1000],
                   mnist10k.x_test[:300], mnist10k.y_test[:300], mnist10k.task, mnist10k.classes)


def config(precision: str, **kw) -> TrainConfig:
    return TrainConfig(**{"model": "mlp", "optimizer": "adam", "lr": 1e-3, "batch_size": 64, "epochs": 3,
                          "log_every": 1, "device": "cpu", "precision": precision, **kw})


def amp_loop(data: Dataset, dtype: torch.dtype, lr: float, batch_size: int, epochs: int, seed: int):
    """torch.amp's training loop as its documentation writes it: autocast forward, the loss in fp32,
    a GradScaler for fp16; the seeding of optimlab's runs."""
    torch.manual_seed(seed)
    model = build_model("mlp", data.input_shape, data.num_classes, data.task)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu") if dtype == torch.float16 else None
    order = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        for idx in torch.randperm(data.num_train, generator=order).split(batch_size):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=dtype):
                out = model(data.x_train[idx])
            loss = F.cross_entropy(out.float(), data.y_train[idx])
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            losses.append(loss.item())
    return model, losses


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_a_mixed_precision_run_is_the_amp_loop_written_by_hand(digits, precision, dtype):
    result = train(config(precision), data=digits)
    model, losses = amp_loop(digits, dtype, lr=1e-3, batch_size=64, epochs=3, seed=0)
    assert [row["loss"] for row in result.train_log] == losses
    for mine, theirs in zip(result.model.parameters(), model.parameters(), strict=True):
        assert mine.dtype == torch.float32 and torch.equal(mine, theirs)  # fp32 master weights


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_mixed_precision_run_is_finite_and_close_to_its_fp32_run(digits, precision):
    low, full = train(config(precision), data=digits), train(config("fp32"), data=digits)
    assert all(math.isfinite(row["loss"]) for row in low.train_log)
    assert low.final["test_loss"] == pytest.approx(full.final["test_loss"], rel=CLOSE_RTOL)
    assert abs(low.final["test_accuracy"] - full.final["test_accuracy"]) <= 0.03
    assert full.final["test_accuracy"] > 0.8  # both learnt


def test_an_fp16_run_resumes_to_the_uninterrupted_numbers_with_its_scaler(digits, tmp_path):
    cfg = config("fp16", eval_every=10)
    whole = train(cfg, data=digits, out=tmp_path / "whole")

    class Crash(Exception):
        pass

    def crash(row):
        if row["step"] == 40:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, data=digits, out=tmp_path / "run", on_eval=crash)
    saved = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert saved["grad_scaler"]["scale"] > 1  # the scaler's state travels with the run
    resumed = train(cfg, data=digits, out=tmp_path / "run", resume=True)
    assert resumed.train_log == whole.train_log
    for a, b in zip(resumed.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_bf16_runs_are_stacked_each_slice_close_to_its_own_run(digits):
    configs = [config("bf16", lr=lr, seed=seed) for seed in (0, 1) for lr in (3e-4, 1e-3)]
    assert group_refusal(configs[0], digits) is None
    grouped = train_group(configs, data=digits)
    for got, cfg in zip(grouped, configs, strict=True):
        alone = train(cfg, data=digits)
        assert all(math.isfinite(row["loss"]) for row in got.train_log)
        assert got.final["test_loss"] == pytest.approx(alone.final["test_loss"], rel=SLICE_RTOL)


def test_fp16_runs_are_trained_one_by_one(digits):
    why = group_refusal(config("fp16"), digits)
    assert "gradient scaler" in why and "run by run" in why
    with pytest.raises(OptimlabError, match="gradient scaler"):
        train_group([config("fp16", lr=lr) for lr in (1e-3, 3e-3)], data=digits)


def test_a_bf16_constrained_run_is_finite_and_close_to_fp32(digits):
    kw = {"constraints": ["l2norm<=20"], "dual_lr": 1e-2}
    low, full = train(config("bf16", **kw), data=digits), train(config("fp32", **kw), data=digits)
    assert math.isfinite(low.final["test_loss"])
    assert low.final["test_loss"] == pytest.approx(full.final["test_loss"], rel=CLOSE_RTOL)
    key = "violation_l2norm_le_20"
    assert low.evals[-1][key] == pytest.approx(full.evals[-1][key], rel=CLOSE_RTOL)


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "fp8"}, "unknown precision 'fp8'; valid: fp32, bf16, fp16"),
    ({"precision": "bf16", "optimizer": "exact-flow", "model": "logreg"}, "exact-flow computes its flow"),
    ({"precision": "fp16", "constraints": ["l2norm<=1"]}, "use 'bf16'"),
])
def test_bad_precisions_are_refused(kwargs, message):
    with pytest.raises(OptimlabError, match=message.replace("(", r"\(")):
        TrainConfig(**kwargs)


STUDY = """name = "p"
dataset = "mnist-10k"
model = "mlp"
optimizers = ["adam"]
learning_rates = [1e-3]
seeds = [0]
"""


def test_a_study_sets_the_precision_of_its_runs_and_fp32_keeps_older_definitions():
    spec = parse_study(STUDY + 'precision = "bf16"\n')
    assert {c.precision for c in spec.configs()} == {"bf16"}
    plain = parse_study(STUDY)
    assert {c.precision for c in plain.configs()} == {"fp32"}
    assert "precision" not in plain.definition()  # a store written before precision existed: the same study
    assert parse_study(STUDY + 'precision = "fp32"\n').definition() == plain.definition()
    with pytest.raises(OptimlabError, match="valid: fp32, bf16, fp16"):
        parse_study(STUDY + 'precision = "half"\n')
