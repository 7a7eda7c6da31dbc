"""Argument pieces more than one command uses."""

from __future__ import annotations

from optimlab.errors import OptimlabError

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
