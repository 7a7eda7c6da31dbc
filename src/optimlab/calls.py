"""The notation ``name(key=literal, ...)`` that optimizers (``adam(betas=(0.9, 0.99))``) and learning-rate
schedules (``cosine(warmup=0.05)``) are written in: parsed with Python's own parser, values literals
only (numbers, booleans, strings, tuples and lists of them), never evaluated code."""

from __future__ import annotations

import ast
import re

from optimlab.errors import OptimlabError

_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*(?::[A-Za-z_][A-Za-z0-9_.]*)?)\s*(?:\((.*)\))?", re.DOTALL)


def parse_call(text: str, what: str, example: str) -> tuple[str, dict]:
    """``name`` or ``name(key=literal, ...)`` as (name, options); ``what`` names the thing in errors
    ("optimizer"), ``example`` shows the notation. The name may be an import path
    ``package.module:attribute``."""
    if not isinstance(text, str):
        raise OptimlabError(f"an {what} is written as a string like {example!r}; got {text!r}")
    text = text.strip()
    match = _CALL.fullmatch(text)
    unreadable = f"cannot read {what} {text!r}; write a name or name(key=value, ...), e.g. {example}"
    if match is None:
        raise OptimlabError(unreadable)
    name, inner = match.group(1), match.group(2)
    try:
        node = ast.parse(f"f({inner or ''})", mode="eval").body
    except SyntaxError:
        raise OptimlabError(unreadable) from None
    if not isinstance(node, ast.Call) or node.args:
        raise OptimlabError(f"cannot read {what} {text!r}; write a name or name(key=value, ...) with "
                            "keyword arguments only")
    options = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise OptimlabError(f"{what} {text!r}: '**' is not allowed")
        if kw.arg in options:
            raise OptimlabError(f"{what} {text!r}: {kw.arg} is given twice")
        try:
            options[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            raise OptimlabError(f"{what} {text!r}: the value of {kw.arg} must be a literal "
                                "(number, True/False, tuple)") from None
    return name, options


def format_call(name: str, options: dict) -> str:
    """The canonical text of a call: ``name`` or ``name(k=v, ...)`` with the keys in order."""
    if not options:
        return name
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in sorted(options.items()))})"
