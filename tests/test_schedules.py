"""Learning-rate schedules: their factors against hand-computed values, a run equal to the loop
written by hand with torch's LambdaLR, exact resumption, and the bad input each refuses."""

import math

import pytest
import torch
import torch.nn.functional as F

from optimlab.data import Dataset
from optimlab.errors import OptimlabError
from optimlab.models import build_model
from optimlab.schedules import Schedule
from optimlab.training import CHECKPOINT, TrainConfig, train


@pytest.fixture(scope="module")
def digits(mnist10k):
    d = mnist10k
    return Dataset(d.name, d.x_train[:640], d.y_train[:640], d.x_test[:200], d.y_test[:200], d.task,
                   d.classes)


def factors(text: str, total: int) -> list[float]:
    return [Schedule.parse(text).factor(k, total) for k in range(total)]


def test_the_factors_of_each_schedule():
    assert factors("constant", 4) == [1.0] * 4
    # warmup 2 of 10 steps: 1/2, 1; then a half cosine over the 8 left, from 1 towards 0
    cos = factors("cosine(warmup=0.2)", 10)
    assert cos[:2] == [0.5, 1.0]
    assert cos[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)])
    assert factors("linear(warmup=2, final=0.1)", 6) == pytest.approx([0.5, 1.0, 1.0, 0.775, 0.55, 0.325])
    assert factors("step(milestones=[0.5, 3], gamma=0.1)", 6) == pytest.approx([1, 1, 1, 0.01, 0.01, 0.01])
    assert factors("step(milestones=[0.5], gamma=0.5)", 4) == [1, 1, 0.5, 0.5]
    assert str(Schedule.parse(" cosine( warmup = 0.05 ) ")) == "cosine(warmup=0.05)"  # canonical


@pytest.mark.parametrize("text, message", [
    ("cosin", "unknown lr schedule 'cosin'; valid: constant, cosine, linear, step"),
    ("cosine(warm=0.1)", "has no option warm; valid: warmup, final"),
    ("constant(warmup=3)", "has no option warmup; valid: none"),
    ("cosine(warmup=1.5)", "warmup as a fraction of the budget is in \\[0, 1\\)"),
    ("cosine(warmup=-2)", "warmup in steps is an integer >= 0"),
    ("cosine(final=2)", "final is the last factor"),
    ("step(milestones=[1.5])", "milestone as a fraction of the budget is in \\(0, 1\\]"),
    ("step(milestones=[])", "milestones is a list"),
    ("step(gamma=0)", "gamma is a factor in \\(0, 1\\]"),
    ("cosine(warmup=__import__('os'))", "must be a literal"),
])
def test_bad_schedules_are_refused(text, message):
    with pytest.raises(OptimlabError, match=message):
        Schedule.parse(text)


def test_a_schedule_that_does_not_fit_the_budget_is_refused_before_training(digits):
    with pytest.raises(OptimlabError, match=r"warmup \(20 steps\) is not shorter than the run \(20 steps\)"):
        train(TrainConfig(model="logreg", iterations=20, schedule="linear(warmup=20)", device="cpu"),
              data=digits)
    with pytest.raises(OptimlabError, match="milestone 30 is step 30, outside the run \\(1 to 20\\)"):
        train(TrainConfig(model="logreg", iterations=20, schedule="step(milestones=[30])", device="cpu"),
              data=digits)
    with pytest.raises(OptimlabError, match="sets its own learning rate"):
        TrainConfig(model="linear", dataset="lls", optimizer="localflow-sgd", schedule="cosine")


def test_a_scheduled_run_equals_the_hand_written_loop_with_torchs_lambda_lr(digits):
    schedule = "cosine(warmup=0.1)"
    config = TrainConfig(model="mlp", optimizer="momentum", lr=0.05, batch_size=64, epochs=3, log_every=1,
                         schedule=schedule, device="cpu")
    result = train(config, data=digits)
    total = 30
    torch.manual_seed(0)
    model = build_model("mlp", digits.input_shape, digits.num_classes, digits.task)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: Schedule.parse(schedule).factor(k, total))
    g = torch.Generator().manual_seed(0)
    losses, lrs = [], []
    for _ in range(3):
        for idx in torch.randperm(digits.num_train, generator=g).split(64):
            opt.zero_grad()
            loss = F.cross_entropy(model(digits.x_train[idx]), digits.y_train[idx])
            loss.backward()
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
            losses.append(loss.item())
    assert [r["loss"] for r in result.train_log] == losses
    assert [r["lr"] for r in result.train_log] == lrs  # each row: the lr of its own update
    for a, b in zip(result.model.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_scheduled_run_resumes_exactly_and_only_with_its_budget(digits, tmp_path):
    config = TrainConfig(model="mlp", optimizer="adam", lr=2e-3, batch_size=64, epochs=3, log_every=1,
                         schedule="linear(warmup=5)", device="cpu")
    whole = train(config, data=digits)

    class Crash(Exception):
        pass

    def crash(row):
        if row["step"] == 20:
            raise Crash

    config_eval = TrainConfig(**{**config.to_dict(), "eval_every": 5})
    with pytest.raises(Crash):
        train(config_eval, data=digits, out=tmp_path / "run", on_eval=crash)
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["progress"]["step"] == 10
    resumed = train(config_eval, data=digits, out=tmp_path / "run", resume=True)
    assert resumed.train_log == whole.train_log
    longer = TrainConfig(**{**config_eval.to_dict(), "epochs": 4})
    with pytest.raises(OptimlabError, match="spans its budget"):
        train(longer, data=digits, out=tmp_path / "run", resume=True)


STUDY = """name = "scheduled"
dataset = "mnist-10k:0,1"
model = "logreg"
batch_size = 100
iterations = 30
eval_every = 10
seeds = [0]
learning_rates = [0.1, 0.03]
optimizers = ["momentum"]
schedules = ["constant", "cosine(warmup=0.1)"]
"""


def test_schedules_are_a_grid_axis_trained_in_one_group_each_and_reported_as_series(tmp_path):
    from optimlab.report import summarize
    from optimlab.study import load_results, parse_study, run_study
    from optimlab.study.store import StudyStore

    spec = parse_study(STUDY + '\n[executor]\nstack = "always"\n')  # the groups, however fast
    assert [p["schedule"] for p in spec.grid] == [None, None, "cosine(warmup=0.1)", "cosine(warmup=0.1)"]
    outcome = run_study(spec, out=tmp_path / "v", executor="vectorized", progress=False)
    store = StudyStore.open(outcome.store, readonly=True)
    engines = {(r["schedule"], r["lr"]): r["engine"] for r in store.runs()}
    store.close()
    assert set(engines.values()) == {"vectorized: a group of 2 runs"}  # one group per schedule
    plain = load_results(run_study(spec, out=tmp_path / "s", executor="sequential", progress=False).store)
    grouped = load_results(outcome.store)
    key = ["schedule", "lr", "step"]
    a, b = grouped.evals.sort_values(key), plain.evals.sort_values(key)
    assert a.lr.tolist() == b.lr.tolist() and a.step.tolist() == b.step.tolist()
    assert a.test_loss.to_numpy() == pytest.approx(b.test_loss.to_numpy(), rel=1e-5)
    scheduled = plain.evals[(plain.evals.schedule == "cosine(warmup=0.1)") & (plain.evals.lr == 0.1)]
    assert scheduled.step.tolist() == [0, 10, 20, 30]
    store = StudyStore.open(outcome.store, readonly=True)
    lrs = [r[0] for r in store.conn.execute(
        "SELECT t.lr FROM train_log t JOIN runs r ON r.id = t.run_id WHERE r.schedule IS NOT NULL AND "
        "r.lr = 0.1 ORDER BY t.step")]
    store.close()
    want = [0.1 * Schedule.parse("cosine(warmup=0.1)").factor(s - 1, 30) for s in range(10, 31, 10)]
    assert lrs == pytest.approx(want)  # each logged row: the learning rate of its own update
    summary = summarize(plain)
    assert set(summary.robustness.optimizer) == {"momentum, constant", "momentum, cosine(warmup=0.1)"}


@pytest.mark.parametrize("line, message", [
    ("schedules = []", "schedules must be a non-empty list"),
    ('schedules = ["cosin"]', "schedules\\[0\\]: unknown lr schedule 'cosin'"),
    ('schedules = ["constant", "constant"]', "duplicate configurations"),
    ('schedules = ["linear(warmup=30)"]', "the warmup \\(30 steps\\) is not shorter than the run"),
])
def test_bad_schedule_axes_are_refused_before_anything_is_written(line, message, tmp_path):
    from optimlab.study import parse_study, run_study

    text = STUDY.replace('schedules = ["constant", "cosine(warmup=0.1)"]', line)
    with pytest.raises(OptimlabError, match=message):
        run_study(parse_study(text), out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
