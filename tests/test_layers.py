"""The house's layers import only downward: library <- registry <- engine <- study <- report <- cli
(DESIGN.md). Every import of every module counts, those inside functions too."""

import ast
from pathlib import Path

import optimlab

ROOT = Path(optimlab.__file__).parent
LAYERS = ("library", "registry", "engine", "study", "report", "cli")
# top-level modules and packages of each layer above the library (everything else is the library:
# data, models, optimizers, tasks, muon, constrained, localflow, errors, devices, runfiles)
ABOVE_LIBRARY = {"registry": "registry", "engine": "engine", "training": "engine", "rangetest": "engine",
                 "study": "study", "report": "report", "cli": "cli", "__main__": "cli"}
# the package itself is a facade: ``optimlab.lr_find`` is imported from the engine when first used
FACADE = "optimlab"


def layer_of(module: str) -> str:
    """The layer of ``optimlab.x.y`` (by its first part below ``optimlab``)."""
    parts = module.split(".")
    return ABOVE_LIBRARY.get(parts[1], "library") if len(parts) > 1 else "library"


def modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        yield name, path


def imports_of(name: str, path: Path):
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield ".".join([*base, *([node.module] if node.module else [])])
            elif node.module:
                # "from optimlab import registry" imports the module optimlab.registry
                yield from ([f"{node.module}.{a.name}" for a in node.names] if node.module == "optimlab"
                            else [node.module])


def test_every_import_goes_to_the_same_layer_or_below():
    upward = []
    for name, path in modules():
        if name == FACADE:
            continue
        mine = LAYERS.index(layer_of(name))
        for target in imports_of(name, path):
            if target.split(".")[0] != "optimlab" or target in ("optimlab", "optimlab.__version__"):
                continue
            if LAYERS.index(layer_of(target)) > mine:
                upward.append(f"{name} ({layer_of(name)}) imports {target} ({layer_of(target)})")
    assert not upward, "\n".join(upward)


def test_the_layers_are_all_there():
    seen = {layer_of(name) for name, _ in modules()}
    assert seen == set(LAYERS)
