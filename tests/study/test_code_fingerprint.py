"""The store records the user's code a study imports (a fingerprint of its files); a store whose code
changed is continued or extended only when told."""

import json
import sys
import textwrap

import pytest

from optimlab.cli import main
from optimlab.errors import OptimlabError
from optimlab.study import parse_study, run_study
from optimlab.study.code import changes, fingerprint
from optimlab.study.store import StudyStore

NETS = """
    from torch import nn


    def tiny(input_shape, num_classes, width={width}):
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, width), nn.ReLU(),
                             nn.Linear(width, num_classes))
    """
STUDY = """name = "fingerprinted"
python_path = ["code"]
dataset = "mnist-10k:0,1"
model = "fpkg.nets:tiny"
batch_size = 200
iterations = 4
seeds = [0]
learning_rates = [0.1]
optimizers = ["sgd"]
[executor]
kind = "sequential"
"""


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A study file beside a package ``fpkg`` of the user's; ``write(width)`` rewrites its code."""
    package = tmp_path / "code" / "fpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")

    def write(width: int) -> None:
        (package / "nets.py").write_text(textwrap.dedent(NETS.format(width=width)))
        for name in ("fpkg", "fpkg.nets"):
            sys.modules.pop(name, None)

    write(8)
    (tmp_path / "study.toml").write_text(STUDY)
    monkeypatch.chdir(tmp_path)
    yield tmp_path / "study.toml", write
    for name in ("fpkg", "fpkg.nets"):
        sys.modules.pop(name, None)
    sys.path[:] = [p for p in sys.path if p != str(tmp_path / "code")]


def test_the_store_records_the_code_and_refuses_a_changed_one_unless_told(study, tmp_path, capsys):
    path, write = study
    spec = parse_study(path.read_text(), str(path), base=tmp_path)
    outcome = run_study(spec, out=tmp_path / "runs", progress=False)
    store = StudyStore.open(outcome.store)
    recorded = json.loads(store.meta("code"))
    store.close()
    assert set(recorded) == {"fpkg"} and recorded["fpkg"]["files"] == 2
    assert len(recorded["fpkg"]["sha256"]) == 64
    assert recorded == fingerprint(["fpkg.nets:tiny"])
    # the same code: the finished study is simply finished again
    assert run_study(spec, out=tmp_path / "runs", progress=False).completed == 1

    write(16)  # the user edits the network
    assert changes(recorded, fingerprint(["fpkg.nets:tiny"])) == ["fpkg (its files changed)"]
    grown = parse_study(path.read_text().replace("seeds = [0]", "seeds = [0, 1]"), str(path), base=tmp_path)
    with pytest.raises(OptimlabError, match=r"holds runs of other code: fpkg \(its files changed\)"):
        run_study(grown, out=tmp_path / "runs", extend=True, progress=False)
    with pytest.raises(OptimlabError, match="pass --code-changed"):
        run_study(spec, out=tmp_path / "runs", progress=False)
    # the command line says the same and exits 2; --code-changed goes on and records the new code
    assert main(["study", "run", str(path), "--out", str(tmp_path / "runs"), "--extend", "-q"]) == 2
    assert "holds runs of other code" in capsys.readouterr().err
    assert main(["study", "run", str(path), "--out", str(tmp_path / "runs"), "--extend", "--code-changed",
                 "-q"]) == 0
    store = StudyStore.open(tmp_path / "runs" / "study.db")
    assert json.loads(store.meta("code")) == fingerprint(["fpkg.nets:tiny"]) != recorded
    store.close()


def test_an_installed_package_is_recorded_by_its_version():
    import torch

    recorded = fingerprint(["torch.optim:SGD"])
    assert recorded["torch"]["version"].split("+")[0] == torch.__version__.split("+")[0]
    assert changes(recorded, {**recorded, "torch": {"version": "0.0"}}) == \
        [f"torch (version {recorded['torch']['version']} -> 0.0)"]
