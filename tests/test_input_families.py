"""Families of bad input, tried everywhere they can be given: every numeric option of every command and
every numeric field of a study file with strings, booleans, NaN, infinities, negatives, zero and
fractions; names with NUL, '.', '..', path separators and 300 characters; files that are empty, binary,
folders or missing. Each is refused with one plain message (exit status 2, no traceback) before
anything is written, unless the value is valid there (listed in VALID), when the command runs.

The numeric options are read from the command line's own parser, so an option added later is tried
too (and needs a base command here)."""

import argparse
import contextlib
import io
import os
from pathlib import Path

import pytest

from optimlab.cli import _parser, main
from optimlab.errors import OptimlabError
from optimlab.study import run_study
from optimlab.study.spec import parse_study

FIXTURES = Path(__file__).parent / "fixtures" / "v0_1"
NUMBERS = ["abc", "nan", "inf", "-inf", "-1", "0", "1.5", "1e400", ""]
NAMES = ["a\0b", ".", "..", "a/b", "../x", "x" * 300, ""]
STUDY = """name = "family"
dataset = "mnist-10k:0,1"
model = "mlp"
batch_size = 100
iterations = 3
seeds = [0]
learning_rates = [0.1]
optimizers = ["sgd"]
"""
TRAIN = ["train", "--dataset", "mnist-10k:0,1", "--model", "logreg", "--iterations", "3", "-q"]
# a quick valid command for each command with numeric options; {t}: a fresh folder
BASES = {
    "train": [*TRAIN, "--out", "{t}/out"],
    "study run": ["study", "run", "{t}/study.toml", "--out", "{t}/out", "-q"],
    "report": ["report", "{t}/study.db", "--out", "{t}/out"],
    "localflow picture": ["localflow", "picture", "--out", "{t}/out.png"],
    "localflow schedule": ["localflow", "schedule", "--dataset", "lls", "--model", "linear", "--epochs", "1",
                           "--out", "{t}/out.json"],
    "lr-find": ["lr-find", "--dataset", "mnist-10k:0,1", "--model", "logreg", "--steps", "12", "--skip-start",
                "2", "--skip-end", "2", "--out", "{t}/out"],
    "dashboard": ["dashboard", "{t}/study.db"],  # (serving stops at once here: see test_numeric_options)
}
# options that need another base: the budget given as epochs, a hidden layer, constraints
EXTRA = {
    ("train", "--epochs"): ["--dataset", "mnist-10k:0,1", "--model", "logreg", "-q", "--out", "{t}/out"],
    ("train", "--hidden"): ["--model", "mlp"],
    ("train", "--dual-lr"): ["--constraint", "l2norm<=1"],
    ("train", "--penalty"): ["--constraint", "l2norm<=1", "--formulation", "augmented_lagrangian"],
    ("lr-find", "--hidden"): ["--model", "mlp"],
}
NUMERIC_TEXT = {"--lr", "--dual-lr", "--validation"}  # numbers read by a function of their own
VALID = {
    ("train", "--seed"): {"0"}, ("train", "--lr"): {"1.5"}, ("train", "--dual-lr"): {"1.5"},
    ("train", "--penalty"): {"1.5"}, ("train", "--validation"): {"0"},
    ("report", "--feasibility-tolerance"): {"0", "1.5"},
    ("localflow picture", "--seed"): {"0"}, ("localflow picture", "--steps"): {"0"},
    ("localflow picture", "--lr"): {"1.5"}, ("localflow picture", "--radius"): {"1.5"},
    ("localflow picture", "--spread"): {"0", "1.5"},
    ("localflow schedule", "--seed"): {"0"}, ("localflow schedule", "--lr"): {"1.5"},
    ("localflow schedule", "--momentum"): {"0"},
    ("lr-find", "--seed"): {"0"}, ("lr-find", "--start"): {"1.5"}, ("lr-find", "--end"): {"1.5"},
    ("lr-find", "--smooth"): {"0"}, ("lr-find", "--diverge"): {"1.5"}, ("lr-find", "--skip-start"): {"0"},
    ("lr-find", "--skip-end"): {"0"},
    ("dashboard", "--interval"): {"1.5"},
}


def numeric_options() -> list[tuple[str, str]]:
    """(command, option) for every option of the command line that takes a number."""
    found = []

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*prefix, name))
            elif action.option_strings and (action.type in (int, float)
                                            or action.option_strings[-1] in NUMERIC_TEXT):
                found.append((" ".join(prefix), action.option_strings[-1]))

    walk(_parser(), ())
    return found


def run(argv: list[str]) -> tuple[int, str]:
    """Exit status and standard error of the command line, in this process; a traceback fails."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return code, err.getvalue()


def workspace(tmp_path: Path) -> Path:
    (tmp_path / "study.toml").write_text(STUDY)
    (tmp_path / "study.db").write_bytes((FIXTURES / "study.db").read_bytes())
    return tmp_path


def assert_refused(code: int, err: str, tmp_path: Path) -> None:
    assert code == 2 and "error:" in err and "Traceback" not in err, err
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir()), "a refused command wrote"


def test_every_numeric_option_has_a_base_command():
    assert {command for command, _ in numeric_options()} == set(BASES)


@pytest.mark.parametrize("value", NUMBERS)
@pytest.mark.parametrize("command, option", numeric_options())
def test_numeric_options(command, option, value, tmp_path, monkeypatch):
    from optimlab.report.serve import DashboardServer

    monkeypatch.setattr(DashboardServer, "serve_forever", lambda self, poll_interval=0.5: None)
    t = workspace(tmp_path)
    base = EXTRA.get((command, option), [])
    argv = ([command.split()[0], *base] if base and base[0].startswith("--dataset") else
            [*BASES[command], *base])
    code, err = run([a.format(t=t) for a in argv] + [f"{option}={value}"])
    if value in VALID.get((command, option), ()):
        assert code == 0, err
    else:
        assert_refused(code, err, t)


def _study(field: str, value: str) -> str:
    """The study file with ``field`` (or a table's key, ``table.key``) set to ``value`` (TOML)."""
    if "." in field:
        table, key = field.split(".")
        kind = '\nkind = "processes"' if table == "executor" else ""
        return f"{STUDY}\n[{table}]{kind}\n{key} = {value}\n"
    lines = [line for line in STUDY.splitlines() if not line.startswith(f"{field} =")]
    if field == "epochs":
        lines = [line for line in lines if not line.startswith("iterations")]
    extra = {"dual_learning_rates": 'constraints = ["l2norm<=1"]',
             "penalty_coefficients": 'constraints = ["l2norm<=1"]\nformulation = "augmented_lagrangian"'}
    return "\n".join([*lines, extra.get(field, ""), f"{field} = {value}"]) + "\n"


TOML_NUMBERS = ['"1"', "true", "nan", "inf", "-inf", "-1", "0", "1.5", "[]", "{}"]
STUDY_NUMBERS = {
    "batch_size": "{}", "iterations": "{}", "epochs": "{}", "eval_every": "{}", "log_every": "{}",
    "learning_rates": "[{}]", "seeds": "[{}]", "dual_learning_rates": "[{}]", "penalty_coefficients": "[{}]",
    "model_options.hidden": "{}", "executor.workers": "{}", "executor.max_attempts": "{}", "validation": "{}",
}
for key in ("from", "to", "count"):
    STUDY_NUMBERS[f"learning_rates:{key}"] = key
STUDY_VALID = {("learning_rates", "1.5"), ("seeds", "0"), ("dual_learning_rates", "1.5"),
               ("penalty_coefficients", "1.5"), ("learning_rates:to", "1.5"), ("validation", "0")}


def _range(key: str, value: str) -> str:
    bounds = {"from": "1e-3", "to": "1", "count": "3", key: value}
    return "{ " + ", ".join(f"{k} = {v}" for k, v in bounds.items()) + " }"


@pytest.mark.parametrize("value", TOML_NUMBERS)
@pytest.mark.parametrize("field", list(STUDY_NUMBERS))
def test_numeric_study_fields(field, value, tmp_path):
    if field.startswith("learning_rates:"):
        text = _study("learning_rates", _range(field.split(":")[1], value))
    else:
        text = _study(field, STUDY_NUMBERS[field].format(value))
    expect_run = (field, value) in STUDY_VALID
    tried = _try_study(text, tmp_path)
    assert tried == ("ran" if expect_run else "refused"), tried


def _try_study(text: str, tmp_path: Path) -> str:
    """"ran" or "refused" (plainly, nothing written) for a study file's text."""
    out = tmp_path / "out"
    try:
        run_study(parse_study(text, "study.toml"), out=out, progress=False)
    except OptimlabError:
        assert not out.exists(), "a refused study wrote"
        return "refused"
    return "ran"


@pytest.mark.parametrize("value", NAMES)
@pytest.mark.parametrize("field", ["name", "dataset", "model", "loss", "optimizers", "dual_optimizer",
                                   "constraints", "device", "formulation", "schedules"])
def test_names_in_a_study_file(field, value, tmp_path):
    toml = '"' + value.replace("\0", "\\u0000") + '"'
    if field in ("optimizers", "constraints", "schedules"):
        toml = f"[{toml}]"
    text = _study(field, toml)
    if field in ("dual_optimizer", "formulation"):
        text = text.replace("optimizers =", 'constraints = ["l2norm<=1"]\noptimizers =')
    assert _try_study(text, tmp_path) == "refused"


STRING_OPTIONS = ["--dataset", "--model", "--optimizer", "--loss", "--dual-optimizer", "--formulation",
                  "--constraint", "--device", "--model-option", "--dataset-option", "--schedule"]


@pytest.mark.parametrize("value", NAMES)
@pytest.mark.parametrize("option", STRING_OPTIONS)
def test_names_on_the_command_line(option, value, tmp_path):
    code, err = run([*TRAIN, "--out", str(tmp_path / "out"), option, value])
    assert_refused(code, err, tmp_path)


PATH_VALUES = ["a\0b", "x" * 300, "", "{t}/a-file/below"]
PATH_COMMANDS = [
    ["train", "--dataset", "mnist-10k:0,1", "--model", "logreg", "--iterations", "3", "-q", "--out", "{p}"],
    ["study", "run", "{t}/study.toml", "-q", "--out", "{p}"],
    ["study", "run", "{p}"], ["study", "status", "{p}"], ["study", "check", "{p}"],
    ["study", "export", "{p}"],
    ["study", "salvage", "{p}", "{t}/salvaged"], ["study", "salvage", "{t}/study.db", "{p}"],
    ["report", "{p}"], ["report", "{t}/study.db", "--out", "{p}"],
    ["localflow", "picture", "--out", "{p}"], ["data", "list", "--data-dir", "{p}"],
    ["study", "init", "{p}"], ["study", "export", "{t}/study.db", "--format", "tensorboard", "--out", "{p}"],
    ["lr-find", "--dataset", "mnist-10k:0,1", "--model", "logreg", "--steps", "12", "--skip-start", "2",
     "--skip-end", "2", "--out", "{p}"],
]


@pytest.mark.parametrize("value", PATH_VALUES)
@pytest.mark.parametrize("argv", PATH_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_paths_no_file_system_takes(argv, value, tmp_path):
    t = workspace(tmp_path)
    (t / "a-file").write_text("a file, not a folder")
    before = sorted(os.listdir(t))
    code, err = run([a.format(t=t, p=value.format(t=t)) for a in argv])
    assert code == 2 and "Traceback" not in err, err
    assert sorted(os.listdir(t)) == before


FILES = {"empty": b"", "binary": bytes(range(256)) * 20, "text": b"name = 1\n"}


READERS = [["study", "run", "{f}", "-q", "--out", "{t}/out"], ["study", "status", "{f}"],
           ["study", "check", "{f}"], ["study", "export", "{f}", "--out", "{t}/out"],
           ["study", "salvage", "{f}", "{t}/out"], ["report", "{f}", "--out", "{t}/out"]]


@pytest.mark.parametrize("content", ["empty", "binary", "text", "folder", "missing"])
@pytest.mark.parametrize("argv", READERS, ids=lambda a: " ".join(a[:2]))
def test_files_that_are_not_what_the_command_reads(argv, content, tmp_path):
    f = tmp_path / "input"
    if content == "folder":
        f.mkdir()
    elif content != "missing":
        f.write_bytes(FILES[content])
    code, err = run([a.format(f=f, t=tmp_path) for a in argv])
    assert code == 2 and "error:" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_run_folder_whose_checkpoint_is_not_one(tmp_path):
    out = tmp_path / "run"
    assert run([*TRAIN, "--out", str(out)])[0] == 0
    for junk in (b"", bytes(range(256)) * 8):
        (out / "checkpoint.pt").write_bytes(junk)
        code, err = run([*TRAIN, "--out", str(out), "--resume", "--iterations", "6"])
        assert code == 2 and "is not a readable optimlab checkpoint" in err and len(err) < 600, err
