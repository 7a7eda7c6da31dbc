import math

import numpy as np
import pytest
from madeup import SGD_FINAL, evals

from optimlab.errors import OptimlabError
from optimlab.report.summaries import bootstrap_interval, expected_best, summarize, tuning_budget
from optimlab.study.results import load_results


def test_cells_are_means_and_stds_over_the_seeds(made_up_store):
    s = summarize(load_results(made_up_store))
    cell = s.cells.set_index(["optimizer", "lr"])
    for lr, finals in SGD_FINAL.items():
        assert cell.loc[("sgd", lr), "final_test_accuracy_mean"] == pytest.approx(np.mean(finals))
        assert cell.loc[("sgd", lr), "final_test_accuracy_std"] == pytest.approx(np.std(finals, ddof=1))
        assert cell.loc[("sgd", lr), "final_train_loss_mean"] == pytest.approx(1 - np.mean(finals))
    diverged = cell.loc[("sgd", 1.0)]
    assert diverged.diverged == 3 and math.isnan(diverged.final_test_accuracy_mean)
    assert (s.final.query("status == 'diverged'").diverged_at == 7).all()


def test_convergence_is_the_first_epoch_at_the_target_and_never_is_not_zero(made_up_store):
    s = summarize(load_results(made_up_store))
    best_mean = np.mean(SGD_FINAL[1e-2])
    assert s.target_accuracy == pytest.approx(0.95 * best_mean)
    cell = s.cells.set_index(["optimizer", "lr"])
    # sgd at 1e-2: epoch-2 accuracies are 0.96 * final = 0.864, 0.8736, 0.8544 vs target 0.855
    reached = [2.0 if 0.96 * f >= s.target_accuracy else 3.0 for f in SGD_FINAL[1e-2]]
    assert cell.loc[("sgd", 1e-2), "reached_target"] == 3
    assert cell.loc[("sgd", 1e-2), "epochs_to_target_mean"] == pytest.approx(np.mean(reached))
    assert cell.loc[("sgd", 1e-2), "seconds_to_target_mean"] == pytest.approx(2 * np.mean(reached))
    # adam never reaches it: counted as not reaching, no number
    assert cell.loc[("adam", 1e-3), "reached_target"] == 0
    assert math.isnan(cell.loc[("adam", 1e-3), "epochs_to_target_mean"])
    assert cell.loc[("sgd", 1e-4), "reached_target"] == 0


def test_robustness_widths_best_learning_rates_and_ranking(made_up_store):
    s = summarize(load_results(made_up_store))
    rob = s.robustness.set_index("optimizer")
    assert rob.loc["sgd", "best_lr"] == 1e-2
    # within 1 point of 0.90 (0.89 and above): 1e-3 (0.892) and 1e-1 (0.895); towards 1e-4 (0.50) the
    # curve crosses 0.89 at 0.002 / 0.392 of the decade; 1.0 diverged: the range ends at 1e-1
    assert rob.loc["sgd", "width_accuracy_decades"] == pytest.approx(2 + 0.002 / 0.392)
    # loss within 1 % of the best (0.101 and below; 0.10 at 1e-2): towards 1e-3 (0.108) the curve
    # crosses it at 1/8 of the decade, towards 1e-1 (0.105) at 1/5
    assert rob.loc["sgd", "width_loss_decades"] == pytest.approx(0.125 + 0.2)
    assert rob.loc["sgd", "diverged_runs"] == 3
    # adam is flat over all five learning rates: 4 decades, ranked below sgd
    assert rob.loc["adam", "width_accuracy_decades"] == pytest.approx(4.0)
    assert rob.loc["adam", "width_loss_decades"] == pytest.approx(4.0)
    assert s.robustness.optimizer.tolist() == ["sgd", "adam"] and s.robustness["rank"].tolist() == [1, 2]
    assert any("3 runs diverged" in n for n in s.notes)


def test_learning_curves_are_at_the_best_learning_rate(made_up_store):
    s = summarize(load_results(made_up_store))
    sgd = s.curves[s.curves.optimizer == "sgd"]
    assert set(sgd.lr) == {1e-2} and sgd.epoch.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert sgd.accuracy_mean.iloc[-1] == pytest.approx(np.mean(SGD_FINAL[1e-2]))


def test_a_single_learning_rate_has_no_width_and_says_so(make_store):
    db = make_store(["sgd", "adam"], [0.1], [0, 1], lambda o, lr, s: evals([0.1, 0.5, 0.9 - 0.01 * s]))
    s = summarize(load_results(db))
    assert s.robustness.width_accuracy_decades.isna().all()
    assert any("not defined for adam, sgd" in n for n in s.notes)


def test_an_unfinished_study_is_summarized_and_its_missing_runs_named(make_store):
    db = make_store(["sgd"], [0.1, 0.01], [0, 1],
                    lambda o, lr, s: None if (lr, s) == (0.01, 1) else evals([0.1, 0.8]))
    s = summarize(load_results(db))
    assert len(s.missing) == 1 and s.missing.iloc[0].status == "pending"
    assert s.cells.set_index("lr").loc[0.01, "seeds"] == 1
    assert any("1 of 4 runs are not finished (1 pending)" in n for n in s.notes)


def test_an_optimizer_that_always_diverged_is_ranked_last(make_store):
    db = make_store(["sgd", "adam"], [0.1, 1.0], [0],
                    lambda o, lr, s: ("diverged", 3, evals([0.1])) if o == "adam" else evals([0.1, 0.9]))
    s = summarize(load_results(db))
    assert s.robustness.optimizer.tolist() == ["sgd", "adam"]
    adam = s.robustness.set_index("optimizer").loc["adam"]
    assert math.isnan(adam.best_lr) and adam.diverged_runs == 2


def test_settings_are_chosen_on_the_validation_set_and_test_numbers_reported_at_them(make_store):
    # sgd: lr 1e-2 is best on test, 1e-3 on validation (as a test set can flatter a setting);
    # adam: 1e-3 best on both, but behind sgd on validation
    final = {("sgd", 1e-3): (0.90, 0.88), ("sgd", 1e-2): (0.86, 0.91), ("adam", 1e-3): (0.85, 0.95),
             ("adam", 1e-2): (0.80, 0.80)}

    def outcome(opt, lr, seed):
        v, t = final[(opt, lr)]
        return evals([0.1, t / 2, t], val=[0.1, v / 2, v])

    db = make_store(["sgd", "adam"], [1e-3, 1e-2], [0, 1], outcome)
    s = summarize(load_results(db))
    assert s.split == "val" and s.split_label == "validation"
    rob = s.robustness.set_index("optimizer")
    assert rob.loc["sgd", "best_lr"] == 1e-3 and rob.loc["adam", "best_lr"] == 1e-3
    assert rob.loc["sgd", "best_final_val_accuracy"] == pytest.approx(0.90)
    assert rob.loc["sgd", "best_final_test_accuracy"] == pytest.approx(0.88)  # reported at the choice
    assert s.robustness.optimizer.tolist() == ["sgd", "adam"]  # ranked on validation (test: adam first)
    assert s.target_accuracy == pytest.approx(0.95 * 0.90)  # of the best validation accuracy
    assert not any("no validation set" in n for n in s.notes)
    on_test = summarize(load_results(make_store(["sgd"], [1e-3, 1e-2], [0], lambda o, lr, seed: evals(
        [0.1, final[(o, lr)][1]]), name="t.db")))
    assert on_test.split == "test" and on_test.robustness.best_lr.tolist() == [1e-2]
    assert any("no validation set" in n for n in on_test.notes)


def test_the_bootstrap_interval_of_a_mean_over_seeds():
    assert bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)  # means 0, 0.5, 1 with 1/4, 1/2, 1/4
    assert bootstrap_interval([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7), abs=1e-15)
    assert all(math.isnan(v) for v in bootstrap_interval([0.9])) and bootstrap_interval([]) != (0, 0)
    lo, hi = bootstrap_interval([0.88, 0.90, 0.91, 0.95])
    assert 0.88 < lo < np.mean([0.88, 0.90, 0.91, 0.95]) < hi < 0.95
    assert bootstrap_interval([0.88, 0.90, 0.91, 0.95]) == (lo, hi)  # a fixed seed: the same every time


def test_ties_and_a_best_learning_rate_at_the_edge_of_its_grid_are_said(make_store):
    finals = {"sgd": [0.90, 0.92, 0.91], "adam": [0.905, 0.915, 0.925], "rmsprop": [0.70, 0.71, 0.72]}

    def outcome(opt, lr, seed):
        return evals([0.1, finals[opt][seed] - (0.1 if lr == 1e-3 else 0)])

    s = summarize(load_results(make_store(["sgd", "adam", "rmsprop"], [1e-3, 1e-2], [0, 1, 2], outcome)))
    rob = s.robustness.set_index("optimizer")
    assert rob.tied_with_best.to_dict() == {"adam": True, "sgd": True, "rmsprop": False}
    assert rob.loc["adam", "rank"] == 1 and rob.best_at_edge.all()  # 1e-2, the largest lr of each grid
    assert any("Tied with the best" in n and "adam, sgd" in n for n in s.notes)
    assert any("sgd: its best learning rate 0.01 is the largest of its grid" in n for n in s.notes)
    cell = s.cells.set_index(["optimizer", "lr"]).loc[("sgd", 1e-2)]
    assert (cell.final_test_accuracy_low, cell.final_test_accuracy_high) == bootstrap_interval(finals["sgd"])


def test_the_expected_best_of_k_random_runs_against_hand_computed_values():
    # 0.1, 0.5, 0.9: one draw, the mean; two draws, max of 9 equally likely pairs
    assert expected_best([0.5, 0.1, 0.9], 1) == pytest.approx(0.5)
    pairs = [max(a, b) for a in (0.1, 0.5, 0.9) for b in (0.1, 0.5, 0.9)]
    assert expected_best([0.5, 0.1, 0.9], 2) == pytest.approx(sum(pairs) / 9)
    assert expected_best([0.5, 0.1, 0.9], 200) == pytest.approx(0.9)  # many draws: the best


def test_the_tuning_budget_view_of_a_study(made_up_store):
    s = summarize(load_results(made_up_store))
    sgd = s.tuning[s.tuning.optimizer == "sgd"]
    assert sgd.k.tolist() == list(range(1, 16)) and set(sgd.runs) == {15}  # 5 lrs x 3 seeds
    finals = [v for lr in SGD_FINAL for v in SGD_FINAL[lr]] + [0.0] * 3  # lr 1 diverged: counted as 0
    assert sgd.expected_best.iloc[0] == pytest.approx(np.mean(finals))
    assert sgd.expected_best.iloc[4] == pytest.approx(expected_best(finals, 5))
    assert sgd.expected_best.is_monotonic_increasing
    with pytest.raises(OptimlabError, match="a tuning budget of 16 draws is more than the 15 runs"):
        tuning_budget(s.final, k_max=16)


def test_without_accuracy_the_tuning_budget_is_the_expected_lowest_loss(make_store):
    # final test losses: sgd 0.3 (lr 0.1), 0.2 (lr 1), adam 0.5 (lr 0.1), diverged at lr 1
    losses = {("sgd", 0.1): 0.3, ("sgd", 1.0): 0.2, ("adam", 0.1): 0.5}

    def outcome(opt, lr, seed):
        if (opt, lr) not in losses:
            return "diverged", 5, evals([0.0], losses=[1.0])[:0]
        rows = evals([0.0, 0.0], losses=[1.0, losses[opt, lr]])
        return [{**r, "test_accuracy": None} for r in rows]

    s = summarize(load_results(make_store(["sgd", "adam"], [0.1, 1.0], [0], outcome)))
    t = s.tuning.set_index(["optimizer", "k"]).expected_best
    assert t["sgd", 1] == pytest.approx(0.25) and t["sgd", 2] == pytest.approx((0.3 + 0.2 * 3) / 4)
    # the diverged run counts as the worst final loss of any run (0.5): min of two draws of {0.5, 0.5}
    assert t["adam", 1] == pytest.approx(0.5) and t["adam", 2] == pytest.approx(0.5)
    assert s.metric == "loss"


def test_a_width_is_measured_where_the_curve_crosses_the_threshold_not_at_grid_points(make_store):
    # one decade apart, only the best within 1 point: the old grid-point width was 0
    final = {1e-3: 0.85, 1e-2: 0.90, 1e-1: 0.86}
    s = summarize(load_results(make_store(["sgd"], list(final), [0], lambda o, lr, seed: evals(
        [0.1, final[lr]]))))
    # 0.89 is crossed 0.01 / 0.05 of the decade below 1e-2 and 0.01 / 0.04 above it
    assert s.robustness.width_accuracy_decades.iloc[0] == pytest.approx(0.2 + 0.25)


def test_without_accuracy_ties_are_intervals_of_the_validation_loss_overlapping_the_lowest(make_store):
    losses = {"sgd": [0.10, 0.11, 0.12], "adam": [0.115, 0.125, 0.135], "adagrad": [0.5, 0.51, 0.52]}

    def outcome(opt, lr, seed):
        loss = losses[opt][seed]
        rows = evals([0.0, 0.0], losses=[1.0, loss], val=[0.0, 1.0 - loss])  # val_loss = loss
        return [{**r, "test_accuracy": None, "val_accuracy": None} for r in rows]

    s = summarize(load_results(make_store(list(losses), [0.1], [0, 1, 2], outcome)))
    robust = s.robustness.set_index("optimizer")
    assert robust.index.tolist() == ["sgd", "adam", "adagrad"]  # lowest validation loss first
    low, high = bootstrap_interval(losses["sgd"]), bootstrap_interval(losses["adam"])
    assert robust.loc["sgd"].best_final_val_loss_high == pytest.approx(low[1])
    assert low[1] >= high[0]  # sgd's interval reaches above adam's lower end: a tie
    assert robust.tied_with_best.tolist() == [True, True, False]
