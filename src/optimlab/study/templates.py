"""Study files to start from, shipped inside the package (``optimlab study init``): the examples of
the repository's ``examples/`` folder, which link to them.

=============  ==================================================================================
quickstart     four optimizers x five learning rates x two seeds of an MLP on the bundled digits
lr-robustness  seed 004's study scaled to a CPU: 8 optimizers x 5 rates x 3 seeds on Fashion-MNIST
constrained    seed 001's constrained logistic regression: primal and dual learning rates
suite          the offline task suite (DeepOBS's problems) with the report across tasks
own-code       your own network, loader and optimizer by import path (writes ``mycode/`` beside it)
=============  ==================================================================================
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from optimlab.errors import OptimlabError

TEMPLATES = ("quickstart", "lr-robustness", "constrained", "suite", "own-code")
CODE = "mycode"  # the package the own-code template names


def template_text(name: str) -> str:
    """The study file of template ``name``."""
    check_template(name)
    return (resources.files("optimlab") / "templates" / f"{name}.toml").read_text(encoding="utf-8")


def check_template(name: str) -> None:
    if name not in TEMPLATES:
        raise OptimlabError(f"unknown template {name!r}; valid: {', '.join(TEMPLATES)}")


def write_template(name: str, file: str | Path | None = None, force: bool = False) -> list[Path]:
    """Write template ``name`` to ``file`` (default: ``NAME.toml`` here) and, for own-code, its
    package ``mycode/`` beside it; returns the paths written. Existing files are refused unless
    ``force``; nothing is written when anything is refused."""
    check_template(name)
    file = Path(file) if file is not None else Path(f"{name}.toml")
    if file.suffix != ".toml":
        raise OptimlabError(f"a study file is TOML: give a name ending in .toml; got {str(file)!r}")
    writes = {file: template_text(name)}
    if name == "own-code":
        code = resources.files("optimlab") / "templates" / CODE
        for part in sorted(code.iterdir(), key=lambda p: p.name):
            if part.name.endswith(".py"):
                writes[file.parent / CODE / part.name] = part.read_text(encoding="utf-8")
    existing = [p for p in writes if p.exists()]
    if existing and not force:
        raise OptimlabError(f"{', '.join(map(str, existing))} exists already: choose another file, or "
                            "--force to replace it")
    if file.parent.exists() and not file.parent.is_dir():
        raise OptimlabError(f"{file.parent} is not a folder")
    try:
        for path, text in writes.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise OptimlabError(f"cannot write {path}: {e.strerror or e}") from None
    return list(writes)
