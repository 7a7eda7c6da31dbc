"""The local-flow optimizers by name in a training run and in studies: ``exact-flow`` and
``localflow-sgd``, against the same optimizers driven by hand."""

import pytest
import torch

from optimlab.data import make_lls
from optimlab.errors import OptimlabError
from optimlab.localflow import CurvatureScheduler, ExactFlow
from optimlab.models import build_model
from optimlab.optimizers import build_optimizer
from optimlab.study import ExecutorSpec, load_results, parse_study, run_study
from optimlab.training import CHECKPOINT, TrainConfig, loss_function, train


@pytest.fixture(scope="module")
def lls():
    return make_lls(n=200, p=10, cond=1e3, seed=2)


def by_hand(data, optimizer: str, h: float, epochs: int, batch: int = 20, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("linear", data.input_shape, task="regression")
    loss_fn = loss_function("regression")
    if optimizer == "exact-flow":
        opt, sched = ExactFlow(model, lr=h, rtol=1e-6, atol=1e-9), None
    else:
        opt = torch.optim.SGD(model.parameters(), lr=h)
        sched = CurvatureScheduler(opt, every=10)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(data.num_train, generator=order).split(batch):
            xb, yb = data.x_train[idx], data.y_train[idx]
            if sched is None:
                opt.step(xb, yb)
            else:
                sched.step(lambda xb=xb, yb=yb: loss_fn(model(xb), yb))
                opt.step()
    return model


@pytest.mark.parametrize("name", ["exact-flow", "localflow-sgd"])
def test_a_run_by_name_is_the_optimizer_driven_by_hand(lls, name):
    r = train(TrainConfig(dataset="lls", model="linear", optimizer=name, lr=50.0, batch_size=20,
                          epochs=3, device="cpu"), data=lls)
    mine = by_hand(lls, name, 50.0, 3)
    torch.testing.assert_close(r.model.linear.weight, mine.linear.weight, rtol=1e-5, atol=1e-7)
    assert r.status == "completed"


def test_where_sgd_diverges_the_exact_flow_converges(lls):
    cfg = dict(dataset="lls", model="linear", lr=100.0, batch_size=20, epochs=5, device="cpu")
    sgd = train(TrainConfig(optimizer="sgd", **cfg), data=lls)
    flow = train(TrainConfig(optimizer="exact-flow", **cfg), data=lls)
    assert sgd.status == "diverged"
    assert flow.status == "completed"
    assert flow.final["train_loss"] < 10 * lls.extras["optimal_loss"] + 1e-3


def test_localflow_sgd_resumes_exactly(lls, tmp_path):
    cfg = TrainConfig(dataset="lls", model="linear", optimizer="localflow-sgd(every=3)", lr=20.0,
                      batch_size=20, epochs=4, eval_every=7, log_every=1, device="cpu")
    whole = train(cfg, data=lls)

    class Crash(Exception):
        pass

    def crash(row):
        if row["step"] == 28:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, data=lls, out=tmp_path, on_eval=crash)
    assert "scheduler" in torch.load(tmp_path / CHECKPOINT, weights_only=True)
    resumed = train(cfg, data=lls, out=tmp_path, resume=True)
    assert resumed.train_log == whole.train_log
    assert [e["lr"] for e in resumed.evals] == [e["lr"] for e in whole.evals]


def test_bad_uses_are_refused_clearly(lls):
    with pytest.raises(OptimlabError, match="ExactFlow needs a linear model .* got MLP"):
        train(TrainConfig(dataset="mnist-10k", model="mlp", optimizer="exact-flow", iterations=1,
                          device="cpu"))
    with pytest.raises(OptimlabError, match="constraints need a torch.optim optimizer"):
        TrainConfig(optimizer="localflow-sgd", constraints=["l2norm<=1"])
    with pytest.raises(OptimlabError, match="needs the model and the batch"):
        build_optimizer("exact-flow", [torch.nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(OptimlabError, match="no hyperparameter foo; valid: momentum, every"):
        TrainConfig(optimizer="localflow-sgd(foo=1)")
    for options, match in (("guard='trust'", "unknown guard 'trust'; valid: armijo, none"),
                           ("armijo=1.5", r"armijo is the fraction .* in \(0, 1\)"),
                           ("backtracks=0", "backtracks .* integer >= 1")):
        with pytest.raises(OptimlabError, match=match):
            train(TrainConfig(dataset="lls:n=100,p=5", model="linear", optimizer=f"localflow-sgd({options})",
                              iterations=1, device="cpu"))


def test_a_study_compares_them_with_sgd_run_by_run(tmp_path):
    spec = parse_study("""
name = "flows"
dataset = "lls:n=200,p=10,cond=1000,seed=2"
model = "linear"
batch_size = 20
epochs = 2
optimizers = ["sgd", "exact-flow", "localflow-sgd"]
learning_rates = [0.5, 100.0]
seeds = [0]
device = "cpu"
""")
    outcome = run_study(spec, out=tmp_path, executor=ExecutorSpec(kind="vectorized"))
    runs = load_results(outcome.store).runs.set_index(["optimizer", "lr"])
    assert runs.loc[("sgd", 100.0), "status"] == "diverged"
    assert runs.loc[("exact-flow", 100.0), "status"] == "completed"
    assert (outcome.completed, outcome.diverged) == (5, 1)
