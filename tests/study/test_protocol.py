"""DeepOBS's second stage ([rerun_best]): once the grid is finished, each optimizer's best learning
rate (on validation, over the grid's seeds) is trained with more seeds, and the report gives the chosen
setting over all of them."""

import numpy as np
import pytest

from optimlab.errors import OptimlabError
from optimlab.report import make_report
from optimlab.report.summaries import final_metrics, second_stage_choices
from optimlab.study.results import load_results
from optimlab.study.runner import run_study
from optimlab.study.spec import parse_study
from optimlab.training import train

STUDY = """
name = "two-stages"
dataset = "lls:n=300,p=10,n_test=50"
model = "linear"
batch_size = 30
iterations = 20
optimizers = ["sgd", "adam", { name = "momentum", learning_rates = [1000.0] }]
learning_rates = [0.001, 0.01, 0.1]
seeds = [0]
device = "cpu"
[rerun_best]
seeds = [0, 1, 2]
"""


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    out = tmp_path_factory.mktemp("staged")
    outcome = run_study(parse_study(STUDY), out=out, executor="vectorized")
    return outcome, load_results(outcome.store)


def final_rows(results):
    last = results.evals.sort_values("step").groupby("run_id").last()
    return results.runs.set_index("run_id").join(last[["val_loss", "test_loss"]])


def test_the_best_learning_rate_on_the_grid_seeds_is_rerun_with_the_other_seeds(staged):
    outcome, results = staged
    assert (outcome.completed, outcome.diverged) == (6 + 4, 1)  # momentum at lr 1000 diverges
    rows = final_rows(results)
    grid = rows[rows.seed == 0]
    for opt in ("sgd", "adam"):
        mine = grid[grid.optimizer == opt]
        best = mine.lr[mine.val_loss.idxmin()]  # by hand: the lowest final validation loss
        rerun = rows[(rows.optimizer == opt) & (rows.seed > 0)]
        assert sorted(rerun.seed) == [1, 2] and set(rerun.lr) == {best}
    assert not (rows[rows.optimizer == "momentum"].seed > 0).any()  # no learning rate of it finished


def test_the_second_stage_runs_are_the_runs_trained_alone(staged):
    outcome, results = staged
    spec = parse_study(STUDY)
    rerun = results.runs[results.runs.seed > 0].iloc[0]
    config = next(c for c in spec.configs() if c.optimizer == rerun.optimizer and c.lr == rerun.lr)
    config.seed = int(rerun.seed)
    alone = train(config, keep_model=False)
    mine = results.evals[results.evals.run_id == rerun.run_id]
    np.testing.assert_allclose(mine.test_loss, [e["test_loss"] for e in alone.evals], rtol=1e-6)


def test_running_it_again_adds_nothing(staged, tmp_path):
    outcome, results = staged
    again = run_study(parse_study(STUDY), out=outcome.store.parent, executor="sequential")
    assert again.completed + again.diverged == len(results.runs) == 11


def test_the_report_gives_the_chosen_setting_over_all_seeds_and_the_budget_only_the_grid(staged, tmp_path):
    outcome, results = staged
    report = make_report(outcome.store, tmp_path / "r")
    rows = final_rows(results)
    robust = report.summary.robustness.set_index("optimizer")
    for opt in ("sgd", "adam"):
        rerun_lr = rows[(rows.optimizer == opt) & (rows.seed > 0)].lr.iloc[0]
        at = rows[(rows.optimizer == opt) & (rows.lr == rerun_lr)]
        assert len(at) == 3 and robust.loc[opt].best_lr == rerun_lr
        assert robust.loc[opt].best_final_test_loss == pytest.approx(at.test_loss.mean())
        assert robust.loc[opt].best_final_test_loss_std == pytest.approx(at.test_loss.std(ddof=1))
    assert any("DeepOBS's second stage" in n for n in report.summary.notes)
    # a random search of the grid draws from the grid's runs: the second stage's are not among them
    chosen, drawn = second_stage_choices(results, final_metrics(results))
    assert sorted(drawn.seed.unique()) == [0] and len(drawn) == 7
    assert chosen == {o: robust.loc[o].best_lr for o in ("sgd", "adam")}


@pytest.mark.parametrize("table, message", [
    ("[rerun_best]\nseeds = [0]\n", "are all seeds of the grid already"),
    ("[rerun_best]\nseeds = []\n", "rerun_best.seeds must be a non-empty list"),
    ("[rerun_best]\ncount = 10\n", "rerun_best is a table with seeds"),
    ('constraints = ["l2norm<=1"]\n[rerun_best]\nseeds = [1]\n', "a constrained study needs feasibility"),
])
def test_bad_second_stages_are_refused(table, message):
    head = STUDY.split("[rerun_best]")[0].replace('dataset = "lls:n=300,p=10,n_test=50"\nmodel = "linear"',
                                                  'dataset = "mnist-10k"\nmodel = "logreg"')
    with pytest.raises(OptimlabError, match=message):
        parse_study(head + table)
