"""The live dashboard's server: the page, Plotly's script (from the installed ``plotly`` package, so the
page works offline) and ``/api/state`` (:func:`optimlab.report.live.state_of` as JSON), on the
standard library's threading HTTP server, on the loopback interface unless told otherwise.

The store is read only when its files changed, however many pages poll (the state, whose claims may
die with time alone, is made again from what was read at most every FRESH_S); reading never writes it,
so any number of dashboards follow one study. Requests naming another host than this machine's
loopback names are refused (a DNS name rebound to 127.0.0.1 by another site reads nothing), unless
``allow_remote``.
"""

from __future__ import annotations

import errno
import html
import ipaddress
import json
import math
import socket
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from optimlab.errors import OptimlabError
from optimlab.report.live import plotly_js, script_json, static

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# the state is made again from what was read after this long, the store unchanged: a claim whose
# holder stopped renewing it (or exited) turns dead with time alone
FRESH_S = 0.5


def check_host(host: str, allow_remote: bool) -> list[tuple]:
    """The addresses ``host`` names (getaddrinfo's); refused unless they are all loopback ones or
    ``allow_remote``: the dashboard has no login, and shows whoever reaches it the study."""
    if not host or "\0" in host:
        raise OptimlabError(f"--host must name an interface, e.g. 127.0.0.1; got {host!r}")
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise OptimlabError(f"cannot find the address of --host {host}: {e}") from None
    addresses = [info[4][0] for info in found]
    remote = [a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
    if remote and not allow_remote:
        raise OptimlabError(
            f"--host {host} ({remote[0]}) is not a loopback address: the dashboard has no login, so anyone "
            "who can reach this machine there would read the study (its file, runs, errors, host names). "
            "Serve on 127.0.0.1 (the default) and reach it through an SSH tunnel, or pass --allow-remote "
            "to serve there anyway")
    return found


class Dashboard:
    """What the server serves: the page and the state of the store ``path``, read again only when its
    files changed; the state itself (claims live or dead, ages) is made again at most every FRESH_S."""

    def __init__(self, path: str | Path, interval: float = 2.0):
        if not (isinstance(interval, int | float) and math.isfinite(interval) and interval > 0):
            raise OptimlabError(f"--interval must be a number of seconds > 0; got {interval}")
        self.path, self.interval = Path(path), float(interval)
        self.lock = threading.Lock()
        self.reads, self.made, self.made_of, self.body = 0, -math.inf, 0, b""
        self._read()  # a path that is no study store is refused here, before serving
        self.name = self.snapshot.results.meta.get("name") or self.path.name
        self.script = plotly_js().encode()
        self.js = static("dashboard.js").encode()
        config = {"api": "api/state", "plotly": "plotly.min.js", "interval": self.interval}
        self.page = (static("dashboard.html").replace("{{title}}", html.escape(f"Study {self.name}"))
                     .replace("{{config}}", script_json(config))).encode()

    def _signature(self) -> tuple:
        """What tells that the store changed: its file's and its write-ahead log's size and time."""
        out = []
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                st = p.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def _read(self) -> None:
        from optimlab.report.live import read_store

        signature = self._signature()  # before reading: a write meanwhile is read next time
        try:
            self.snapshot = read_store(self.path)
        except sqlite3.Error as e:  # a page unreadable (damaged) or the file gone while it was read
            raise OptimlabError(f"cannot read {self.path}: {e}; `optimlab study check {self.path}` says "
                                "whether it is damaged") from None
        self.signature, self.reads = signature, self.reads + 1

    def state(self) -> bytes:
        """The state as JSON; a store that cannot be read now (removed, damaged) gives ``{"error":
        message}``, and the page says so."""
        from optimlab.report.live import state_of

        with self.lock:
            try:
                if self._signature() != self.signature:
                    self._read()
            except OptimlabError as e:
                self.signature = None
                return json.dumps({"error": str(e)}).encode()
            if self.made_of != self.reads or time.monotonic() - self.made > FRESH_S:
                state = state_of(self.snapshot)
                # what the page redraws on: another read of the store, or a claim that died since
                alive = "".join("1" if c["live"] else "0" for c in state["claims"])
                state["version"] = f"{self.reads}:{alive}"
                self.body = json.dumps(state, allow_nan=False).encode()
                self.made, self.made_of = time.monotonic(), self.reads
            return self.body


class DashboardServer(ThreadingHTTPServer):
    """A threading HTTP server of one :class:`Dashboard` (one thread a request, daemon threads)."""

    daemon_threads = True
    allow_reuse_address = False  # a port in use is refused, not shared

    def __init__(self, address, dashboard: Dashboard, family: int):
        self.address_family = family
        self.dashboard = dashboard
        self.hosts: set[str] | None = None  # the Host headers answered (None: any)
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        hosts = self.server.hosts
        if hosts is not None and self.headers.get("Host", "").lower() not in hosts:
            # a page of another site that a DNS name rebound to this machine: not served
            return self._send(403, b"unknown Host header: open the address the dashboard printed",
                              "text/plain; charset=utf-8")
        board, path = self.server.dashboard, self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(200, board.page, "text/html; charset=utf-8")
        elif path == "/api/state":
            self._send(200, board.state(), "application/json")
        elif path == "/plotly.min.js":
            self._send(200, board.script, "text/javascript; charset=utf-8", cache=True)
        elif path == "/dashboard.js":
            self._send(200, board.js, "text/javascript; charset=utf-8")
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon", cache=True)
        else:
            self._send(404, b"not found", "text/plain; charset=utf-8")

    def _send(self, code: int, body: bytes, kind: str, cache: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the page went away meanwhile
            pass

    def log_message(self, format, *args) -> None:  # noqa: A002 (http.server's name)
        pass  # the terminal shows the address, not a line per poll


def make_server(path: str | Path, host: str = "127.0.0.1", port: int | None = None,
                allow_remote: bool = False, interval: float = 2.0) -> DashboardServer:
    """A dashboard of the store ``path`` listening on ``host``:``port`` (None: a free port), ready for
    ``serve_forever()``. Refused, with nothing bound: a path that is no study store, a host that is
    not a loopback address without ``allow_remote``, a port in use, a bad interval."""
    found = check_host(host, allow_remote)
    if port is not None and not (isinstance(port, int) and 1 <= port <= 65535):
        raise OptimlabError(f"--port must be an integer in 1..65535 (leave it out for a free one); "
                            f"got {port}")
    dashboard = Dashboard(path, interval)
    family, *_, address = found[0]
    address = (address[0], port or 0, *address[2:])
    try:
        server = DashboardServer(address, dashboard, family)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise OptimlabError(f"port {port} on {host} is in use (another dashboard or server?): choose "
                                "another --port, or leave --port out to get a free one") from None
        if e.errno == errno.EACCES:
            raise OptimlabError(f"cannot listen on port {port} of {host}: permission denied (ports below "
                                "1024 need privileges); choose another --port or leave it out") from None
        raise OptimlabError(f"cannot listen on {host}:{port or 'a free port'}: "
                            f"{e.strerror or e}") from None
    if not allow_remote:  # the names this server answers to (see Handler.do_GET)
        bound = server.server_address[1]
        server.hosts = {f"{f'[{h}]' if ':' in h else h}:{bound}".lower() for h in (*LOOPBACK_NAMES, host)}
    return server


def serve(path: str | Path, host: str = "127.0.0.1", port: int | None = None, allow_remote: bool = False,
          interval: float = 2.0, ready=print) -> None:
    """Serve the dashboard until interrupted (Ctrl-C); ``ready(url)`` is called once it listens."""
    server = make_server(path, host, port, allow_remote, interval)
    try:
        ready(server.url)
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
