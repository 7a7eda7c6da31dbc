"""The user's code a study imports: where each import path's package lives and a fingerprint of it,
so that a store can tell when the code behind its runs changed.

An installed package is recorded by its distribution's version; code of the user's own (a folder on
``python_path``, the working directory) by the SHA-256 of its ``.py`` files (names and contents).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import sysconfig
from pathlib import Path

from optimlab.errors import OptimlabError


def fingerprint(import_paths: list[str]) -> dict[str, dict]:
    """Top-level package -> ``{"version": ...}`` (installed) or ``{"sha256": ..., "files": n}``."""
    out: dict[str, dict] = {}
    for path in import_paths:
        top = path.partition(":")[0].split(".")[0]
        if top in out:
            continue
        try:
            module = importlib.import_module(top)
        except Exception as e:  # the registry already said which; here only for completeness
            raise OptimlabError(f"cannot import {top!r} to fingerprint it: {e}") from None
        out[top] = _describe(top, module)
    return out


def _installed(file: Path) -> bool:
    places = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    return any(file.is_relative_to(Path(p)) for p in places if p)


def _describe(top: str, module) -> dict:
    file = getattr(module, "__file__", None)
    if file is None or _installed(Path(file).resolve()):
        dists = importlib.metadata.packages_distributions().get(top, [])
        version = None
        for dist in dists:
            try:
                version = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        return {"version": version or "unknown"}
    root = Path(file).resolve()
    files = sorted(root.parent.rglob("*.py")) if root.name == "__init__.py" else [root]
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(root.parent)).encode() + b"\0")
        digest.update(f.read_bytes() + b"\0")
    return {"sha256": digest.hexdigest(), "files": len(files)}


def changes(old: dict[str, dict], new: dict[str, dict]) -> list[str]:
    """The packages whose fingerprint differs, said for a user (empty: the same code)."""
    said = []
    for top in sorted(set(old) | set(new)):
        a, b = old.get(top), new.get(top)
        if a == b:
            continue
        if a is None or b is None:
            said.append(f"{top} ({'new' if a is None else 'no longer'} imported)")
        elif "version" in a and "version" in b:
            said.append(f"{top} (version {a['version']} -> {b['version']})")
        else:
            said.append(f"{top} (its files changed)")
    return said
