"""The command line: ``optimlab train | data | study | report | dashboard | localflow | lr-find |
optimizers``, one module per command, each adding its parser (``add_to(subparsers)``) and handling its
arguments.

Errors a user can fix are printed as one message, without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from optimlab import __version__
from optimlab.cli import dashboard, data, localflow, lr_find, optimizers, report, study, train
from optimlab.errors import OptimlabError

COMMANDS = (train, data, study, report, dashboard, localflow, lr_find, optimizers)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # `study run FILE key=value ...`: overrides may come after options too (argparse stops the
    # positional list at the first option)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "threads", None) is not None:
            _set_threads(args.threads)
        return args.func(args) or 0
    except OptimlabError as e:
        print(f"optimlab: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("optimlab: interrupted; `optimlab train ... --resume` with the same --out continues from "
              "the last checkpoint", file=sys.stderr)
        return 130


def _set_threads(threads: int) -> None:
    import torch

    if threads < 1:
        raise OptimlabError(f"--threads must be an integer >= 1; got {threads}")
    torch.set_num_threads(threads)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="optimlab",
        description="A PyTorch toolkit for optimization in machine learning.",
    )
    p.add_argument("--version", action="version", version=f"optimlab {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        command.add_to(sub)
    return p
