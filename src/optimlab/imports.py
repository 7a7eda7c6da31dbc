"""Import paths ``package.module:attribute``: reading them, and writing an object as one.

The library's own modules name user code with these (a constraint's measure, say); the registry
(:mod:`optimlab.registry`) builds every name on them.
"""

from __future__ import annotations

import importlib
import re

from optimlab.errors import OptimlabError

_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def is_import_path(text: object) -> bool:
    """Whether ``text`` is written ``package.module:attribute``."""
    return isinstance(text, str) and _IMPORT_PATH.fullmatch(text.strip()) is not None


def import_object(path: str, what: str = "object") -> object:
    """The object at ``package.module:attribute.path``; a missing module or attribute is one clear
    error naming ``what`` it was for."""
    module_name, _, attribute = path.strip().partition(":")
    if not attribute:
        raise OptimlabError(f"{what} {path!r} is not an import path; write package.module:attribute")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        hint = "" if e.name != module_name.split(".")[0] else (
            " (is its folder on the Python path? a study file can add it with python_path = [...])")
        raise OptimlabError(f"{what} {path!r}: no module named {e.name!r}{hint}") from None
    except Exception as e:  # the user's module raised while importing
        raise OptimlabError(
            f"{what} {path!r}: importing {module_name} raised {type(e).__name__}: {e}") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(obj) if not n.startswith("_"))[:12]
            raise OptimlabError(f"{what} {path!r}: {getattr(obj, '__name__', module_name)} has no attribute "
                                f"{part!r}; it has: {', '.join(public) or 'nothing public'}")
        obj = getattr(obj, part)
    return obj


def import_path_of(obj: object) -> str | None:
    """``module:qualname`` when importing it gives back ``obj`` itself (a module-level class or
    function of an importable module); None for lambdas, closures, instances and ``__main__``."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    path = f"{module}:{qualname}"
    try:
        return path if import_object(path) is obj else None
    except OptimlabError:
        return None


def describe(obj: object) -> str:
    """How an object that has no import path is written in records: ``<python: NAME>``."""
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"<python: {name}>"


def portable(value: object) -> bool:
    """Whether a setting can travel to another process: plain values only (names, import paths)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and portable(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(portable(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool)
