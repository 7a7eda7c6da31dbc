"""``optimlab dashboard``: a live page that follows a study store while it runs, and after."""

from __future__ import annotations

import argparse
import signal
import sys

from optimlab.cli.arguments import path_arg, store_path
from optimlab.cli.study import STORE_HELP


def add_to(sub) -> None:
    d = sub.add_parser(
        "dashboard", help="a live page that follows a study as it runs",
        description="Serve a page that follows a study store while it runs and after: progress per task "
        "and optimizer, every run's learning curve, the sensitivity curves, the claims and workers, "
        "failures and divergences, updated in place. It only reads the store (any number of dashboards "
        "at once, no effect on the study) and works offline. Ctrl-C stops it.")
    d.add_argument("db", type=path_arg, help=STORE_HELP)
    d.add_argument("--port", type=int, default=None, help="the port (default: a free one, printed)")
    d.add_argument("--host", default="127.0.0.1",
                   help="the interface to listen on (default 127.0.0.1: this machine only)")
    d.add_argument("--allow-remote", action="store_true",
                   help="let --host be an address other machines reach: the page has no login, so whoever "
                   "reaches it reads the study")
    d.add_argument("--interval", type=float, default=2.0, help="seconds between the page's updates (2)")
    d.set_defaults(func=_dashboard)


def _dashboard(args: argparse.Namespace) -> int:
    from optimlab.report.serve import make_server

    server = make_server(store_path(args.db), args.host, args.port, args.allow_remote, args.interval)
    # Ctrl-C stops it even where the process was started with SIGINT ignored (Python then installs no
    # handler of its own), and so does SIGTERM
    before = {s: signal.signal(s, signal.default_int_handler) for s in (signal.SIGINT, signal.SIGTERM)}
    print(f"dashboard of {server.dashboard.name}: {server.url} (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("dashboard stopped", file=sys.stderr)
    finally:
        server.server_close()
        for s, handler in before.items():
            signal.signal(s, handler)
    return 0
