import re
import sqlite3

import pytest
from browser import needs_chromium, open_in_browser, outside_scripts
from madeup import evals

from optimlab.cli import main
from optimlab.errors import OptimlabError
from optimlab.report import make_report, summarize
from optimlab.study.results import load_results
from optimlab.study.store import SCHEMA_VERSION


def test_the_report_is_self_contained_and_complete(made_up_store, tmp_path):
    report = make_report(made_up_store, tmp_path / "r")
    assert set(report.figures) == {"sensitivity", "relative_sensitivity", "learning_curves", "convergence",
                                   "heatmap", "tuning"}
    page = report.html.read_text()
    images = re.findall(r"<img src='([^']*)'", page)
    assert len(images) == 6 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"(src|href)=['\"](http|//|file:)", outside_scripts(page))  # opens offline
    assert not re.search(r"<script[^>]+src=", page)  # every script inlined (Plotly's too)
    assert "3 runs diverged" in page and "<td>sgd</td>" in page and "Study file" in page
    assert "Tuning budget (expected best final test accuracy of k random runs)" in page
    assert "best of 15" in page
    md = report.markdown.read_text()
    assert md.startswith("# Study made-up\n") and "<title>Study made-up</title>" in page
    for png in re.findall(r"\]\(([^)]+\.png)\)", md):
        assert (tmp_path / "r" / png).stat().st_size > 1000
    assert "| 1 | sgd |  | 0.01 |" in md


def test_the_command_line_prints_where_the_page_is(made_up_store, tmp_path, capsys):
    assert main(["report", str(made_up_store), "--out", str(tmp_path / "r2")]) == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'r2' / 'report.html'}" in out and "note: 3 runs diverged" in out


def test_bad_stores_are_one_clear_message(tmp_path, make_store, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a database")
    assert main(["report", str(text)]) == 2
    assert "is not a study store" in capsys.readouterr().err
    with pytest.raises(OptimlabError, match="none of its 2 runs has finished yet"):
        make_report(make_store(["sgd"], [0.1], [0, 1], lambda o, lr, s: None, name="empty.db"))
    newer = make_store(["sgd"], [0.1], [0], lambda o, lr, s: evals([0.1, 0.9]), name="newer.db")
    conn = sqlite3.connect(newer)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    with pytest.raises(OptimlabError, match="written by a newer optimlab"):
        make_report(newer)
    with pytest.raises(OptimlabError, match="target fraction must be in"):
        make_report(newer, target_fraction=1.5)


@needs_chromium
def test_the_page_loads_in_a_real_browser_with_every_image_decoded(made_up_store, tmp_path):
    report = make_report(made_up_store, tmp_path / "r")
    title, console = open_in_browser(report.html, tmp_path)
    assert title == "IMAGES 6/6 ERRORS 0", console
    assert not console, console  # the page itself logs nothing


def test_a_regression_study_ranks_by_the_loss_on_its_selection_split(make_store, tmp_path):
    def no_accuracy(o, lr, s):  # the training loss is best at lr 0.1, the test loss at lr 1
        rows = evals([0.0, 0.0], losses=[1.0, 0.1 * lr + 0.01 * s])
        return [{**r, "test_accuracy": None, "test_loss": 1.0 - 0.1 * lr - 0.01 * s} for r in rows]

    db = make_store(["sgd", "adam"], [0.1, 1.0], [0, 1], no_accuracy, name="regression.db")
    report = make_report(db, tmp_path / "r")
    md = report.markdown.read_text()
    assert "| rank | optimizer | tied with the best | best lr | final test loss |" in md
    assert any(f"| 1 | {o} |  | 1 (grid edge) | 0.8950 |" in md for o in ("sgd", "adam"))
    assert "no convergence target" in md


def test_the_page_says_what_the_settings_were_chosen_on(make_store, tmp_path):
    def outcome(opt, lr, seed):
        return evals([0.1, 0.8 + lr], val=[0.1, 0.9 - lr])  # validation and test disagree on the best

    db = make_store(["sgd"], [1e-3, 1e-2], [0, 1], outcome)
    page = make_report(db, tmp_path / "r").html.read_text()
    assert "Best settings are chosen on the validation set" in page
    assert "final validation accuracy (chosen on)" in page and "final test accuracy (at it)" in page
    assert "Convergence target: validation accuracy" in page
    md = (tmp_path / "r" / "report.md").read_text()
    # chosen on validation (the test set favours 0.01), at an end of the grid, the seeds alike
    assert "| 1 | sgd |  | 0.001 (grid edge) | 0.8990 [0.8990, 0.8990] |" in md
    plain = make_report(make_store(["sgd"], [1e-3, 1e-2], [0], lambda o, lr, s: evals([0.1, 0.8]),
                                   name="t.db"), tmp_path / "t").html.read_text()
    assert "chosen on the test set (no validation set)" in plain


def test_one_colour_per_optimizer_and_no_empty_sensitivity_figure_for_one_learning_rate(make_store, tmp_path):
    db = make_store(["sgd", "adam", "rmsprop"], [0.1], [0], lambda o, lr, s: evals([0.1, 0.8]), name="one.db")
    report = make_report(db, tmp_path / "one")
    assert "sensitivity" not in report.figures and "learning_curves" in report.figures
    summary = summarize(load_results(db))
    assert list(summary.colours) == ["sgd", "adam", "rmsprop"]  # the study's order, in every figure
    assert len(set(summary.colours.values())) == 3
    assert summary.loss_label == "training loss"
