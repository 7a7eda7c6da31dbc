"""The learning-rate range test: its curve equals torch-lr-finder's on the same model, batches and
schedule; its suggestions on a made-up curve are the hand-computed ones; the model, optimizer and the
caller's random state are left as they were; bad settings are refused before anything is written."""

import json
import math
import re

import pytest
import torch
from test_training import small
from torch.utils.data import DataLoader, TensorDataset

from optimlab.cli import main
from optimlab.data import epoch_batches
from optimlab.errors import OptimlabError
from optimlab.rangetest import range_test, suggest
from optimlab.registry import build_optimizer
from optimlab.tasks import TASKS
from optimlab.training import TrainConfig, init_model


@pytest.fixture(scope="module")
def digits(mnist10k):
    return small(mnist10k, 2000)


def seeded_order(data, batch_size: int, seed: int, epochs: int) -> list[list[int]]:
    """The engine's batch order of ``epochs`` passes, as index lists."""
    order = torch.Generator().manual_seed(seed)
    return [idx.tolist() for _ in range(epochs) for idx in epoch_batches(data.num_train, batch_size, order)]


@pytest.mark.parametrize("optimizer, end", [("momentum", 10.0), ("adam", 3.0)])
def test_lr_find_draws_the_curve_torch_lr_finder_draws(digits, optimizer, end):
    lr_finder = pytest.importorskip("torch_lr_finder", reason="torch-lr-finder is not installed")
    from optimlab import lr_find

    config = TrainConfig(model="mlp", optimizer=optimizer, batch_size=50, seed=3, device="cpu")
    ours = lr_find(config, data=digits, start=1e-5, end=end, steps=60)
    if optimizer == "momentum":  # both sweeps stop at the same step
        assert ours.stopped == "diverged" and 20 < len(ours.lrs) < 60

    model = init_model(config, digits)
    opt = build_optimizer(optimizer, model.parameters(), lr=1e-5)
    loader = DataLoader(TensorDataset(digits.x_train, digits.y_train),
                        batch_sampler=seeded_order(digits, 50, seed=3, epochs=2))
    finder = lr_finder.LRFinder(model, opt, TASKS["classification"].loss, device="cpu")
    finder.range_test(loader, start_lr=1e-5, end_lr=end, num_iter=60, step_mode="exp", smooth_f=0.05,
                      diverge_th=5)
    assert ours.lrs == pytest.approx(finder.history["lr"], rel=1e-12)
    assert ours.smoothed == pytest.approx(finder.history["loss"], rel=1e-6)
    assert ours.settings["optimizer"] == optimizer
    if optimizer == "momentum":
        assert ours.notes[-1].startswith(f"stopped at step {len(ours.lrs)} of 60")


def test_suggestions_on_a_made_up_curve_are_the_hand_computed_ones():
    lrs = [10 ** (-5 + k / 4) for k in range(21)]
    # two points either side are skipped; the 17 left: a long descent to 0.9, then a blow-up
    left = [5, 4.99, 4.98, 4.97, 4.9, 4.5, 3.5, 2.0, 1.5, 1.2, 1.0, 0.9, 1.5, 3, 6, 9, 12]
    curve = [9.0, 9.0] + left + [20.0, 30.0]
    got = suggest(lrs, curve, skip_start=2, skip_end=2)
    # steepest: central differences (2.0 - 4.5) / 2 = -1.25 at the 7th point left (index 6), the lowest
    assert got["steepest"] == lrs[2 + 6]
    # valley: the longest strictly decreasing subsequence is points 0..11 (L = 12), so begin = 11 - 12
    # = -1, span = 12 / 3 = 4, index -1 + 4 + 2 = 5
    assert got["valley"] == lrs[2 + 5]
    # minimum / 10: 0.9, point 11
    assert got["minimum/10"] == lrs[2 + 11] / 10
    # a rising curve: the valley is its first point (fastai's index -1 would wrap to the last)
    assert suggest(lrs[:8], [1, 2, 3, 4, 5, 6, 7, 8], 0, 0)["valley"] == lrs[0]
    # too short to suggest from once trimmed
    assert suggest(lrs[:5], [3, 2, 1, 2, 3], 2, 2) == {"steepest": None, "valley": None, "minimum/10": None}


def test_the_model_optimizer_and_random_state_are_left_as_they_were(digits):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.Dropout(0.3),
                                torch.nn.BatchNorm1d(64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(digits.x_train[:8]).sum().backward()
    opt.step()  # a state to keep
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: v.clone() for k, v in opt.state_dict()["state"][0].items()}
    rng = torch.get_rng_state()
    batches = [(digits.x_train[i:i + 100], digits.y_train[i:i + 100]) for i in range(0, 2000, 100)]
    result = range_test(model, opt, TASKS["classification"].loss, batches, 1e-4, 1.0, 20)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) > 10
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, state[k]) for k, v in opt.state_dict()["state"][0].items())
    assert opt.param_groups[0]["lr"] == 1e-3 and not model.training
    assert torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(OptimlabError, match="ran out of batches after 20 of 30 steps"):
        range_test(model, opt, TASKS["classification"].loss, batches, 1e-4, 1e-3, 30)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_non_finite_loss_stops_the_sweep():
    from optimlab import lr_find

    config = TrainConfig(dataset="lls:n=2000,p=20", model="linear", optimizer="sgd", batch_size=100,
                         device="cpu")  # a least-squares loss grows as the square of the step: inf
    result = lr_find(config, start=1e-3, end=1e12, steps=40, diverge=1e300, skip_start=2, skip_end=0)
    assert result.stopped == "non-finite" and not math.isfinite(result.losses[-1])
    assert all(math.isfinite(v) for v in result.losses[:-1])
    assert result.suggestions["minimum/10"] is not None
    # 40 steps of 100 are 2 passes over 2000 examples: said so
    assert result.notes[0] == ("the sweep's 40 steps are 2 passes over the 2000 training examples (20 "
                               "batches a pass): batches repeat")


@pytest.mark.parametrize("flags, message", [
    (["--start", "1", "--end", "0.1"], r"start \(1\) must be below end \(0.1\)"),
    (["--start", "0"], "start learning rate must be a finite number > 0"),
    (["--steps", "9"], "at least 10 steps"),
    (["--smooth", "1"], r"smooth is the weight .* in \[0, 1\)"),
    (["--diverge", "1"], "diverge is a finite factor > 1"),
    (["--skip-start", "50", "--skip-end", "49"], "leave fewer than 3 of the 100 points"),
    (["--optimizer", "localflow-sgd"], "localflow-sgd sets its own learning rate"),
    (["--optimizer", "nosuch"], "unknown optimizer 'nosuch'"),
    (["--batch-size", "100000"], "batch size 100000 is larger than the training set"),
])
def test_bad_settings_are_refused_before_anything_is_written(flags, message, tmp_path, capsys):
    assert main(["lr-find", "--out", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("optimlab: error:") and re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_bad_settings_name_what_is_valid(capsys, tmp_path):
    for flags, message in [(["--start", "1", "--end", "0.1"], "must be below end"),
                           (["--steps", "9"], "a few hundred is usual")]:
        main(["lr-find", "--out", str(tmp_path / "out"), *flags])
        assert message in capsys.readouterr().err


def test_the_command_writes_the_curve_and_the_figure(tmp_path, capsys):
    out = tmp_path / "lrf"
    assert main(["lr-find", "--dataset", "mnist-10k:0,1", "--model", "logreg", "--optimizer", "sgd",
                 "--steps", "30", "--start", "1e-4", "--end", "100", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    saved = json.loads((out / "lr_find.json").read_text())
    assert saved["format"] == "optimlab.lr_find/1" and saved["settings"]["steps"] == 30
    assert len(saved["lr"]) == len(saved["loss"]) == len(saved["smoothed"]) <= 30
    assert saved["lr"][0] == pytest.approx(1e-4)
    for name in ("steepest", "valley", "minimum/10"):
        assert f"{name:<11} {saved['suggestions'][name]:.3g}" in lines
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lines[-1] == f"curve in {out / 'lr_find.json'}, figure in {out / 'lr_find.png'}"


def test_lr_find_takes_the_users_own_module_and_optimizer_class(digits):
    from optimlab import lr_find

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.BatchNorm1d(16),
                              torch.nn.ReLU(), torch.nn.Linear(16, 10))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = lr_find(model=net, optimizer=torch.optim.RMSprop, batch_size=100, device="cpu", data=digits,
                     start=1e-5, end=1.0, steps=20, skip_start=2, skip_end=2)
    assert result.settings["optimizer"] == "rmsprop" and len(result.lrs) >= 10
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # a copy was trained
    first = torch.randperm(2000, generator=torch.Generator().manual_seed(0))[:100]  # seed 0's first batch
    with torch.no_grad():
        loss = TASKS["classification"].loss(net.train()(digits.x_train[first]), digits.y_train[first])
    assert result.losses[0] == pytest.approx(float(loss), rel=1e-6)
