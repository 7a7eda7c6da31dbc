"""Overrides of a study file from the command line: ``optimlab study run FILE key=value ...``.

A key is a field of the study file, dotted into its tables and lists: ``epochs=3``,
``executor.kind=sequential``, ``'optimizers=["adam", "sgd"]'``, ``tasks.0.batch_size=64``,
``model_options.hidden=50``. A value is a TOML value (``3``, ``1e-3``, ``true``, ``[0, 1]``,
``"text"``, ``{ from = 1e-4, to = 1, count = 5 }``); one that is not TOML is taken as a string
(``executor.kind=sequential``). The overridden file is validated as a whole, like the file itself, and
the store records the overrides with the file's text.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Sequence

from optimlab.errors import OptimlabError


def parse_value(text: str) -> object:
    """A TOML value, else the text as a string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(doc: dict, overrides: Sequence[str], fields: Sequence[str], source: str) -> dict:
    """``doc`` (a parsed study file) with each ``key=value`` of ``overrides`` set; ``fields``: the
    study file's fields, which a key must start with. The document given is not changed."""
    doc = copy.deepcopy(doc)
    for override in overrides:
        key, sep, value = override.partition("=")
        parts = key.strip().split(".")
        where = f"{source}: override {override!r}"
        if not sep or not all(parts):
            raise OptimlabError(f"{where}: an override is KEY=VALUE with a dotted key, e.g. epochs=3, "
                                "executor.kind=sequential or tasks.0.batch_size=64")
        if parts[0] not in fields:
            raise OptimlabError(f"{where}: unknown field {parts[0]!r}; valid fields: {', '.join(fields)}")
        node = doc
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, parts[i + 1], ".".join(parts[:i + 1]), where)
        _set(node, parts[-1], parse_value(value.strip()), key.strip(), where)
    return doc


def _child(node: object, part: str, following: str, path: str, where: str) -> object:
    """The table or list under ``part`` of ``node`` (a table created where there is none)."""
    if isinstance(node, list):
        return node[_index(node, part, path, where)]
    if not isinstance(node, dict):
        raise OptimlabError(f"{where}: {path.rpartition('.')[0] or path} is a value, not a table or list")
    if part not in node:
        if following.isdigit():
            raise OptimlabError(f"{where}: the file has no list {path} to index")
        node[part] = {}
    child = node[part]
    if not isinstance(child, dict | list):
        raise OptimlabError(f"{where}: {path} is a value ({child!r}), not a table or list")
    return child


def _set(node: object, part: str, value: object, key: str, where: str) -> None:
    if isinstance(node, list):
        node[_index(node, part, key, where)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise OptimlabError(f"{where}: {key.rpartition('.')[0]} is a value, not a table or list")


def _index(items: list, part: str, path: str, where: str) -> int:
    if not part.isdigit():
        raise OptimlabError(f"{where}: {path.rpartition('.')[0]} is a list: index it with a number "
                            f"(0 to {len(items) - 1}), not {part!r}")
    index = int(part)
    if index >= len(items):
        raise OptimlabError(f"{where}: {path.rpartition('.')[0]} has {len(items)} entries; index {index} "
                            f"is out of range (0 to {len(items) - 1})")
    return index


def recorded(text: str, overrides: Sequence[str]) -> str:
    """The study file's text with the overrides appended as comments (what the store keeps)."""
    if not overrides:
        return text
    lines = "".join(f"#   {o}\n" for o in overrides)
    head = "# overridden on the command line (optimlab study run FILE KEY=VALUE):"
    return f"{text.rstrip()}\n\n{head}\n{lines}"
