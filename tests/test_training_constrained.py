"""A training run under a named constraint (``--constraint l2norm<=1``): seed 001's problem."""

import pytest
import torch
import torch.nn.functional as F

from optimlab.cli import main
from optimlab.constrained.named import parse_constraint
from optimlab.data import Dataset
from optimlab.errors import OptimlabError
from optimlab.models import build_model
from optimlab.training import CHECKPOINT, TrainConfig, train


@pytest.fixture(scope="module")
def digits(mnist10k):
    return Dataset(mnist10k.name, mnist10k.x_train[:640], mnist10k.y_train[:640],
                   mnist10k.x_test[:200], mnist10k.y_test[:200], mnist10k.task, mnist10k.classes)


CONFIG = dict(model="logreg", optimizer="adam(amsgrad=True)", lr=1e-2, batch_size=64, epochs=3,
              constraints=["l2norm<=1"], dual_lr=0.05, log_every=1, device="cpu")


def hand_written_gda(data, steps_epochs=3, lr=1e-2, dual_lr=0.05, seed=0, formulation="lagrangian", c=1.0):
    """Simultaneous gradient descent-ascent written out, g = |theta|^2 - 1 measured before the step:
    Adam(amsgrad) on f + lam * g, then lam <- max(0, lam + dual_lr * g) (Lagrangian); on
    f + (relu(lam + c g)^2 - lam^2) / (2c), then lam <- max(0, lam + dual_lr * c * g) (augmented
    Lagrangian); on f + c/2 relu(g)^2, no multiplier (quadratic penalty)."""
    torch.manual_seed(seed)
    model = build_model("logreg", data.input_shape, data.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr, amsgrad=True)
    lam = torch.zeros(())
    order = torch.Generator().manual_seed(seed)
    lams, gs = [], []
    for _ in range(steps_epochs):
        for idx in torch.randperm(data.num_train, generator=order).split(64):
            opt.zero_grad()
            g = sum(p.pow(2).sum() for p in model.parameters()) - 1.0
            term = {"lagrangian": lam * g, "quadratic_penalty": c / 2 * F.relu(g) ** 2,
                    "augmented_lagrangian": (F.relu(lam + c * g) ** 2 - lam ** 2) / (2 * c)}[formulation]
            (F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]) + term).backward()
            opt.step()
            step = {"lagrangian": g, "quadratic_penalty": 0 * g, "augmented_lagrangian": c * g}[formulation]
            lam = torch.clamp(lam + dual_lr * step.detach(), min=0.0)
            gs.append(g.item())
            lams.append(lam.item())
    return model, lams, gs


def test_a_constrained_run_is_simultaneous_gradient_descent_ascent(digits):
    r = train(TrainConfig(**CONFIG), data=digits)
    model, lams, gs = hand_written_gda(digits)
    for a, b in zip(r.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    key = "l2norm_le_1"
    # train_log: the violation at the start of each step, the multiplier used in it (before the ascent)
    assert [row[f"violation_{key}"] for row in r.train_log] == pytest.approx(gs, rel=1e-5, abs=1e-6)
    assert [row[f"multiplier_{key}"] for row in r.train_log] == pytest.approx([0.0] + lams[:-1], abs=1e-6)
    assert r.final[f"multiplier_{key}"] == pytest.approx(lams[-1], abs=1e-6)
    norm = sum(p.pow(2).sum() for p in model.parameters()).item()
    assert r.final[f"violation_{key}"] == pytest.approx(norm - 1.0, rel=1e-5)
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in r.train_log)


@pytest.mark.parametrize("formulation, c", [("augmented_lagrangian", 10.0), ("quadratic_penalty", 30.0)])
def test_the_penalty_formulations_are_their_hand_written_loops(digits, formulation, c):
    r = train(TrainConfig(**CONFIG, formulation=formulation, penalty=c), data=digits)
    model, lams, gs = hand_written_gda(digits, formulation=formulation, c=c)
    for a, b in zip(r.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    key = "l2norm_le_1"
    assert [row[f"violation_{key}"] for row in r.train_log] == pytest.approx(gs, rel=1e-5, abs=1e-6)
    if formulation == "augmented_lagrangian":
        assert r.final[f"multiplier_{key}"] == pytest.approx(lams[-1], abs=1e-6) and lams[-1] > 0
    else:  # no multiplier, no column; the penalty holds the norm near its bound (from +2.4)
        assert f"multiplier_{key}" not in r.final and f"multiplier_{key}" not in r.train_log[-1]
        assert gs[0] > 2 and abs(r.final[f"violation_{key}"]) < 0.05


@pytest.mark.parametrize("changes, message", [
    (dict(formulation="penalty"), "unknown formulation 'penalty'; valid: lagrangian, augmented_lagrangian"),
    (dict(penalty=10.0), "a penalty coefficient needs formulation 'augmented_lagrangian' or"),
    (dict(formulation="quadratic_penalty", penalty=0.0), "must be a finite number > 0; got 0.0"),
    (dict(formulation="augmented_lagrangian", penalty=float("nan")), "must be a finite number > 0"),
    (dict(formulation="quadratic_penalty", constraints=[]),
     "formulation 'quadratic_penalty' needs constraints"),
])
def test_bad_formulations_are_refused(changes, message):
    with pytest.raises(OptimlabError, match=message):
        TrainConfig(**{**CONFIG, **changes})


def test_a_constrained_run_resumes_exactly(digits, tmp_path):
    whole = train(TrainConfig(**CONFIG), data=digits)

    class Crash(Exception):
        pass

    def crash(row):
        if row["step"] == 25:
            raise Crash

    cfg = TrainConfig(**{**CONFIG, "eval_every": 5})
    with pytest.raises(Crash):
        train(cfg, data=digits, out=tmp_path, on_eval=crash)
    assert "constrained" in torch.load(tmp_path / CHECKPOINT, weights_only=True)
    resumed = train(cfg, data=digits, out=tmp_path, resume=True)
    assert resumed.train_log == whole.train_log
    for a, b in zip(resumed.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("text, message", [
    ("l2norm<1", "write NAME<=BOUND"), ("l3norm<=1", "unknown constraint 'l3norm'; valid: l2norm, l1norm"),
    ("l2norm<=abc", "is not a number"), ("l2norm<=inf", "must be finite"),
])
def test_bad_constraints_are_refused(text, message):
    with pytest.raises(OptimlabError, match=message):
        TrainConfig(constraints=[text])


def test_named_constraints_measure_what_they_say():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, -4.0]]))
        model.bias.fill_(0.5)
    assert parse_constraint("l2norm<=1").violation(model).item() == pytest.approx(9 + 16 + 0.25 - 1)
    assert parse_constraint(" l1norm >= 10 ").violation(model).item() == pytest.approx(10 - 7.5)
    assert parse_constraint("l2norm==2").kind == "==" and parse_constraint("l1norm>=1").kind == "<="
    assert parse_constraint("l2norm<=0.5").key == "l2norm_le_0p5"


def test_the_command_line_prints_the_multiplier_and_draws_the_four_panels(tmp_path, capsys):
    code = main(["train", "--model", "logreg", "--optimizer", "adam(amsgrad=True)", "--lr", "1e-3",
                 "--batch-size", "128", "--iterations", "40", "--eval-every", "20", "--constraint",
                 "l2norm<=1", "--out", str(tmp_path), "-q"])
    assert code == 0 and (tmp_path / "figure.png").stat().st_size > 10000
    assert "violation_l2norm_le_1" in (tmp_path / "train_log.csv").read_text().splitlines()[0]
    code = main(["train", "--iterations", "1", "--constraint", "l2norm<=x", "--out", str(tmp_path / "b")])
    assert code == 2 and "is not a number" in capsys.readouterr().err


def test_the_command_line_takes_a_formulation_and_a_penalty(tmp_path, capsys):
    import json

    code = main(["train", "--model", "logreg", "--batch-size", "128", "--iterations", "20", "--constraint",
                 "l2norm<=1", "--formulation", "quadratic_penalty", "--penalty", "10", "--out", str(tmp_path),
                 "-q"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert code == 0 and (metrics["config"]["formulation"], metrics["config"]["penalty"]) == (
        "quadratic_penalty", 10.0)
    header = (tmp_path / "train_log.csv").read_text().splitlines()[0]
    assert "violation_l2norm_le_1" in header and "multiplier" not in header
    assert main(["train", "--iterations", "1", "--penalty", "10", "--constraint", "l2norm<=1",
                 "--out", str(tmp_path / "b")]) == 2
    assert "a penalty coefficient needs formulation" in capsys.readouterr().err
