import json

from optimlab.cli import main


def test_picture_of_least_squares_is_a_straight_line(tmp_path, capsys):
    out = tmp_path / "pic.png"
    assert main(["localflow", "picture", "--dataset", "lls:n=200,p=10,cond=10", "--model", "linear",
                 "--batch-size", "20", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "R^2 1.000000" in text and out.stat().st_size > 5000


def test_schedule_prints_one_learning_rate_per_epoch_and_keeps_the_records(tmp_path, capsys):
    out = tmp_path / "records.json"
    assert main(["localflow", "schedule", "--dataset", "lls:n=200,p=10,cond=100", "--model", "linear",
                 "--batch-size", "20", "--lr", "50", "--epochs", "2", "--every", "5",
                 "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["epoch 1", "epoch 2"]
    run = json.loads(out.read_text())
    assert len(run["records"]) == 2 * 10 and len(run["hs"]) == 2
    # at h = 50 the scheduler never lets the step exceed 1 / curvature: no blow-up
    assert all(r["lr"] <= 50 for r in run["records"]) and run["train_loss"] < 1.0


def test_bad_flow_time_is_one_message(capsys):
    assert main(["localflow", "schedule", "--dataset", "lls", "--model", "linear", "--lr", "-1"]) == 2
    assert "optimlab: error:" in capsys.readouterr().err


def test_a_run_whose_loss_becomes_non_finite_stops_and_says_so(monkeypatch, capsys):
    import dataclasses

    import optimlab.engine.localflow_runs as runs
    from optimlab.data import load_dataset

    data = load_dataset("lls:n=200,p=10,cond=100")
    # inputs of 1e20: the squared residuals overflow float32 on the first batch
    huge = dataclasses.replace(data, x_train=data.x_train * 1e20)
    run = runs.schedule_run(huge, "linear", lr=1.0, epochs=2, batch_size=20)
    assert run["diverged_at"] == 1 and run["records"] == [] and run["hs"] == []
    fine = runs.schedule_run(data, "linear", lr=1.0, epochs=2, batch_size=20)
    assert fine["diverged_at"] is None and len(fine["records"]) == 20
    monkeypatch.setattr(runs, "load_dataset", lambda name: huge)
    assert main(["localflow", "schedule", "--dataset", "lls", "--model", "linear", "--batch-size", "20"]) == 0
    assert capsys.readouterr().out.startswith("diverged at step 1 (non-finite batch loss)")
