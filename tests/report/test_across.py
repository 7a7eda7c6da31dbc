"""Across tasks: times to target, performance profiles and the AlgoPerf-style score, against numbers
computed by hand, on made-up stores of several tasks; and the page that shows them."""

import base64
import math
import re

import numpy as np
import pandas as pd
import pytest
from browser import needs_chromium, open_in_browser, outside_scripts
from madeup import evals, fill

from optimlab.report import make_report
from optimlab.report.across import profile, ratios, score, times_to_target
from optimlab.report.summaries import task_target
from optimlab.study.spec import parse_study

INF = math.inf


def test_ratios_profiles_and_scores_by_hand():
    # task u: a 10 steps, b 20; task v: a 40, b misses; task w: both miss
    times = pd.DataFrame({"task": ["u", "u", "v", "v", "w", "w"], "optimizer": ["a", "b"] * 3,
                          "steps": [10, 20, 40, INF, INF, INF]})
    r = ratios(times, "steps")
    assert r.tolist() == [1.0, 2.0, 1.0, INF, INF, INF]
    # B = mean over tasks of max(0, 4 - r) / 3: a: (1 + 1 + 0) / 3; b: (2/3 + 0 + 0) / 3
    assert score(r[times.optimizer == "a"]) == pytest.approx(2 / 3)
    assert score(r[times.optimizer == "b"]) == pytest.approx(2 / 9)
    assert profile(r[times.optimizer == "b"], [1.0, 1.99, 2.0, 4.0]) == pytest.approx([0, 0, 1 / 3, 1 / 3])
    # the score is the profile's mean over [1, r_max]: the same as integrating rho numerically
    taus = np.linspace(1, 4, 30001)
    rho = profile(r[times.optimizer == "b"], taus)
    assert np.trapezoid(rho, taus) / 3 == pytest.approx(2 / 9, abs=1e-3)
    assert score([1.0]) == 1.0 and score([4.0]) == 0.0 and score([INF]) == 0.0
    # one task, one optimizer: the fastest by definition when it reaches the target, else nowhere
    alone = pd.DataFrame({"task": ["u"], "optimizer": ["a"], "steps": [30.0]})
    assert ratios(alone, "steps").tolist() == [1.0] and score(ratios(alone, "steps")) == 1.0
    missed = alone.assign(steps=[INF])
    assert ratios(missed, "steps").tolist() == [INF] and profile(ratios(missed, "steps"), [4.0]) == [0.0]


def test_a_setting_takes_the_median_over_seeds_and_a_miss_or_divergence_is_infinite():
    ev = pd.DataFrame({"run_id": [1, 1, 2, 2, 3, 4, 4], "step": [10, 20, 10, 20, 10, 10, 20],
                       "wall_time": [1, 2, 1, 2, 1, 1, 2],
                       "val_accuracy": [0.5, 0.9, 0.95, 0.96, 0.1, 0.95, 0.99]})
    final = pd.DataFrame({"run_id": [1, 2, 3, 4], "optimizer": ["a", "a", "a", "b"], "lr": [0.1] * 3 + [1.0],
                          "status": ["completed", "completed", "completed", "diverged"]})
    t = times_to_target(ev, final, "val_accuracy", 0.9, higher=True)
    a, b = t.iloc[0], t.iloc[1]
    assert (a.steps, a.seconds, a.reached, a.seeds) == (20.0, 2.0, 2, 3)  # median of 20, 10, inf
    assert (b.steps, b.reached) == (INF, 0)  # diverged: never counts, whatever its rows say
    lower = times_to_target(ev.assign(val_loss=1 - ev.val_accuracy), final, "val_loss", 0.06, higher=False)
    assert lower.steps.tolist() == [INF, INF]  # a: 20 (run 2 at 0.05), inf, inf -> median inf


def test_targets_are_a_fraction_of_the_best_or_the_given_one():
    cells = pd.DataFrame({"final_val_accuracy_mean": [0.8, 0.9], "final_val_loss_mean": [0.5, 0.2]})
    assert task_target(cells, "val", True, 0.95, None) == pytest.approx(0.855)
    assert task_target(cells, "val", False, 0.8, None) == pytest.approx(0.25)  # 0.2 / 0.8
    neg = pd.DataFrame({"final_val_loss_mean": [-2.0]})
    assert task_target(neg, "val", False, 0.8, None) == pytest.approx(-1.5)  # -2 + 0.25 * 2
    assert task_target(cells, "val", True, 0.95, 0.7) == 0.7
    with pytest.raises(Exception, match="can never be reached"):
        task_target(cells, "val", True, 0.95, 1.2)


STUDY = """
name = "across"
optimizers = ["sgd", "adam"]
learning_rates = [0.01, 0.1]
seeds = [0, 1]
iterations = 30
schedules = ["cosine(warmup=0.05)"]  # one value: it names no series (sgd, not "sgd, cosine(...)")
[[tasks]]
name = "images"
dataset = "mnist-10k"
model = "logreg"
target = 0.9
[[tasks]]
name = "squares"
dataset = "lls"
model = "linear"
"""


def outcome(opt, lr, seed, task):
    """images: adam reaches 0.9 at step 10 (lr 0.1), sgd at step 20 (lr 0.1); lr 0.01 never.
    squares (validation loss): sgd falls fastest; adam at lr 0.01 never gets below 0.3."""
    if task == "images":
        fast = {"adam": [0.5, 0.92, 0.95, 0.96], "sgd": [0.5, 0.8, 0.91, 0.93]}[opt]
        val = fast if lr == 0.1 else [0.5, 0.6, 0.7, 0.8]
        return evals(val, val=val)
    loss = [1.0, 0.5, 0.4, 0.3]
    if lr == 0.1:
        loss = {"sgd": [1.0, 0.2, 0.1, 0.1], "adam": [1.0, 0.5, 0.2, 0.12]}[opt]
    rows = evals([0.0] * 4, losses=loss, val=[1 - v for v in loss])
    return [{**r, "test_accuracy": None, "val_accuracy": None} for r in rows]


@pytest.fixture
def across_store(tmp_path):
    return fill(tmp_path / "study.db", parse_study(STUDY), outcome)


def test_a_report_of_tasks_ranks_the_optimizers_across_them(across_store, tmp_path):
    report = make_report(across_store, tmp_path / "r")
    times = report.across.times.set_index(["task", "optimizer"])
    assert times.loc[("images", "adam")].steps == 10 and times.loc[("images", "sgd")].steps == 20
    assert times.loc[("images", "sgd")].ratio_steps == 2.0
    # squares: the target is the best mean final validation loss (0.1, sgd at 0.1) / 0.95
    assert times.loc[("squares", "sgd")].target == pytest.approx(0.1 / 0.95)
    assert times.loc[("squares", "sgd")].steps == 20 and times.loc[("squares", "adam")].steps == INF
    scores = report.across.scores.set_index("optimizer")
    # adam: images r = 1, squares miss -> (1 + 0) / 2; sgd: r = 2 -> 2/3, r = 1 -> 1: (2/3 + 1) / 2
    assert scores.loc["adam"].score_steps == pytest.approx(0.5)
    assert scores.loc["sgd"].score_steps == pytest.approx(5 / 6)
    assert report.across.scores.optimizer.tolist() == ["sgd", "adam"]
    assert scores.loc["adam"].tasks_reached == 1 and scores.loc["sgd"].mean_rank == 1.5
    # each task is selected on its own metric: accuracy for images, validation loss for squares
    images, squares = report.tasks["images"], report.tasks["squares"]
    assert images.target_accuracy == 0.9 and images.robustness.best_lr.tolist() == [0.1, 0.1]
    assert squares.robustness.set_index("optimizer").best_final_val_loss.to_dict() == {
        "sgd": pytest.approx(0.1), "adam": pytest.approx(0.12)}
    # one colour per optimizer in every task
    assert images.colours == squares.colours and len(set(images.colours.values())) == 2


def test_the_page_of_tasks_has_the_tables_and_figures(across_store, tmp_path):
    report = make_report(across_store, tmp_path / "r")
    page = report.html.read_text()
    for heading in ("<h2>Tasks</h2>", "<h2>Ranking across tasks</h2>", "<h3>Scores</h3>",
                    "<h3>Each task and optimizer</h3>", "<h2>Task images</h2>", "<h2>Task squares</h2>"):
        assert heading in page
    assert "validation accuracy 0.9 (given)" in page and "validation loss 0.1053" in page
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", outside_scripts(page))
    assert len(images) == len(report.figures) >= 5
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "profiles" in report.figures and "images/sensitivity" in report.figures
    md = report.markdown.read_text()
    assert "| 1 | sgd | 0.833 | " in md and "](images/sensitivity.png)" in md


def test_a_task_with_nothing_finished_is_left_out_and_said(tmp_path):
    def half(opt, lr, seed, task):
        return outcome(opt, lr, seed, task) if task == "images" else None

    db = fill(tmp_path / "study.db", parse_study(STUDY), half)
    report = make_report(db, tmp_path / "r")
    assert list(report.tasks) == ["images"]
    assert any("No run of squares has finished yet" in n for n in report.across.notes)
    assert report.across.scores.set_index("optimizer").score_steps.to_dict() == {
        "adam": 1.0, "sgd": pytest.approx(2 / 3)}


def test_the_page_says_which_validation_set_chose():
    from types import SimpleNamespace

    from optimlab.report.page import _chosen

    summary = SimpleNamespace(split="val", split_label="validation", target_accuracy=None)
    assert "validation set (10% of the training set" in _chosen(summary, 0.1)
    assert "validation set (10000 examples of the training set" in _chosen(summary, 10000)
    assert "validation set (the data set's own)" in _chosen(summary, None)  # quadratic_deep's draw 44
    assert "chosen on the test set" in _chosen(SimpleNamespace(split="test", target_accuracy=None), None)


@needs_chromium
def test_the_page_of_tasks_loads_in_a_real_browser_with_every_image_decoded(across_store, tmp_path):
    report = make_report(across_store, tmp_path / "r")
    title, console = open_in_browser(report.html, tmp_path)
    assert title == f"IMAGES {len(report.figures)}/{len(report.figures)} ERRORS 0", console
    assert not console, console


def test_the_tuning_budget_across_tasks_is_the_mean_relative_expected_best(across_store, tmp_path):
    report = make_report(across_store, tmp_path / "r")
    t = report.across.tuning.set_index(["optimizer", "k"])
    # one draw: the mean final metric of the grid's 4 runs. images (accuracy): the best run 0.96;
    # squares (validation loss): the best run 0.1, relative best / expected
    assert t.loc[("sgd", 1)].relative == pytest.approx((0.865 / 0.96 + 0.1 / 0.2) / 2)
    assert t.loc[("adam", 1)].relative == pytest.approx((0.88 / 0.96 + 0.1 / 0.21) / 2)
    # two draws of squares' sgd: the lower of two of {0.1, 0.1, 0.3, 0.3} is 0.3 only when both are
    assert t.loc[("sgd", 2)].relative == pytest.approx(
        ((0.93 * 0.75 + 0.8 * 0.25) / 0.96 + 0.1 / (0.1 * 0.75 + 0.3 * 0.25)) / 2)
    assert set(t.tasks) == {2} and t.reset_index().k.max() == 4
    assert "tuning_across" in report.figures
    assert "Tuning budget across tasks" in report.html.read_text()
