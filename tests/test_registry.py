"""The registry: the user's own code (import paths, objects) and plugins reach the engine through one
door, give the numbers of the built-in names, and bad references are one clear message."""

import json
import re
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import optimlab.models
from optimlab import registry
from optimlab.cli import main
from optimlab.data import load_dataset
from optimlab.errors import OptimlabError
from optimlab.study.results import load_results
from optimlab.study.runner import run_study
from optimlab.study.spec import parse_study
from optimlab.study.store import StudyStore
from optimlab.training import TrainConfig, train

# written once: tests/user_optimizers.py (Saturating, SignMomentum, SquaredLR)
USER_OPTIMIZERS = (Path(__file__).parent / "user_optimizers.py").read_text()
USER_CODE = {
    "__init__.py": "",
    "nets.py": """
        from torch import nn

        WIDTH = 3  # not a class, not a factory


        class Tiny(nn.Module):
            def __init__(self, input_shape, num_classes, width=8):
                super().__init__()
                d = 1
                for s in input_shape:
                    d *= s
                self.body = nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.ReLU(),
                                          nn.Linear(width, num_classes))

            def forward(self, x):
                return self.body(x)


        def broken(input_shape, num_classes):
            raise ValueError("no GPU here")


        def not_a_module(input_shape, num_classes):
            return 42
        """,
    "data.py": """
        import torch

        N = 5  # not a loader


        def good(n=40):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(n, 6, generator=g)
            y = (x[:, 0] > 0).long()
            return x, y, x[:10].clone(), y[:10].clone()


        def lengths():
            x, y, xt, yt = good()
            return x, y[:-1], xt, yt


        def int_x():
            x, y, xt, yt = good()
            return x.long(), y, xt.long(), yt


        def two_dtypes():
            x, y, xt, yt = good()
            return x, y, xt, yt.float()


        def three():
            return good()[:3]
        """,
    "losses.py": """
        SCALE = 3  # not a loss


        def ce(out, y):  # cross-entropy written by hand
            return (out.logsumexp(dim=1) - out.gather(1, y[:, None])[:, 0]).mean()
        """,
    "optim.py": USER_OPTIMIZERS,
}


def forget(package: str) -> None:
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


@pytest.fixture
def user_code(tmp_path):
    """The folder holding the package ``userpkg`` (not on the Python path)."""
    folder = tmp_path / "code"
    (folder / "userpkg").mkdir(parents=True)
    for name, text in USER_CODE.items():
        (folder / "userpkg" / name).write_text(textwrap.dedent(text))
    forget("userpkg")
    yield folder
    forget("userpkg")


@pytest.fixture
def userpkg(user_code, monkeypatch):
    monkeypatch.syspath_prepend(str(user_code))
    return user_code


TINY = dict(dataset="userpkg.data:good", model="userpkg.nets:Tiny", batch_size=10, iterations=2,
            device="cpu")


# ------------------------------------------------------------------------------ bad references

@pytest.mark.parametrize("settings, message", [
    ({"model": "nosuch.mod:Net"}, "model 'nosuch.mod:Net': no module named 'nosuch' (is its folder on "
                                  "the Python path?"),
    ({"model": "userpkg.nosuch:Net"}, "model 'userpkg.nosuch:Net': no module named 'userpkg.nosuch'"),
    ({"model": "userpkg.nets:Nope"}, "model 'userpkg.nets:Nope': userpkg.nets has no attribute 'Nope'; "
                                     "it has: Tiny, WIDTH, broken"),
    ({"model": "userpkg.nets:WIDTH"}, "model 'userpkg.nets:WIDTH' is int, not an nn.Module, a class or "
                                      "a factory"),
    ({"optimizer": "userpkg.nets:WIDTH", "lr": 0.1}, "optimizer 'userpkg.nets:WIDTH' is int, not a "
                                                     "class or a factory"),
    ({"optimizer": "userpkg.optim:Nope", "lr": 0.1}, "optimizer 'userpkg.optim:Nope': userpkg.optim has "
                                                     "no attribute 'Nope'; it has: Saturating, "
                                                     "SignMomentum, SquaredLR, torch"),
    ({"optimizer": "userpkg.nets:Tiny", "lr": 0.1}, "optimizer 'userpkg.nets:Tiny' is the class Tiny, "
                                                    "not a torch.optim.Optimizer"),
    ({"optimizer": "userpkg.optim:SignMomentum(bogus=1)"}, "optimizer 'userpkg.optim:SignMomentum(bogus=1)' "
                                                           "has no hyperparameter bogus; valid: beta"),
    ({"optimizer": {"name": "sm", "class": "userpkg.optim:SignMomentum", "options": {"bogus": 1}}},
     "optimizer 'sm' has no hyperparameter bogus; valid: beta"),
    ({"optimizer": {"name": "adam", "options": {"bogus": 1}}},  # a built-in under a table
     "optimizer 'adam' has no hyperparameter bogus; valid: betas"),
])
def test_a_bad_reference_is_refused_by_the_config(userpkg, settings, message):
    with pytest.raises(OptimlabError, match=re.escape(message)):
        TrainConfig(**{**TINY, **settings})


@pytest.mark.parametrize("settings, message", [
    ({"dataset": "userpkg.data:N"}, "dataset 'userpkg.data:N' is int, not a loader function"),
    ({"dataset": "userpkg.data:nope"}, "dataset 'userpkg.data:nope': userpkg.data has no attribute "
                                       "'nope'; it has: N, good"),
    ({"model": "userpkg.nets:broken"}, "model 'userpkg.nets:broken': its factory raised ValueError: no "
                                       "GPU here"),
    ({"model": "userpkg.nets:not_a_module"}, "model 'userpkg.nets:not_a_module': its factory returned "
                                             "int, not a torch.nn.Module"),
    ({"dataset": "userpkg.data:lengths"}, "dataset 'userpkg.data:lengths': x_train has 40 samples but "
                                          "y_train has shape (39,); y must be one value per sample"),
    ({"dataset": "userpkg.data:int_x"}, "dataset 'userpkg.data:int_x': x_train and x_test must be "
                                        "floating point; got torch.int64 and torch.int64"),
    ({"dataset": "userpkg.data:two_dtypes"}, "dataset 'userpkg.data:two_dtypes': y_train is torch.int64 "
                                             "but y_test is torch.float32"),
    ({"dataset": "userpkg.data:three"}, "dataset 'userpkg.data:three': a loader returns a Dataset or the "
                                        "four tensors (x_train, y_train, x_test, y_test); got tuple of 3"),
    ({"model_options": {"bogus": 1}}, "model 'userpkg.nets:Tiny' has no option bogus; valid: width"),
    ({"dataset_options": {"bogus": 1}}, "dataset 'userpkg.data:good': its loader does not take these "
                                        "options (bogus)"),
    ({"dataset": "mnist-10k:0,1", "dataset_options": {"n": 1}}, "dataset_options are for a loader of "
                                                                 "your own; 'mnist-10k:0,1' is a catalogue"),
    ({"loss": "userpkg.losses:SCALE"}, "loss 'userpkg.losses:SCALE' is int, not a function "
                                       "loss(output, y)"),
    ({"loss": "userpkg.losses:nope"}, "loss 'userpkg.losses:nope': userpkg.losses has no attribute "
                                      "'nope'; it has: SCALE, ce"),
])
def test_a_bad_reference_is_refused_when_the_run_starts(userpkg, settings, message):
    config = TrainConfig(**{**TINY, **settings})  # loading and building happen in train
    with pytest.raises(OptimlabError, match=re.escape(message)):
        train(config)


def test_objects_are_checked_as_their_import_paths_are(userpkg):
    import userpkg.data
    import userpkg.nets

    with pytest.raises(OptimlabError, match=r"model '<python: int>' is int, not an nn.Module"):
        TrainConfig(**{**TINY, "model": 3})
    with pytest.raises(OptimlabError, match=r"an optimizer is a name like 'adam'.*got 3"):
        TrainConfig(**{**TINY, "optimizer": 3})
    with pytest.raises(OptimlabError, match=r"dataset 'userpkg.data:three': a loader returns .* tuple of 3"):
        train(TrainConfig(**{**TINY, "dataset": userpkg.data.three}))
    with pytest.raises(OptimlabError, match=r"its factory raised ValueError: no GPU here"):
        train(TrainConfig(**{**TINY, "model": userpkg.nets.broken}))
    with pytest.raises(OptimlabError, match=r"a loss is a task name, an import path or a callable"):
        TrainConfig(**{**TINY, "loss": 3})


# ----------------------------------------------------------------------------------- the CLI

CLI = ["--dataset", "mnist-10k:0,1", "--batch-size", "50", "--iterations", "4", "--lr", "0.1",
       "--device", "cpu", "-q"]


def test_train_from_the_cli_with_a_model_of_ones_own(user_code, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # --python-path adds to it: undone afterwards
    out = tmp_path / "run"
    assert main(["train", "--model", "userpkg.nets:Tiny", "--model-option", "width=4", "--python-path",
                 str(user_code), *CLI, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 4
    assert metrics["config"]["model"] == "userpkg.nets:Tiny"
    assert metrics["config"]["model_options"] == {"width": 4}
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("args, message, late", [
    (["--model", "userpkg.nets:Tiny", "--no-path"], "no module named 'userpkg' (is its folder on the "
                                                     "Python path?", False),
    (["--model", "userpkg.nets:Nope"], "userpkg.nets has no attribute 'Nope'; it has: Tiny", False),
    (["--optimizer", "userpkg.optim:SquaredLR(bogus=1)"], "has no hyperparameter bogus; valid: none",
     False),
    (["--model", "userpkg.nets:broken"], "model 'userpkg.nets:broken': its factory raised ValueError: "
                                         "no GPU here", True),
    (["--model", "userpkg.nets:Tiny", "--model-option", "bogus=1"], "model 'userpkg.nets:Tiny' has no "
                                                                      "option bogus; valid: width", True),
    (["--dataset-option", "n=3"], "dataset_options are for a loader of your own", True),
    (["--loss", "userpkg.losses:SCALE"], "loss 'userpkg.losses:SCALE' is int, not a function", True),
])
def test_a_bad_reference_from_the_cli_is_one_message_and_writes_nothing(user_code, tmp_path, capsys,
                                                                          monkeypatch, args, message, late):
    monkeypatch.setattr(sys, "path", list(sys.path))
    path = [] if "--no-path" in args else ["--python-path", str(user_code)]
    args = [a for a in args if a != "--no-path"]
    out = tmp_path / "run"
    code = main(["train", *CLI, *path, *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("optimlab: error: ") and message in err, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not out.exists()  # refused before anything is written (late: when the pieces are built)


# ---------------------------------------------------------------- the same numbers in every form

BASE = dict(dataset="mnist-10k:0,1", batch_size=50, iterations=12, eval_every=6, log_every=3, lr=0.05,
            device="cpu")


def numbers(result) -> tuple[list, list]:
    """Every number a run recorded, but the wall times."""
    return [{k: v for k, v in e.items() if k != "wall_time"} for e in result.evals], result.train_log


def test_a_model_by_name_import_path_or_class_trains_to_the_same_numbers():
    hidden = {"model_options": {"hidden": 16}}
    want = numbers(train(TrainConfig(model="mlp", **hidden, **BASE)))
    for model in ("optimlab.models:MLP", optimlab.models.MLP):
        config = TrainConfig(model=model, **hidden, **BASE)
        assert config.model == "optimlab.models:MLP" and config.portable  # a class: kept as its path
        assert numbers(train(config)) == want


def test_a_module_instance_starts_every_run_from_its_own_parameters():
    """An nn.Module instance is the initialization: every run starts from a copy of its parameters,
    whatever its seed (the instance itself is never trained); the seed then draws only the batch order."""
    torch.manual_seed(0)
    instance = optimlab.models.MLP((1, 28, 28), 2, hidden=16)
    before = {k: v.clone() for k, v in instance.state_dict().items()}
    runs = [train(TrainConfig(model=instance, seed=seed, **BASE)) for seed in (0, 1)]
    assert not runs[0].config.portable and runs[0].config.to_dict()["model"] == "<python: MLP>"
    # seed 0: the built-in mlp built after torch.manual_seed(0) is this very instance
    assert numbers(runs[0]) == numbers(train(TrainConfig(model="mlp", model_options={"hidden": 16},
                                                         seed=0, **BASE)))
    # seed 1: the same start (step 0), another batch order
    first = [numbers(r)[0][0] for r in runs]
    assert first[0] == first[1]
    assert numbers(runs[0])[0][1:] != numbers(runs[1])[0][1:]
    own = numbers(train(TrainConfig(model="mlp", model_options={"hidden": 16}, seed=1, **BASE)))
    assert own[0][0] != first[1]  # the built-in mlp at seed 1 starts elsewhere
    assert all(torch.equal(v, before[k]) for k, v in instance.state_dict().items())


def test_an_optimizer_by_name_class_or_import_path_trains_to_the_same_numbers():
    want = numbers(train(TrainConfig(model="logreg", optimizer="sgd", **BASE)))
    for optimizer, record in ((torch.optim.SGD, "sgd"), ("torch.optim:SGD", "torch.optim:SGD")):
        config = TrainConfig(model="logreg", optimizer=optimizer, **BASE)
        assert config.optimizer == record
        assert numbers(train(config)) == want


def test_a_loss_by_task_name_or_ones_own_function_trains_to_the_same_numbers(userpkg):
    import userpkg.losses

    want = numbers(train(TrainConfig(model="logreg", **BASE)))
    assert numbers(train(TrainConfig(model="logreg", loss="classification", **BASE))) == want
    for loss in ("userpkg.losses:ce", userpkg.losses.ce):
        got = numbers(train(TrainConfig(model="logreg", loss=loss, **BASE)))
        for a, b in zip(got[0] + got[1], want[0] + want[1], strict=True):
            assert a.keys() == b.keys()
            for k in a:
                if isinstance(b[k], float) and "accuracy" not in k:
                    assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-6), k
                else:
                    assert a[k] == b[k], k  # steps, epochs, lrs and the accuracies: exactly


def test_data_as_a_dataset_or_as_four_tensors_trains_to_the_same_numbers():
    config = TrainConfig(model="logreg", **BASE)
    data = load_dataset("mnist-10k:0,1", device="cpu")
    want = numbers(train(config))
    assert numbers(train(config, data=data)) == want
    assert numbers(train(config, data=(data.x_train, data.y_train, data.x_test, data.y_test))) == want
    as_setting = TrainConfig(model="logreg", **{**BASE, "dataset": (data.x_train, data.y_train,
                                                                    data.x_test, data.y_test)})
    assert numbers(train(as_setting)) == want


# -------------------------------------------------------------------------------------- plugins

GOOD_PLUGIN = USER_OPTIMIZERS + textwrap.dedent("""


    from torch import nn


    def tiny(input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, num_classes))


    def max_weight(model):
        return max(p.abs().max() for p in model.parameters())


    def two_digits():
        '''The first 600 and 200 images of the bundled digits.'''
        from optimlab.data import load_dataset

        d = load_dataset("mnist-10k")
        return d.x_train[:600], d.y_train[:600], d.x_test[:200], d.y_test[:200]


    def register(r):
        r.optimizer("lion-ish", SignMomentum, lr_linear=True, elementwise=True, default_lr=0.01)
        r.model("tinyplug", tiny, task="classification")
        r.measure("maxweight", max_weight)
        r.dataset("digits600", two_digits)
    """)
FAILING_PLUGIN = """
    def register(r):
        raise RuntimeError("boom")
    """
UNIMPORTABLE_PLUGIN = """
    import no_such_module_of_optimlab_tests
    """
LYING_PLUGIN = USER_OPTIMIZERS + textwrap.dedent("""


    def register(r):
        r.optimizer("liar", SquaredLR, lr_linear=True, elementwise=True)
    """)


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """``add(name, code)``: an installed distribution ``name`` 0.1 whose package ``name`` has ``code``
    and the entry point ``[optimlab.plugins] name = name:register``, found by importlib.metadata."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    added = []

    def add(name: str, code: str) -> None:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(textwrap.dedent(code))
        info = root / f"{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[optimlab.plugins]\n{name} = {name}:register\n")
        import importlib

        importlib.invalidate_caches()
        forget(name)
        added.append(name)
        registry.reload_plugins()

    registry.reload_plugins()
    try:
        yield add
    finally:
        for name in added:
            forget(name)
        registry.reload_plugins()  # the next use loads without them (sys.path is restored after)


def toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def study_text(**fields) -> str:
    """A tiny study file: logistic regression on two digits, 6 iterations."""
    settings = dict(name="plugged", dataset="mnist-10k:0,1", model="logreg", batch_size=50,
                    iterations=6, eval_every=3, learning_rates=[0.01], seeds=[0], device="cpu")
    settings.update(fields)
    return "".join(f"{k} = {toml(v)}\n" for k, v in settings.items())


def test_a_plugin_adds_names_that_are_listed_and_that_a_study_uses(plugins, tmp_path, capsys):
    plugins("myplug", GOOD_PLUGIN)
    assert main(["optimizers"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "[plugin myplug; lr-linear; vectorized: stacked] beta=0.9" in lines["lion-ish"]
    assert "sgd" in lines and "adam" in lines
    assert "tinyplug" in registry.model_names()
    assert main(["data", "list"]) == 0
    listed = capsys.readouterr().out
    assert "digits600" in listed and "The first 600 and 200 images of the bundled digits." in listed
    assert registry.load_data("digits600").num_train == 600
    assert registry.resolve_optimizer("lion-ish").default_lr() == 0.01

    spec = parse_study(study_text(model="tinyplug", optimizers=["lion-ish", "sgd"]))
    outcome = run_study(spec, out=tmp_path / "study", executor="sequential")
    assert (outcome.completed, outcome.failed, outcome.pending) == (2, 0, 0)
    store = StudyStore.open(outcome.store)
    try:
        runs = store.runs()
    finally:
        store.close()
    assert [(r["optimizer"], r["status"], r["steps"]) for r in runs] == [
        ("lion-ish", "completed", 6), ("sgd", "completed", 6)]
    # the plugin's constraint measure: a constrained study under it, run by run (no stacked twin)
    spec = parse_study(study_text(name="plugged-c", model="tinyplug", optimizers=["sgd"],
                                  constraints=["maxweight<=0.05"]))
    outcome = run_study(spec, out=tmp_path / "constrained", executor="vectorized")
    assert outcome.completed == 1
    evals = load_results(outcome.store).evals
    assert evals["violation_maxweight_le_0p05"].notna().all()
    assert evals["multiplier_maxweight_le_0p05"].iloc[-1] >= 0


def test_a_plugin_that_fails_is_a_warning_naming_its_package_and_the_rest_works(plugins, tmp_path,
                                                                               capsys):
    plugins("myplug", GOOD_PLUGIN)
    plugins("badplug", FAILING_PLUGIN)
    plugins("brokenplug", UNIMPORTABLE_PLUGIN)
    with pytest.warns(UserWarning) as caught:
        assert main(["optimizers"]) == 0
    said = [str(w.message) for w in caught]
    assert any("package 'badplug' failed to load (RuntimeError: boom)" in s for s in said), said
    assert any("package 'brokenplug' failed to load (ModuleNotFoundError" in s for s in said), said
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"sgd", "adam", "exact-flow", "lion-ish"} <= set(names)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="optimlab plugin")  # said once: loaded once a process
        assert main(["train", *CLI, "--model", "logreg", "--out", str(tmp_path / "run")]) == 0
        assert registry.resolve_optimizer("lion-ish").entry.source == "plugin myplug"


def test_a_plugin_that_declares_a_nonlinear_optimizer_lr_linear_is_refused(plugins):
    plugins("lyingplug", LYING_PLUGIN)
    with pytest.raises(OptimlabError, match=r"optimizer 'liar' is declared lr_linear by plugin lyingplug, "
                                            r"but its step at lr 1e-07 is not .* \(relative difference 1\)"):
        registry.resolve_optimizer("liar")
    with pytest.raises(OptimlabError, match=r"optimizers\[0\]: optimizer 'liar' is declared lr_linear"):
        parse_study(study_text(optimizers=["liar"]))


# ------------------------------------------------------------------------ lr_linear, probed

@pytest.mark.parametrize("cls, difference", [("SquaredLR", "1"), ("Saturating", "0.1")])
def test_lr_linear_declared_on_a_nonlinear_optimizer_is_refused_with_the_measured_difference(
        userpkg, tmp_path, capsys, cls, difference):
    table = {"name": "mine", "class": f"userpkg.optim:{cls}", "lr_linear": True}
    message = (r"optimizer 'mine' is declared lr_linear, but its step at lr 1e-07 is not 1e-07/0.1 times "
               rf"its step at lr 0.1 \(relative difference {re.escape(difference)}\); remove lr_linear")
    with pytest.raises(OptimlabError, match=message):
        registry.resolve_optimizer(table)
    assert registry.resolve_optimizer({**table, "lr_linear": False}).why_not_stacked() is not None
    text = study_text(optimizers=[{**table, "learning_rates": [0.1]}])
    with pytest.raises(OptimlabError, match=r"<study>: optimizers\[0\]: " + message):
        parse_study(text)
    file = tmp_path / "study.toml"  # the CLI: one message, no store
    file.write_text(text)
    out = tmp_path / "out"
    assert main(["study", "run", str(file), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("optimlab: error: ") and f"(relative difference {difference})" in err
    assert not out.exists()
