"""optimlab study init: the templates are the repository's examples, each a valid study file, written
without replacing anything unless told."""

import sys
from pathlib import Path

import pytest

from optimlab.cli import main
from optimlab.errors import OptimlabError
from optimlab.study.spec import load_study
from optimlab.study.templates import TEMPLATES, template_text, write_template

EXAMPLES = Path(__file__).parents[2] / "examples"
IN_EXAMPLES = {"quickstart": "quickstart.toml", "lr-robustness": "lr_robustness_fashion.toml",
               "constrained": "constrained_study.toml", "suite": "suite.toml"}


@pytest.fixture
def no_mycode():
    """The own-code template's package imported afresh, and the one imported before (examples/own_code
    has one of the same name, which other tests hold) put back afterwards."""
    def take():
        names = [m for m in sys.modules if m == "mycode" or m.startswith("mycode.")]
        return {m: sys.modules.pop(m) for m in names}
    before = take()
    yield
    take()
    sys.modules.update(before)


def test_the_templates_are_the_repositorys_examples():
    for name, example in IN_EXAMPLES.items():
        assert (EXAMPLES / example).read_text() == template_text(name), name
    code = Path(__file__).parents[2] / "src" / "optimlab" / "templates" / "mycode"
    assert sorted(p.name for p in (EXAMPLES / "own_code" / "mycode").glob("*.py")) == \
        sorted(p.name for p in code.glob("*.py")) == ["__init__.py", "data.py", "nets.py", "optim.py"]


@pytest.mark.parametrize("name", TEMPLATES)
def test_each_template_is_a_valid_study(name, tmp_path, monkeypatch, no_mycode):
    monkeypatch.syspath_prepend(str(tmp_path))  # where own-code's mycode/ is written (python_path = ".")
    written = write_template(name, tmp_path / f"{name}.toml")
    spec = load_study(written[0])
    assert spec.name and len(spec.grid) >= 4
    if name == "own-code":
        assert [p.relative_to(tmp_path).as_posix() for p in written] == [
            "own-code.toml", "mycode/__init__.py", "mycode/data.py", "mycode/nets.py", "mycode/optim.py"]
        assert spec.configs()[0].model == "mycode.nets:SmallCNN"


def test_a_written_quickstart_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["study", "init"]) == 0
    assert capsys.readouterr().out.splitlines() == ["wrote quickstart.toml",
                                                    "next: optimlab study run quickstart.toml --report"]
    assert main(["study", "run", "quickstart.toml", "epochs=1", 'optimizers=["sgd"]', "learning_rates=[0.1]",
                 "seeds=[0]", "-q"]) == 0
    assert "quickstart: 1 completed" in capsys.readouterr().out


def test_nothing_is_replaced_unless_forced(tmp_path, capsys):
    (tmp_path / "mycode").mkdir()
    (tmp_path / "mycode" / "nets.py").write_text("# mine\n")
    with pytest.raises(OptimlabError, match=r"mycode/nets.py exists already: choose another file, or "
                                            r"--force to replace it"):
        write_template("own-code", tmp_path / "study.toml")
    assert not (tmp_path / "study.toml").exists()  # nothing of it was written
    assert (tmp_path / "mycode" / "nets.py").read_text() == "# mine\n"
    write_template("own-code", tmp_path / "study.toml", force=True)
    assert (tmp_path / "mycode" / "nets.py").read_text() != "# mine\n"
    assert main(["study", "init", "--template", "nope", str(tmp_path / "x.toml")]) == 2
    assert "unknown template 'nope'; valid: quickstart, lr-robustness, constrained, suite, own-code" in \
        capsys.readouterr().err
    assert main(["study", "init", str(tmp_path / "study.txt")]) == 2
    assert "give a name ending in .toml" in capsys.readouterr().err
    assert not (tmp_path / "x.toml").exists() and not (tmp_path / "study.txt").exists()


def test_the_template_names_in_the_help_are_the_templates():
    from optimlab.cli.study import TEMPLATE_NAMES

    assert TEMPLATE_NAMES == TEMPLATES
