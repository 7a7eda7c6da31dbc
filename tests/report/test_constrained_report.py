"""The constrained parts of a report: final violations, the share of seeds feasible, best learning
rates among feasible settings only, and the four panels, on a store whose numbers are made up."""

import math

import numpy as np
import pytest
from madeup import _study, evals, fill

from optimlab.report import make_report, summarize
from optimlab.study.results import load_results

LE, EQ = "l2norm_le_1", "l1norm_eq_30"
BASE = {1e-3: 0.80, 1e-2: 0.90, 1e-1: 0.895}  # final test accuracy by lr (dual lr 0.1: 0.02 less)
# final violation of l2norm<=1 by (dual lr, lr) for seeds 0 and 1
VIOLATION = {
    (0.01, 1e-3): [0.2, 0.2], (0.01, 1e-2): [0.05, -0.01], (0.01, 1e-1): [-0.02, -0.02],
    (0.1, 1e-3): [-0.05, -0.05], (0.1, 1e-2): [-0.05, -0.05], (0.1, 1e-1): [-0.05, 0.0005],
    (1.0, 1e-3): [0.3, 0.3], (1.0, 1e-2): [0.1, 0.1], (1.0, 1e-1): [0.3, 0.3],
}


def outcome(opt, lr, seed, dual_lr):
    acc = BASE[lr] - (0.02 if dual_lr == 0.1 else 0.0)
    g = VIOLATION[(dual_lr, lr)][seed]
    h = -0.5 if (dual_lr, lr) == (0.1, 1e-3) else 0.0  # an equality missed from below: infeasible
    rows = evals([0.1, acc * 0.9, acc])
    for i, row in enumerate(rows):
        row.update({f"violation_{LE}": g * i / 2, f"multiplier_{LE}": dual_lr * i,  # final: g
                    f"violation_{EQ}": h, f"multiplier_{EQ}": -dual_lr})
    log = [{"step": s, "epoch": s / 10, "loss": 1.0 / (1 + s), "lr": lr, "accuracy": acc,
            f"violation_{LE}": g, f"multiplier_{LE}": seed + dual_lr, f"violation_{EQ}": h,
            f"multiplier_{EQ}": 0.0} for s in (5, 10, 15, 20)]
    return rows, log


@pytest.fixture
def store(tmp_path):
    spec = _study(["sgd"], [1e-3, 1e-2, 1e-1], [0, 1], ["l2norm<=1", "l1norm==30"], [0.01, 0.1, 1.0])
    return fill(tmp_path / "c.db", spec, outcome)


def test_cells_count_the_seeds_that_end_feasible(store):
    s = summarize(load_results(store))
    assert s.constraints == {LE: "<=", EQ: "=="}
    cells = s.cells.set_index(["optimizer", "lr"])
    feasible = {(o, lr): n for (o, lr), n in cells.feasible.items()}
    assert feasible == {("sgd, dual lr 0.01", 1e-3): 0, ("sgd, dual lr 0.01", 1e-2): 1,
                        ("sgd, dual lr 0.01", 1e-1): 2, ("sgd, dual lr 0.1", 1e-3): 0,  # |h| = 0.5
                        ("sgd, dual lr 0.1", 1e-2): 2, ("sgd, dual lr 0.1", 1e-1): 2,  # +5e-4 <= 1e-3
                        ("sgd, dual lr 1", 1e-3): 0, ("sgd, dual lr 1", 1e-2): 0, ("sgd, dual lr 1", 1e-1): 0}
    one = cells.loc[("sgd, dual lr 0.01", 1e-2)]
    # the largest violation: seed 0 g = 0.05; seed 1 max(g = -0.01, |h| = 0) = 0
    assert one.final_violation_mean == pytest.approx(0.025)
    assert one.final_violation_std == pytest.approx(np.std([0.05, 0.0], ddof=1))  # over seeds, ddof 1
    assert cells.loc[("sgd, dual lr 0.1", 1e-3)].final_violation_mean == pytest.approx(0.5)
    assert cells.loc[("sgd, dual lr 0.1", 1e-2), f"final_multiplier_{LE}_mean"] == pytest.approx(0.2)
    final = s.final.set_index(["optimizer", "lr", "seed"])
    assert final.loc[("sgd, dual lr 0.01", 1e-2, 1), f"final_violation_{LE}"] == pytest.approx(-0.01)
    assert final.loc[("sgd, dual lr 0.01", 1e-2, 1), f"final_violation_{EQ}"] == 0.0
    # a stricter tolerance makes the +5e-4 seed infeasible
    strict = summarize(load_results(store), feasibility_tolerance=1e-4).cells.set_index(["optimizer", "lr"])
    assert strict.loc[("sgd, dual lr 0.1", 1e-1)].feasible == 1


def test_best_learning_rates_count_only_settings_where_every_seed_ended_feasible(store):
    s = summarize(load_results(store))
    rob = s.robustness.set_index("optimizer")
    # dual lr 0.01: lr 1e-2 is the most accurate (0.90) but one seed ends infeasible: 1e-1 is best
    assert rob.loc["sgd, dual lr 0.01"].best_lr == 1e-1
    assert rob.loc["sgd, dual lr 0.01"].best_final_test_accuracy == pytest.approx(0.895)
    assert rob.loc["sgd, dual lr 0.01"].width_accuracy_decades == 0.0
    assert rob.loc["sgd, dual lr 0.01"].final_violation == 0.0  # max(g = -0.02, |h| = 0)
    # dual lr 0.1: 1e-2 (0.88) and 1e-1 (0.875, within a point): one decade
    assert rob.loc["sgd, dual lr 0.1"].best_lr == 1e-2
    assert rob.loc["sgd, dual lr 0.1"].width_accuracy_decades == pytest.approx(1.0)
    # dual lr 1: never feasible: no best lr, ranked last, said so
    assert math.isnan(rob.loc["sgd, dual lr 1"].best_lr)
    assert s.robustness.optimizer.tolist() == ["sgd, dual lr 0.01", "sgd, dual lr 0.1", "sgd, dual lr 1"]
    assert any("No learning rate of sgd, dual lr 1 ended feasible" in n for n in s.notes)
    assert any("<= 0.001" in n for n in s.notes)
    # the panels: the lowest seed at the best lr, or at the smallest final violation (dual lr 1: 1e-2)
    assert list(s.panels) == ["sgd, dual lr 0.01, lr 0.1, seed 0", "sgd, dual lr 0.1, lr 0.01, seed 0",
                              "sgd, dual lr 1, lr 0.01, seed 0"]
    panel = s.panels["sgd, dual lr 0.1, lr 0.01, seed 0"]
    assert panel.step.tolist() == [5, 10, 15, 20] and set(panel[f"multiplier_{LE}"]) == {0.1}


def test_the_page_has_the_feasibility_columns_and_the_four_panels(store, tmp_path):
    report = make_report(store, tmp_path / "r")
    assert set(report.figures) >= {"sensitivity", "constrained"}
    text = report.html.read_text()
    assert "feasible seeds" in text and "final violation" in text and "multiplier (l1norm_eq_30)" in text
    md = report.markdown.read_text()
    row = next(line for line in md.splitlines() if line.startswith("| sgd, dual lr 0.01 | 0.01 |"))
    assert "| 1/2 |" in row and "0.0250 ± 0.0354" in row
    assert "![Training loss, batch accuracy, multipliers and violations" in md


def test_an_unconstrained_report_has_no_constraint_columns(made_up_store, tmp_path):
    report = make_report(made_up_store, tmp_path / "r")
    assert "constrained" not in report.figures and "feasible" not in report.html.read_text()
    assert "feasible" not in report.summary.cells and report.summary.panels == {}


def test_the_command_line_takes_a_feasibility_tolerance(store, tmp_path, capsys):
    from optimlab.cli import main

    assert main(["report", str(store), "--out", str(tmp_path / "r"), "--feasibility-tolerance", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "<= 0.5 (|h| for an equality)" in out and "No learning rate of" not in out  # all within 0.5
    assert main(["report", str(store), "--out", str(tmp_path / "r"), "--feasibility-tolerance", "-1"]) == 2
    assert "feasibility tolerance must be a finite number >= 0; got -1.0" in capsys.readouterr().err


def test_a_study_where_no_setting_ends_feasible_is_still_reported(tmp_path):
    def infeasible(opt, lr, seed, dual_lr):
        rows, log = outcome(opt, lr, seed, dual_lr)
        for row in rows + log:
            row[f"violation_{LE}"] = 0.3
        return rows, log

    spec = _study(["sgd"], [1e-3, 1e-2], [0, 1], ["l2norm<=1"], [0.01, 0.1])
    report = make_report(fill(tmp_path / "none.db", spec, infeasible), tmp_path / "r")
    rob = report.summary.robustness
    assert rob.best_lr.isna().all() and rob["rank"].tolist() == [1, 2]
    assert any("No learning rate of sgd, dual lr 0.01; sgd, dual lr 0.1 ended feasible" in n
               for n in report.summary.notes)
    assert len(report.summary.panels) == 2  # at the smallest final violation, whatever it is
