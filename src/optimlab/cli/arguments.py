"""Argument pieces more than one command uses."""

from __future__ import annotations

import argparse
import os

from optimlab.errors import OptimlabError

NAME_MAX = 255  # bytes in one component of a path (Linux, macOS, Windows)
PATH_MAX = 4096

THREADS_HELP = ("CPU threads for torch (default: one per core). On a busy machine use fewer: a small "
                "model on threads that wait for a core taken by another process runs several times slower")


def options(pairs: list[str], flag: str) -> dict:
    """``KEY=VALUE`` pairs as keyword arguments (values: Python literals, else strings)."""
    import ast

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise OptimlabError(f"{flag} takes KEY=VALUE, e.g. {flag} width=64; got {pair!r}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def path_arg(text: str) -> str:
    """An argparse ``type`` for a file or folder argument: refuses what no file system takes (a NUL
    byte, a component longer than NAME_MAX bytes, a path longer than PATH_MAX) with a plain message."""
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"a path cannot hold a NUL byte; got {text!r}")
    if not text.strip():
        raise argparse.ArgumentTypeError("the path is empty")
    encoded = os.fsencode(text)
    longest = max(encoded.split(os.fsencode(os.sep)), key=len)
    if len(longest) > NAME_MAX:
        start = longest[:40].decode(errors="replace")
        raise argparse.ArgumentTypeError(f"a name in the path is {len(longest)} bytes long; file systems "
                                         f"take at most {NAME_MAX}: {start}...")
    if len(encoded) > PATH_MAX:
        raise argparse.ArgumentTypeError(f"the path is {len(encoded)} bytes long; at most {PATH_MAX}")
    return text


def count_or_fraction(text: str) -> int | float:
    """An argparse ``type``: an integer (a count) or else a number (a fraction); the range is the
    setting's to check."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a fraction; got {text!r}") from None


def store_path(text: str):
    """The study store a command reads, from what the user has at hand: the store itself, the study's
    folder (holding ``study.db``) or the study file (whose store ``optimlab study run FILE`` keeps in
    ``runs/NAME/study.db``). Anything else is passed on as a path, for the store to judge."""
    import tomllib
    from pathlib import Path

    path = Path(text)
    if path.is_dir():
        if not (path / "study.db").is_file():
            raise OptimlabError(f"{text} is a folder without a study store (study.db): give the store, "
                                "the folder of a study (where `optimlab study run` wrote study.db) or the "
                                "study file")
        return path / "study.db"
    if path.suffix == ".toml" and path.is_file():
        try:
            name = tomllib.loads(path.read_text(encoding="utf-8")).get("name")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise OptimlabError(f"{text} is not a TOML study file ({e})") from None
        if not isinstance(name, str) or not name:
            raise OptimlabError(f"the study file {text} has no name, so it has no store; give the store "
                                "itself")
        store = Path("runs") / name / "study.db"
        if not store.is_file():
            raise OptimlabError(f"the study file {text} has no store at {store} (its default place): run "
                                f"`optimlab study run {text}` first, or give the store or folder that --out "
                                "chose")
        return store
    return path
