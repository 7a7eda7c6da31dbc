"""The baselines by name (optimlab[baselines]): each trains and resumes to the uninterrupted run, the
schedule-free ones are evaluated at their evaluation point without changing the run, a missing package
is a clear message, and a vectorized study stacks Lion and trains the others run by run."""

import importlib
import math
import sys
import textwrap

import pytest
import torch
from test_training import no_time, params, small
from torch import nn

from optimlab.baselines import BASELINES
from optimlab.engine.modes import BATCHNORM_BATCHES
from optimlab.errors import OptimlabError
from optimlab.registry import resolve_optimizer
from optimlab.study.results import load_results
from optimlab.study.runner import run_study
from optimlab.study.spec import parse_study
from optimlab.study.store import StudyStore
from optimlab.training import CHECKPOINT, TrainConfig, evaluate, train


def needs(name: str) -> None:
    module = BASELINES[name].factory.path.partition(":")[0]
    pytest.importorskip(module, reason=f"{BASELINES[name].factory.package} is not installed")


@pytest.fixture(scope="module")
def digits(mnist10k):
    return small(mnist10k, 600)


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


@pytest.mark.parametrize("name", list(BASELINES))
def test_each_baseline_trains_and_resumes_to_the_uninterrupted_run(name, digits, tmp_path):
    needs(name)
    cfg = TrainConfig(model="mlp", optimizer=name, lr=None, batch_size=100, epochs=4, eval_every=4,
                      log_every=2, device="cpu")
    whole = train(cfg, data=digits, out=tmp_path / "whole")
    assert whole.status == "completed" and whole.evals[-1]["step"] == 24
    assert whole.evals[-1]["train_loss"] < whole.evals[0]["train_loss"]  # it learns at its default lr

    class Crash(Exception):
        pass

    def crash(row):
        if row["step"] == 16:  # mid-way through epoch 3 (6 steps an epoch)
            raise Crash

    with pytest.raises(Crash):
        train(cfg, data=digits, out=tmp_path / "run", on_eval=crash)
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["progress"]["step"] == 12
    resumed = train(cfg, data=digits, out=tmp_path / "run", resume=True)
    assert no_time(resumed.evals) == no_time(whole.evals)
    assert resumed.train_log == whole.train_log
    for a, b in zip(params(resumed.model), params(whole.model), strict=True):
        assert torch.equal(a, b)


def test_default_learning_rates_are_the_packages_own():
    for name, lr in {"prodigy": 1.0, "dadapt-adam": 1.0, "dadapt-sgd": 1.0, "dog": 1.0,
                     "schedulefree-adamw": 0.0025, "schedulefree-sgd": 1.0, "lion": 1e-4}.items():
        needs(name)
        assert resolve_optimizer(name).default_lr() == lr, name


@pytest.mark.parametrize("name", ["schedulefree-adamw", "schedulefree-sgd"])
def test_evaluating_a_schedule_free_run_does_not_change_it_and_happens_at_its_average(name, digits,
                                                                                     tmp_path):
    needs(name)
    lr = 0.01 if name == "schedulefree-adamw" else 0.1
    common = dict(model=bn_net(), optimizer=name, lr=lr, batch_size=50, iterations=30, log_every=1,
                  device="cpu")
    often = train(TrainConfig(eval_every=3, **common), data=digits, out=tmp_path / "often")
    rarely = train(TrainConfig(eval_every=None, **common), data=digits, out=tmp_path / "rarely")
    assert len(often.evals) == 11 and len(rarely.evals) == 4  # steps 0, 12, 24, 30
    assert often.train_log == rarely.train_log  # every batch loss, bit for bit
    for a, b in zip(params(often.model), params(rarely.model), strict=True):
        assert torch.equal(a, b)
    assert [e for e in no_time(often.evals) if e["step"] in (0, 12, 24, 30)] == no_time(rarely.evals)

    # the checkpoint holds the training point y; the model returned is at the average x, with its
    # BatchNorm statistics recomputed there: its evaluation is the last row
    ckpt = torch.load(tmp_path / "often" / CHECKPOINT, weights_only=False)
    model = bn_net()
    model.load_state_dict(ckpt["model"])
    opt = resolve_optimizer(name).build(model.parameters(), lr=lr)
    opt.load_state_dict(ckpt["optimizer"])
    y = params(model)
    opt.eval()
    x = params(model)
    assert max(float((a - b).abs().max()) for a, b in zip(x, y, strict=True)) > 1e-4
    for a, b in zip(x, params(often.model), strict=True):
        assert torch.equal(a, b)
    # the statistics by hand: the mean of the batch means of the BatchNorm's input at x
    inputs = []
    with torch.no_grad():
        for start in range(0, min(digits.num_train, BATCHNORM_BATCHES * 50), 50):
            inputs.append(model[1](model[0](digits.x_train[start:start + 50])).mean(0))
    assert torch.allclose(often.model[2].running_mean, torch.stack(inputs).mean(0), atol=1e-6)
    assert int(often.model[2].num_batches_tracked) == math.ceil(digits.num_train / 50)
    loss, acc = evaluate(often.model, digits.x_test, digits.y_test, "classification")
    assert (loss, acc) == (often.evals[-1]["test_loss"], often.evals[-1]["test_accuracy"])


def test_a_schedule_free_optimizer_refuses_a_schedule(digits, tmp_path):
    needs("schedulefree-adamw")
    with pytest.raises(OptimlabError, match=r"schedulefree-adamw is schedule-free .* schedule "
                                            r"'cosine\(warmup=0.1\)' is refused; .*warmup_steps"):
        train(TrainConfig(model="logreg", optimizer="schedulefree-adamw", iterations=10,
                          schedule="cosine(warmup=0.1)"), data=digits, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    spec = parse_study(study('["schedulefree-adamw"]', 'schedules = ["cosine"]'))
    with pytest.raises(OptimlabError, match="schedule-free"):
        run_study(spec, out=tmp_path / "study", executor="vectorized")
    assert not (tmp_path / "study").exists()


def test_a_baseline_whose_package_is_absent_names_the_package_and_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "dadaptation", None)  # import dadaptation now fails
    message = (r"optimizer 'dadapt-adam' comes from the package dadaptation, which is not installed: "
               r"pip install 'optimlab\[baselines\]' \(or pip install dadaptation\)")
    with pytest.raises(OptimlabError, match=message):
        resolve_optimizer("dadapt-adam").build([nn.Parameter(torch.zeros(2))])
    with pytest.raises(OptimlabError, match=message):
        parse_study(study('["sgd", "dadapt-adam"]'))
    from optimlab.cli import main

    assert main(["train", "--optimizer", "dadapt-adam", "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_optimizers_lists_a_missing_baseline_with_its_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dog", None)
    from optimlab.cli import main

    assert main(["optimizers"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "(not installed: pip install 'optimlab[baselines]')" in lines["dog"]
    assert "[baselines (dog-optimizer); not lr-linear; vectorized: one by one]" in lines["dog"]
    if importlib.util.find_spec("lion_pytorch"):
        assert "[baselines (lion-pytorch); lr-linear; vectorized: stacked] betas=(0.9, 0.99)" in lines["lion"]


def study(optimizers: str, extra: str = "") -> str:
    """Logistic regression on two digits, 2 seeds, 20 iterations."""
    return textwrap.dedent(f"""
        name = "baselines"
        dataset = "mnist-10k:0,1"
        model = "logreg"
        batch_size = 50
        iterations = 20
        eval_every = 10
        log_every = 5
        device = "cpu"
        optimizers = {optimizers}
        learning_rates = [0.05]
        seeds = [0, 1]
        {extra}
        """)


def test_a_vectorized_study_stacks_lion_and_trains_the_other_baselines_run_by_run(tmp_path):
    for name in ("lion", "prodigy", "schedulefree-adamw"):
        needs(name)
    optimizers = ('["sgd", { name = "lion", learning_rates = [3e-4, 1e-4] }, '
                  '{ name = "prodigy", learning_rates = [1.0] }, '
                  '{ name = "schedulefree-adamw", learning_rates = [0.01] }, '
                  '"lion(weight_decay=0.5, decoupled_weight_decay=True)"]')
    spec = parse_study(study(optimizers) + '\n[executor]\nstack = "always"\n')  # lion's pair: stacked
    outcome = run_study(spec, out=tmp_path / "s", executor="vectorized")
    assert (outcome.completed, outcome.failed) == (len(spec.grid), 0) == (12, 0)
    store = StudyStore.open(outcome.store)
    try:
        engines = {(r["optimizer"], r["lr"], r["seed"]): r["engine"] for r in store.runs()}
    finally:
        store.close()
    assert engines[("lion", 3e-4, 0)] == engines[("lion", 1e-4, 1)] == "vectorized: a group of 4 runs"
    assert engines[("sgd", 0.05, 0)] == "vectorized: a group of 2 runs"
    for label in ("prodigy", "schedulefree-adamw", "lion(weight_decay=0.5, decoupled_weight_decay=True)"):
        assert all(e.startswith(f"one by one: optimizer {label} is not declared lr-linear")
                   for k, e in engines.items() if k[0] == label), label
    evals = load_results(outcome.store).evals
    for config in spec.configs():  # each run as its independent train gives it
        want = train(config)
        got = evals[(evals["optimizer"] == str(config.optimizer) if isinstance(config.optimizer, str)
                     else evals["optimizer"] == config.optimizer["name"])
                    & (evals["lr"] == config.lr) & (evals["seed"] == config.seed)]
        assert got["step"].tolist() == [0, 10, 20]
        for k in ("train_loss", "test_loss", "test_accuracy"):
            stacked = engines[(got["optimizer"].iloc[0], config.lr, config.seed)].startswith("vectorized")
            assert got[k].tolist() == pytest.approx([e[k] for e in want.evals], rel=1e-5 if stacked else 0,
                                                    abs=1e-7 if stacked else 0), (config.optimizer, k)


def test_a_class_of_pytorch_optimizer_by_import_path_trains_and_resumes(digits, tmp_path):
    pytest.importorskip("pytorch_optimizer", reason="pytorch-optimizer is not installed")
    for ref in ("pytorch_optimizer:Lamb(weight_decay=0.01)", "pytorch_optimizer:ScheduleFreeAdamW"):
        cfg = TrainConfig(model=bn_net(), optimizer=ref, lr=3e-3, batch_size=100, iterations=12,
                          eval_every=3, device="cpu")
        whole = train(cfg, data=digits, out=tmp_path / ref / "whole")
        assert whole.evals[-1]["train_loss"] < whole.evals[0]["train_loss"]
        train(TrainConfig(**{**cfg.to_dict(), "model": bn_net(), "iterations": 6}), data=digits,
              out=tmp_path / ref / "run")
        resumed = train(cfg, data=digits, out=tmp_path / ref / "run", resume=True)
        assert no_time(resumed.evals) == no_time(whole.evals), ref
    # ScheduleFreeAdamW has train() and eval(): refused with a schedule like the schedulefree package's
    with pytest.raises(OptimlabError, match="pytorch_optimizer:ScheduleFreeAdamW is schedule-free"):
        train(TrainConfig(model="logreg", optimizer="pytorch_optimizer:ScheduleFreeAdamW", iterations=10,
                          schedule="cosine"), data=digits)
