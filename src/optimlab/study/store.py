"""The store of a study: one SQLite database (WAL) with the study file, the environment, every run,
every evaluation row, the logged training losses and the checkpoints of the work in flight.

Rows reach the database only together with the checkpoint they belong to, in one transaction
(:meth:`StudyStore.commit`). So a process killed at any moment leaves the database as it was at the
last checkpoint: no partial or duplicate rows, at most one epoch of the runs in flight to redo.
Of a study run, only the driving process writes; its workers send it their checkpoints. Several
study processes share one store through claims (one a unit, with a lease each holder renews): a
commit under a claim another process took over writes nothing (:class:`LostClaim`).

Schema 5 (older stores are upgraded when opened): a run's ``dual_lr`` (NULL without multipliers)
and ``penalty`` (NULL without a penalty coefficient), and an ``extras`` JSON object per evaluation and
log row for the columns only some studies have
(``violation_<constraint>``, ``multiplier_<constraint>``, a constrained run's batch ``accuracy``)
(schema 2); a run's ``engine``, how it was trained ("vectorized: a group of 6 runs", "one by one:
<why>"), and in ``meta`` the ``code`` the study imports, with a fingerprint of its files (schema 3);
the ``claims`` table: unit, token, runs, host, pid, since, heartbeat (schema 4); the
``claim_history`` table, every claim ever made (id, token, unit, runs, host, pid, since, ended,
outcome), each evaluation and log row's ``claim``, the id of the claim that wrote it, and the
evaluation rows' ``val_loss`` and ``val_accuracy`` (NULL without a validation set) (schema 5); a
run's ``task`` (NULL in a study of one task; a study of ``[[tasks]]`` holds each task's settings in its
definition) (schema 6).
"""

from __future__ import annotations

import io
import json
import os
import platform
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from optimlab import __version__
from optimlab.errors import OptimlabError
from optimlab.study import axes
from optimlab.study.spec import StudySpec

SCHEMA_VERSION = 6
HOST = platform.node()
# a claim whose holder has not renewed it for this long is dead (its holder renews every HEARTBEAT_S)
LEASE_S = 60.0
HEARTBEAT_S = 5.0
EVAL_COLUMNS = ("step", "epoch", "batch_loss", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                "test_loss", "test_accuracy", "lr", "wall_time")
LOG_COLUMNS = ("step", "epoch", "loss", "lr")
STATUSES = ("pending", "running", "completed", "diverged", "failed")


def run_key() -> str:
    """What tells runs apart, the runs' unique index: their axes (NULL, "not an axis", as 0: no
    learning rate or coefficient is 0)."""
    return "(" + ", ".join(f"coalesce({a.name}, 0)" if a.optional else a.name for a in axes.AXES) + ")"


def _axis_columns() -> str:
    return ",\n    ".join(f"{a.name} {a.sql}{'' if a.optional else ' NOT NULL'}" for a in axes.AXES)


def schema() -> str:
    """The tables of a new store, its runs' axis columns from :data:`optimlab.study.axes.AXES`."""
    return f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    {_axis_columns()},
    config TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN {STATUSES}),
    steps INTEGER NOT NULL DEFAULT 0,
    diverged_at INTEGER,
    wall_time REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    worker INTEGER,
    updated REAL,
    engine TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_configuration ON runs {run_key()};
CREATE TABLE IF NOT EXISTS evals (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    step INTEGER NOT NULL, epoch REAL NOT NULL, batch_loss REAL, train_loss REAL,
    train_accuracy REAL, test_loss REAL, test_accuracy REAL, lr REAL, wall_time REAL, extras TEXT,
    claim INTEGER, val_loss REAL, val_accuracy REAL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS train_log (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    step INTEGER NOT NULL, epoch REAL NOT NULL, loss REAL, lr REAL, extras TEXT, claim INTEGER,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    unit TEXT PRIMARY KEY, data BLOB NOT NULL, updated REAL
);
{CLAIMS};
{CLAIM_HISTORY}"""


# who trains which unit: one claim a unit, a lease its holder renews (schema 4)
CLAIMS = """CREATE TABLE IF NOT EXISTS claims (
    unit TEXT PRIMARY KEY, token TEXT NOT NULL UNIQUE, runs TEXT NOT NULL, host TEXT NOT NULL,
    pid INTEGER NOT NULL, since REAL NOT NULL, heartbeat REAL NOT NULL
)"""
# every claim ever made, and how it ended: finished, failed, released, died (its holder gone), or NULL
# while it is held (schema 5); rows name the claim that wrote them
CLAIM_HISTORY = """CREATE TABLE IF NOT EXISTS claim_history (
    id INTEGER PRIMARY KEY, token TEXT NOT NULL UNIQUE, unit TEXT NOT NULL, runs TEXT NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, since REAL NOT NULL, ended REAL, outcome TEXT
)"""


def _holds(old: dict, new: dict) -> bool:
    """Whether the study definition ``old`` holds the study ``new``: the same but for grid points and
    tasks it has besides (a store extended with another file, run again with an earlier one)."""
    rest = ("grid", "tasks")
    if {k: v for k, v in old.items() if k not in rest} != {k: v for k, v in new.items() if k not in rest}:
        return False
    points = {json.dumps(g) for g in old.get("grid", [])}
    tasks = old.get("tasks", {})
    return (("tasks" in old) == ("tasks" in new) and all(json.dumps(g) in points for g in new.get("grid", []))
            and all(tasks.get(name) == t for name, t in new.get("tasks", {}).items()))


class StoreNotWritable(OptimlabError):
    """The store cannot be written (read-only file or folder, full disk, I/O error). Nothing was half
    written: the transaction that failed left the store as it was; the run continues once the cause is
    gone."""


def write_error(path: Path | None, e: sqlite3.Error) -> StoreNotWritable | None:
    """The plain message for an SQLite error that means the store cannot be written, else None."""
    text, where = str(e), path if path is not None else "the study store"
    folder = Path(where).parent if path is not None else None
    if "disk is full" in text:
        return StoreNotWritable(
            f"the disk holding {where} is full: the last transaction was not written and the store is as "
            "it was at its last checkpoint. Free some space and run the same command again to continue")
    if "readonly" in text or ("unable to open" in text and folder is not None and not _writable(folder)):
        return StoreNotWritable(
            f"{where} cannot be written: {_read_only_part(Path(where))} is read-only. Nothing was changed; "
            "status, report and export read it as it is. Make it writable (or copy the folder "
            "elsewhere) to continue the study")
    if "disk I/O error" in text:
        return StoreNotWritable(f"a disk I/O error while writing {where} ({text}): the last transaction was "
                                "not written. Check the disk and run the same command again to continue")
    return None


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def _read_only_part(path: Path) -> str:
    """Which of the store's file and its folder cannot be written, in words."""
    if not _writable(path.parent):
        return f"its folder {path.parent}"
    return f"the file {path}" if path.exists() and not _writable(path) else f"{path} (or its folder)"


class LostClaim(Exception):
    """The unit's claim is no longer this process's: another took it over (this one's lease expired).
    Whatever it trained since its last checkpoint is dropped, never written."""


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, another user's
        return True
    return True


def claim_is_live(claim: dict, now: float | None = None) -> bool:
    """A claim is live while its holder renews it (within LEASE_S) and, on this machine, exists."""
    now = time.time() if now is None else now
    if now - claim["heartbeat"] > LEASE_S:
        return False
    return not (claim["host"] == HOST and not pid_alive(claim["pid"]))


def unit_key(kind: str, run_ids: list[int]) -> str:
    """The name of a unit of work: its kind ("run" or "group") and its runs, e.g. "group:3,4,5"."""
    return f"{kind}:{','.join(map(str, sorted(run_ids)))}"


def unit_runs(key: str) -> list[int]:
    return [int(i) for i in key.partition(":")[2].split(",")]


def environment() -> dict:
    """Versions and device of this machine, recorded with the study."""
    import numpy

    info = {"optimlab": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "host": platform.node(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return info


def checkpoint_bytes(ckpt: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def checkpoint_from_bytes(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def integrity(conn: sqlite3.Connection, full: bool = True) -> list[str]:
    """What SQLite finds damaged in the database (``quick_check``: the pages and b-trees, in about
    the time of reading the file; ``full``: ``integrity_check``, indexes too); empty when intact."""
    try:
        found = [r[0] for r in conn.execute(f"PRAGMA {'integrity_check' if full else 'quick_check'}")]
    except sqlite3.DatabaseError as e:
        return [str(e)]
    return [] if found == ["ok"] else found


def check_store(path: str | Path) -> dict:
    """The full check of ``optimlab study check``: SQLite's integrity check, and for each table
    whether every row can be read; ``{"problems": [...], "tables": {name: rows or error}}``."""
    path = Path(path)
    if not path.is_file():
        raise OptimlabError(f"{path}: no such study store")
    conn = read_connection(path)
    try:
        try:
            present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as e:  # the first page: the header and the table of tables
            return {"problems": [f"the file's first page: {e}"], "tables": {}}
        if not {"meta", "runs", "evals"} <= present:
            raise OptimlabError(f"{path} is an SQLite database but not an optimlab study store")
        problems = integrity(conn)
        tables = {}
        for table in (t for t in _WIDE if t in present):  # claims: not in stores before schema 4
            try:
                tables[table] = conn.execute(f"SELECT COUNT(*), SUM(LENGTH(CAST({_WIDE[table]} AS BLOB))) "
                                             f"FROM {table}").fetchone()[0]
            except sqlite3.DatabaseError as e:
                tables[table] = f"unreadable: {e}"
                problems.append(f"table {table}: {e}")
    finally:
        conn.close()
    return {"problems": problems, "tables": tables}


def read_connection(path: Path) -> sqlite3.Connection:
    """A connection for reading (nothing here writes through it). Reading a WAL database makes its
    ``-wal`` and ``-shm`` files: in a writable folder the connection may write, so that, the last to
    close, it removes them again (one opened read-only could not); in a folder that cannot be written
    (a read-only mount) they cannot be made, and the database is read as immutable (``immutable=1``),
    which is exact there: nobody can change it."""
    uri = f"file:{path}" if _writable(path.parent) else f"file:{path}?mode=ro"
    try:
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError as e:
            if "unable to open" not in str(e) or _writable(path.parent):
                raise OptimlabError(f"cannot open {path}: {e}") from None
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, isolation_level=None)
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.DatabaseError as e:
        raise OptimlabError(f"{path} is not a study store (SQLite says: {e})") from None


def _definition_and_runs(src: sqlite3.Connection, source: Path) -> tuple[dict, list[str], list[dict]]:
    """What salvage needs whole: the meta table (with the definition), the runs' columns and rows."""
    try:
        meta = dict(src.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as e:
        raise OptimlabError(f"the study's definition in {source} cannot be read ({e}); nothing to salvage: "
                            "run the study file into a new folder") from None
    if "definition" not in meta:
        raise OptimlabError(f"{source} holds no study definition: not a study store")
    try:
        cols = [c[1] for c in src.execute("PRAGMA table_info(runs)")]
        runs = [dict(zip(cols, r, strict=True)) for r in src.execute("SELECT * FROM runs ORDER BY id")]
    except sqlite3.DatabaseError as e:
        raise OptimlabError(f"the runs of {source} cannot be read ({e}); run the study file into a new "
                            "folder") from None
    return meta, cols, runs


def salvage(source: str | Path, out: str | Path) -> dict:
    """Copy what is intact of a damaged store into a new one, ``out``: the study's definition, and
    every finished run whose rows can all be read, with its rows; every other run is pending in the
    new store (trained again by the next ``study run``). Returns ``{"copied": n, "again": n}``.

    Refused when the definition cannot be read (run the study file into a new folder instead)."""
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise OptimlabError(f"{source}: no such study store")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OptimlabError(f"{out} exists and is not empty: salvage writes a new study folder")
    src = read_connection(source)
    try:
        meta, cols, runs = _definition_and_runs(src, source)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OptimlabError(f"cannot create {out}: {e.strerror or e}") from None
    except BaseException:
        src.close()
        raise
    dst = StudyStore._connect(out / "study.db")
    copied = again = 0
    try:
        with _Transaction(dst, out / "study.db"):
            for statement in schema().split(";"):
                if statement.strip():
                    dst.execute(statement)
            meta["schema_version"] = str(SCHEMA_VERSION)
            dst.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
            keep = [c for c in cols if c in _columns(dst, "runs")]
            # the rows' columns both stores have (an older store lacks some: NULL in the new one)
            shared = {t: [c for c in _columns(src, t) if c in _columns(dst, t)]
                      for t in ("evals", "train_log")}
            for run in runs:
                rows = None
                if run["status"] in ("completed", "diverged"):
                    try:
                        rows = {t: src.execute(f"SELECT {', '.join(shared[t])} FROM {t} WHERE run_id=? "
                                               "ORDER BY step", (run["id"],)).fetchall() for t in shared}
                    except sqlite3.DatabaseError:
                        rows = None  # a damaged page among its rows: trained again
                if rows is None:
                    run = {**run, "status": "pending", "steps": 0, "diverged_at": None, "wall_time": None,
                           "error": "salvaged: its rows were damaged or unfinished; trained again"}
                    again += 1
                else:
                    copied += 1
                dst.execute(f"INSERT INTO runs ({', '.join(keep)}) VALUES ({', '.join('?' * len(keep))})",
                            [run[c] for c in keep])
                for table, found in (rows or {}).items():
                    if found:
                        dst.executemany(f"INSERT INTO {table} ({', '.join(shared[table])}) VALUES "
                                        f"({', '.join('?' * len(shared[table]))})", found)
            _copy_claim_history(src, dst)
    finally:
        src.close()
        dst.close()
    return {"copied": copied, "again": again}


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _copy_claim_history(src: sqlite3.Connection, dst: sqlite3.Connection) -> None:
    """Salvage: the claims that wrote the copied rows; where that table is damaged (or the store
    older than it), the rows no longer name a claim."""
    try:
        history = src.execute("SELECT * FROM claim_history").fetchall() if "claim" in _columns(src, "evals") \
            else None
    except sqlite3.DatabaseError:
        history = None
    if history is None:
        for table in ("evals", "train_log"):
            dst.execute(f"UPDATE {table} SET claim = NULL")
        return
    if history:
        dst.executemany(f"INSERT INTO claim_history VALUES ({', '.join('?' * len(history[0]))})", history)


# a column of each table to read whole (every page of the table is visited)
_WIDE = {"meta": "value", "runs": "config", "evals": "extras", "train_log": "extras", "checkpoints": "data",
         "claims": "runs", "claim_history": "runs"}


def _readable(data: bytes) -> bool:
    """Whether a stored checkpoint loads (a damaged blob does not)."""
    try:
        checkpoint_from_bytes(data)
    except Exception:
        return False
    return True


class StudyStore:
    """One study's database. Open with :meth:`create` (a study file) or :meth:`open` (to read)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, readonly: bool = False):
        self.path = path
        self.conn = conn
        self.readonly = readonly  # opened to read only: an upgrade happens in a copy in memory
        self.held: dict[str, str] = {}  # unit -> token of the claims this process holds
        self.claim_ids: dict[str, int] = {}  # unit -> its claim's id in claim_history (rows name it)
        self.claimed_here: set[int] = set()  # every run this process has claimed (not to retry them)
        self.grown_budgets: dict = {}  # extended with a larger budget: task -> its new budget

    # ------------------------------------------------------------------ opening
    @classmethod
    def _connect(cls, path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=60, isolation_level=None)  # explicit transactions
        deadline = time.time() + 60
        while True:  # switching to WAL needs the file alone: SQLite says "locked" at once, not after a wait
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.time() > deadline:
                    conn.close()
                    raise
                time.sleep(0.05)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @classmethod
    def open(cls, path: str | Path, readonly: bool = False) -> StudyStore:
        """Open an existing store, to continue its study, or (``readonly``) only to read it: that
        never writes, so it works on a read-only store or folder, and a store of an older schema is
        upgraded in a copy in memory."""
        path = Path(path)
        if not path.is_file():
            raise OptimlabError(f"{path}: no such study store")
        try:
            conn = read_connection(path) if readonly else cls._connect(path)
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as e:
            if (unwritable := write_error(path, e)) is not None:
                raise unwritable from None
            raise OptimlabError(f"{path} is not a study store (SQLite says: {e})") from None
        if not {"meta", "runs", "evals"} <= tables:
            conn.close()
            raise OptimlabError(f"{path} is an SQLite database but not an optimlab study store")
        problems = integrity(conn, full=False)
        if problems:
            conn.close()
            raise OptimlabError(f"{path} is damaged ({problems[0]}{' ...' if len(problems) > 1 else ''}); "
                                f"`optimlab study check {path}` says what is damaged")
        store = cls(path, conn, readonly)
        version = int(store.meta("schema_version") or 0)
        if version > SCHEMA_VERSION:
            conn.close()
            raise OptimlabError(
                f"{path} was written by a newer optimlab (store schema {version}; this one reads up "
                f"to {SCHEMA_VERSION}); upgrade optimlab to read it"
            )
        if readonly and (version < SCHEMA_VERSION or store._missing_axes()):
            store.conn = sqlite3.connect(":memory:", isolation_level=None)
            conn.backup(store.conn)
            conn.close()
        if version == 1:
            store._upgrade_from_1()
            version = 2
        if version == 2:
            store._upgrade(2, [("runs", "engine TEXT")], [])
            version = 3
        if version == 3:
            store._upgrade(3, [], [CLAIMS])
            version = 4
        if version == 4:
            store._upgrade(4, [("evals", "claim INTEGER"), ("train_log", "claim INTEGER"),
                               ("evals", "val_loss REAL"), ("evals", "val_accuracy REAL")], [CLAIM_HISTORY])
            version = 5
        if version == 5:  # the runs' task column: the new axis, added below
            store._upgrade(5, [], [])
        store._add_new_axes()
        return store

    def _add_new_axes(self) -> None:
        """An optional axis added to :data:`optimlab.study.axes.AXES` since the store was written gets
        its column (NULL: the runs there do not vary it) and its place in the runs' unique key."""
        new = self._missing_axes()
        if not new:
            return
        required = [a.name for a in new if not a.optional]
        if required:
            raise OptimlabError(f"{self.path} lacks the grid axes {', '.join(required)}, which every run "
                                "has; it was written by another optimlab")
        try:
            with self.transaction():
                for a in new:
                    self.conn.execute(f"ALTER TABLE runs ADD COLUMN {a.name} {a.sql}")
                self.conn.execute("DROP INDEX IF EXISTS runs_configuration")
                self.conn.execute(f"CREATE UNIQUE INDEX runs_configuration ON runs {run_key()}")
        except sqlite3.OperationalError as e:
            self.conn.close()
            raise OptimlabError(f"{self.path} needs the new grid axes {', '.join(a.name for a in new)} added "
                                f"to be opened, which failed: {e}. Open a writable copy of it") from None

    def _missing_axes(self) -> list[axes.Axis]:
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(runs)")}
        return [a for a in axes.AXES if a.name not in have]

    def _upgrade(self, version: int, columns: list[tuple[str, str]], tables: list[str]) -> None:
        """Schema ``version`` -> ``version + 1``: new columns (NULL in the rows already there) and
        tables."""
        try:
            with self.transaction():
                for table, column in columns:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
                for table in tables:
                    self.conn.execute(table)
                self._set_meta(schema_version=str(version + 1))
        except sqlite3.OperationalError as e:
            self.conn.close()
            raise OptimlabError(f"{self.path} is a store of schema {version} and must be upgraded to schema "
                                f"{version + 1} to be opened, which failed: {e}. Open a writable copy of "
                                "it") from None

    def _upgrade_from_1(self) -> None:
        """Schema 1 -> 2: the dual_lr, penalty and extras columns (empty: schema 1 had no constrained
        studies), and the study's definition as schema 2 writes it (dual_lr no longer shared, the
        formulation is)."""
        try:
            with self.transaction():
                for table, column in (("runs", "dual_lr REAL"), ("runs", "penalty REAL"),
                                      ("evals", "extras TEXT"), ("train_log", "extras TEXT")):
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
                # schema 2's key (later axes: _add_new_axes)
                self.conn.execute("CREATE UNIQUE INDEX runs_configuration ON runs "
                                  "(optimizer, lr, seed, coalesce(dual_lr, 0), coalesce(penalty, 0))")
                definition = json.loads(self.meta("definition") or "{}")
                shared = definition.get("shared", {})
                shared.pop("dual_lr", None)
                shared.setdefault("formulation", "lagrangian")
                self._set_meta(definition=json.dumps(definition, sort_keys=True), schema_version="2")
        except sqlite3.OperationalError as e:
            self.conn.close()
            raise OptimlabError(f"{self.path} is a store of schema 1 and must be upgraded to schema "
                                f"{SCHEMA_VERSION} to be opened, which failed: {e}. Open a writable "
                                "copy of it") from None

    @classmethod
    def create(cls, path: str | Path, spec: StudySpec, extend: bool = False, code: dict | None = None,
               code_changed: bool = False) -> StudyStore:
        """Open the store of ``spec`` at ``path``, creating it, or check that it holds this study.

        A store of another study file is refused unless ``extend``, which adds the new runs of a
        file whose shared settings (data, model, budget, ...) are the same. ``code``: the fingerprint
        of the user's code the study imports (:func:`optimlab.study.code.fingerprint`); a store whose
        recorded code differs is refused unless ``code_changed``.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OptimlabError(f"cannot create the folder of {path}: {e.strerror or e}") from None
        if not _writable(path.parent) or (path.exists() and not _writable(path)):
            raise StoreNotWritable(
                f"{path} cannot be written: {_read_only_part(path)} is read-only. Nothing was changed; "
                "choose another --out, or make it writable to continue the study there")
        existed = path.exists() and cls._has_tables(path)
        if not existed:  # made by one process: the first to hold the lock; the others then open it
            existed = cls._create_tables(path, spec, code)
        store = cls.open(path)
        with store.transaction():
            definition = spec.definition()
            if existed:
                definition = store._check_same_study(spec, extend)
                store._check_same_code(code, code_changed)
            store._set_meta(study_file=spec.text, definition=definition,
                            environment=json.dumps(environment()),
                            code=json.dumps(code or {}, sort_keys=True))
            if store.grown_budgets:
                store._reopen(store.grown_budgets)
            store._insert_runs(spec.grid, spec.configs())
        return store

    def _reopen(self, budgets: dict) -> None:
        """A larger budget: every finished run of a task whose budget grew is pending again with it,
        to continue from its final checkpoint (``budgets``: task, None for a study of one task ->
        {"epochs" or "iterations": the new value})."""
        for row in self.conn.execute("SELECT id, task, config FROM runs WHERE status IN "
                                     "('completed', 'diverged')").fetchall():
            budget = budgets.get(row[1])
            if budget is None:
                continue
            config = {**json.loads(row[2]), "epochs": None, "iterations": None, **budget}
            self.conn.execute("UPDATE runs SET status='pending', config=?, updated=? WHERE id=?",
                              (json.dumps(config), time.time(), row[0]))

    def add_runs(self, points: list[axes.Point], configs: list) -> int:
        """Add runs at ``points`` (beside the grid's: a second stage) with their TrainConfigs; those
        the store holds already are left as they are. Returns how many were new."""
        with self.transaction():
            return self._insert_runs(points, configs)

    def _insert_runs(self, points, configs) -> int:
        columns, added = ", ".join(axes.NAMES), 0
        for p, config in zip(points, configs, strict=True):
            added += self.conn.execute(
                f"INSERT OR IGNORE INTO runs ({columns}, config, updated) "
                f"VALUES ({', '.join('?' * len(axes.NAMES))}, ?, ?)",
                (*axes.key(p), json.dumps(config.to_dict()), time.time())).rowcount
        return added

    def final_evaluations(self) -> dict[int, dict]:
        """Per run, its last evaluation row's ``val_loss, val_accuracy, test_loss, test_accuracy``."""
        cur = self.conn.execute(
            "SELECT run_id, val_loss, val_accuracy, test_loss, test_accuracy FROM evals e "
            "WHERE step = (SELECT MAX(step) FROM evals WHERE run_id = e.run_id)")
        names = ("val_loss", "val_accuracy", "test_loss", "test_accuracy")
        return {r[0]: dict(zip(names, r[1:], strict=True)) for r in cur}

    @classmethod
    def _create_tables(cls, path: Path, spec: StudySpec, code: dict | None) -> bool:
        """Create the store's tables and write its definition, unless another process did first
        (then True). Two processes that start together take turns: a lock SQLite refuses at once
        (switching a new file to WAL) is tried again for up to a minute."""
        deadline = time.time() + 60
        while True:
            try:
                conn = cls._connect(path)
                try:
                    with _Transaction(conn, path):
                        if conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
                            return True
                        for statement in schema().split(";"):
                            if statement.strip():
                                conn.execute(statement)
                        # the whole definition at once: a process that opens it next checks against it
                        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
                            ("schema_version", str(SCHEMA_VERSION)), ("name", spec.name),
                            ("created", str(time.time())), ("definition", spec.definition()),
                            ("study_file", spec.text), ("code", json.dumps(code or {}, sort_keys=True))])
                        return False
                finally:
                    conn.close()
            except sqlite3.OperationalError as e:
                if "locked" in str(e) and time.time() < deadline:
                    time.sleep(0.05)
                    continue
                raise (write_error(path, e) or
                       OptimlabError(f"cannot write the study store {path}: {e}")) from None
            except sqlite3.DatabaseError as e:
                raise OptimlabError(f"{path} is not a study store (SQLite says: {e})") from None

    @staticmethod
    def _has_tables(path: Path) -> bool:
        """Whether the file holds any table (an empty file: a store another process is creating)."""
        try:
            conn = sqlite3.connect(path, timeout=60)
            try:
                return bool(conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall())
            finally:
                conn.close()
        except sqlite3.DatabaseError:
            return True  # not SQLite: open() says so

    def _check_same_code(self, code: dict | None, code_changed: bool) -> None:
        from optimlab.study.code import changes

        old = json.loads(self.meta("code") or "{}")
        differ = changes(old, code or {})
        if differ and not code_changed:
            raise OptimlabError(
                f"{self.path} holds runs of other code: {', '.join(differ)}. Runs trained by the old "
                "code and the new would be mixed in one study: use another --out, or pass --code-changed "
                "to go on anyway (the store then records the new fingerprint)")

    def _check_same_study(self, spec: StudySpec, extend: bool) -> str:
        """The definition the store is to hold for ``spec``: its own where it holds that study (or,
        extended, a study whose runs include all of this file's), else with ``extend`` the union of
        the two (grid points, tasks), else refused."""
        stored = self.meta("definition") or "{}"
        old, new = json.loads(stored), json.loads(spec.definition())
        if old == new:
            return stored
        if _holds(old, new):  # a file of a study extended before: all its runs are here
            return stored
        if not extend:
            raise OptimlabError(
                f"{self.path} holds another study (name {old.get('name')!r}) or another version of this "
                "file. Use another --out, or pass --extend to add the new runs of this file to it"
            )
        if ("tasks" in old) != ("tasks" in new):
            raise OptimlabError(
                f"cannot extend {self.path}: its study has {'[[tasks]]' if 'tasks' in old else 'one task'} "
                f"and this file {'[[tasks]]' if 'tasks' in new else 'one task'}; a study of one task cannot "
                "gain tasks (its runs name none): write the tasks into a new study (another --out)")
        self.grown_budgets = _grown_budgets(old, new, self.path)  # may be larger: runs continue
        if _without_budget(old.get("shared", {})) != _without_budget(new["shared"]):
            was = old.get("shared", {})
            differ = sorted(k for k in {*was, *new["shared"]} if k not in BUDGET
                            and was.get(k) != new["shared"].get(k))
            raise OptimlabError(
                f"cannot extend {self.path}: the shared settings differ ({', '.join(differ)}); only "
                "tasks, optimizers, learning rates, seeds and the other axes' values may be added, and "
                "the budget made larger"
            )
        points = {json.dumps(g, sort_keys=True): g for g in [*old.get("grid", []), *new["grid"]]}
        merged = {**new, "grid": [points[k] for k in sorted(points)]}
        if "tasks" in new:
            for task in sorted(set(old["tasks"]) & set(new["tasks"])):
                was, now = old["tasks"][task]["settings"], new["tasks"][task]["settings"]
                if _without_budget(was) != _without_budget(now):
                    differ = sorted(k for k in {*was, *now} if was.get(k) != now.get(k))
                    raise OptimlabError(
                        f"cannot extend {self.path}: the task {task!r} has other settings "
                        f"({', '.join(differ)}); its runs were trained with the old ones. Give the changed "
                        "task another name to add it beside the old one")
            merged["tasks"] = {**old["tasks"], **new["tasks"]}  # targets: the file's
        return json.dumps(merged, sort_keys=True)

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------------ helpers
    def transaction(self):
        return _Transaction(self.conn, self.path)

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, **items: str) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", items.items())

    # ------------------------------------------------------------------ runs
    def runs(self, status: str | None = None) -> list[dict]:
        """Every run (or those of one status) as dicts: id, optimizer, lr, seed, dual_lr, penalty,
        config, status, ..."""
        query = "SELECT * FROM runs" + (" WHERE status=?" if status else "") + " ORDER BY id"
        cur = self.conn.execute(query, (status,) if status else ())
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]

    def checkpoint(self, unit: str) -> bytes | None:
        row = self.conn.execute("SELECT data FROM checkpoints WHERE unit=?", (unit,)).fetchone()
        return row[0] if row else None

    def claims(self) -> list[dict]:
        """Every claim: unit, token, runs (ids), host, pid, since, heartbeat, and ``live``."""
        cur = self.conn.execute("SELECT * FROM claims ORDER BY since")
        cols = [c[0] for c in cur.description]
        now = time.time()
        out = [dict(zip(cols, row, strict=True)) for row in cur]
        for c in out:
            c["runs"], c["live"] = json.loads(c["runs"]), claim_is_live(c, now)
        return out

    def writers(self) -> dict[int, list[int]]:
        """Per run, the claims (ids in ``claim_history``) that wrote its evaluation and log rows, in
        the order of the rows' steps, each stretch once: ``[7]`` for a run trained by one claim,
        ``[7, 12]`` for one continued by another after its holder died. A claim appearing twice would be
        rows of two claims interleaved, which the store never writes. Rows of stores before schema 5
        name no claim (None)."""
        out: dict[int, list[int]] = {}
        for run_id, claim in self.conn.execute(
                "SELECT run_id, claim FROM (SELECT run_id, step, claim FROM evals UNION ALL "
                "SELECT run_id, step, claim FROM train_log) ORDER BY run_id, step"):
            stretch = out.setdefault(run_id, [])
            if not stretch or stretch[-1] != claim:
                stretch.append(claim)
        return out

    def claim_history(self) -> list[dict]:
        """Every claim made on the store: id, token, unit, runs, host, pid, since, ended, outcome
        (finished, failed, released, died; None while held)."""
        cur = self.conn.execute("SELECT * FROM claim_history ORDER BY id")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) | {"runs": json.loads(row[cols.index("runs")])}
                for row in cur]

    def claimed_runs(self) -> set[int]:
        """The runs in live claims (of any process)."""
        return {i for c in self.claims() if c["live"] for i in c["runs"]}

    def release_dead_claims(self) -> list[dict]:
        """Remove the claims whose holders are gone; their runs left 'running' go back to 'pending'
        (their checkpoints stay: whoever claims them next continues from there). Returns them."""
        with self.transaction():
            dead = [c for c in self.claims() if not c["live"]]
            self._end_claims([c["token"] for c in dead], "died")
            busy = self.claimed_runs()
            for (i,) in self.conn.execute("SELECT id FROM runs WHERE status='running'").fetchall():
                if i not in busy:
                    self.conn.execute("UPDATE runs SET status='pending' WHERE id=?", (i,))
        return dead

    def claim_unit(self, unit: str, run_ids: list[int], worker: int | None = None,
                   engine: str | None = None) -> Claim | None:
        """Claim a unit of work for this process, in one transaction: None when another live claim
        holds one of its runs or one is finished already. Else its checkpoint (as stored), or none
        after clearing any rows and checkpoints its runs have from an earlier cut of the study into
        units. ``engine``: how the unit is trained (recorded with its runs)."""
        import uuid

        with self.transaction():
            claims = self.claims()
            dead = [c for c in claims if not c["live"] and set(c["runs"]) & set(run_ids)]
            self._end_claims([c["token"] for c in dead], "died")
            if any(c["live"] and set(c["runs"]) & set(run_ids) for c in claims):
                return None
            marks = ",".join("?" * len(run_ids))
            finished = self.conn.execute(
                f"SELECT COUNT(*) FROM runs WHERE id IN ({marks}) AND status IN ('completed', 'diverged')",
                run_ids).fetchone()[0]
            if finished:
                return None
            ckpt = self.checkpoint(unit)
            unreadable = ckpt is not None and not _readable(ckpt)
            if unreadable:  # a damaged checkpoint would fail the unit on every rerun: start it afresh
                ckpt = None
                self.conn.executemany("UPDATE runs SET error=? WHERE id=?", [
                    ("its checkpoint could not be read (damaged); trained again from the start", i)
                    for i in run_ids])
            if ckpt is None:
                for table in ("evals", "train_log"):
                    self.conn.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", run_ids)
                for (other,) in self.conn.execute("SELECT unit FROM checkpoints").fetchall():
                    if set(unit_runs(other)) & set(run_ids):
                        self.conn.execute("DELETE FROM checkpoints WHERE unit=?", (other,))
            token, now, runs = uuid.uuid4().hex, time.time(), json.dumps(sorted(run_ids))
            self.conn.execute("INSERT OR REPLACE INTO claims (unit, token, runs, host, pid, since, "
                              "heartbeat) VALUES (?,?,?,?,?,?,?)",
                              (unit, token, runs, HOST, os.getpid(), now, now))
            claim_id = self.conn.execute(
                "INSERT INTO claim_history (token, unit, runs, host, pid, since) VALUES (?,?,?,?,?,?)",
                (token, unit, runs, HOST, os.getpid(), now)).lastrowid
            self.conn.executemany(
                "UPDATE runs SET status='running', attempts=attempts+1, error=CASE WHEN ? THEN error END, "
                "worker=?, updated=?, engine=coalesce(?, engine) WHERE id=?",
                [(unreadable, worker or os.getpid(), now, engine, i) for i in run_ids])
        self.held[unit] = token
        self.claim_ids[unit] = claim_id
        self.claimed_here.update(run_ids)
        return Claim(ckpt)

    def start_unit(self, unit: str, run_ids: list[int], worker: int | None = None,
                   engine: str | None = None) -> bytes | None:
        """:meth:`claim_unit` for a caller that is sure to get it (refused: an error)."""
        claim = self.claim_unit(unit, run_ids, worker, engine)
        if claim is None:
            raise OptimlabError(f"runs {run_ids} are claimed by another process or finished")
        return claim.checkpoint

    def _check_held(self, unit: str) -> None:
        """Inside a transaction: the unit's claim must still be this process's."""
        row = self.conn.execute("SELECT token FROM claims WHERE unit=?", (unit,)).fetchone()
        if unit not in self.held or row is None or row[0] != self.held[unit]:
            self._forget(unit)
            raise LostClaim(unit)

    def heartbeat(self) -> Heartbeat:
        """A thread renewing this process's claims every HEARTBEAT_S, on a connection of its own
        (``with store.heartbeat(): ...``)."""
        return Heartbeat(self.path, self.held)

    def commit(self, unit: str, run_ids: list[int], checkpoint: bytes | None, results: list[dict],
               finished: bool) -> None:
        """Write, in one transaction, the rows and state of the unit's runs and its checkpoint (kept
        when ``finished``: the study extended with a larger budget continues from it). ``results``:
        per run, ``status``, ``steps``, ``diverged_at``, ``wall_time``, ``evals`` and ``train_log``
        (all rows so far; those already stored are kept). Raises :class:`LostClaim`, writing nothing,
        when the unit's claim is no longer this process's."""
        with self.transaction():
            self._check_held(unit)
            for run_id, r in zip(run_ids, results, strict=True):
                status = r["status"] if r["status"] != "running" or not finished else "completed"
                self.conn.execute(
                    "UPDATE runs SET status=?, steps=?, diverged_at=?, wall_time=?, updated=? WHERE id=?",
                    (status, r["steps"], r["diverged_at"], r["wall_time"], time.time(), run_id))
                self._insert_rows("evals", EVAL_COLUMNS, run_id, r["evals"], self.claim_ids[unit])
                self._insert_rows("train_log", LOG_COLUMNS, run_id, r["train_log"], self.claim_ids[unit])
            if checkpoint is None:  # (a finished unit's stays: a larger budget continues from it)
                self.conn.execute("DELETE FROM checkpoints WHERE unit=?", (unit,))
            else:
                self.conn.execute("INSERT OR REPLACE INTO checkpoints (unit, data, updated) VALUES (?,?,?)",
                                  (unit, checkpoint, time.time()))
            if finished:
                self._end_claims([self.held[unit]], "finished")
        if finished:
            self._forget(unit)

    def _insert_rows(self, table: str, columns: tuple[str, ...], run_id: int, rows: list[dict],
                     claim: int) -> None:
        last = self.conn.execute(f"SELECT MAX(step) FROM {table} WHERE run_id=?", (run_id,)).fetchone()[0]
        new = [r for r in rows if last is None or r["step"] > last]
        if new:
            marks = ",".join("?" * (len(columns) + 3))
            self.conn.executemany(
                f"INSERT OR REPLACE INTO {table} (run_id, {', '.join(columns)}, extras, claim) "
                f"VALUES ({marks})",
                [(run_id, *(r.get(c) for c in columns), _extras(r, columns), claim) for r in new])

    def _end_claims(self, tokens: list[str], outcome: str) -> None:
        """Inside a transaction: remove the claims ``tokens`` and record how they ended."""
        now = time.time()
        self.conn.executemany("DELETE FROM claims WHERE token=?", [(t,) for t in tokens])
        self.conn.executemany("UPDATE claim_history SET ended=?, outcome=? WHERE token=? AND ended IS NULL",
                              [(now, outcome, t) for t in tokens])

    def _forget(self, unit: str) -> None:
        self.held.pop(unit, None)
        self.claim_ids.pop(unit, None)

    def fail(self, unit: str, run_ids: list[int], error: str, retry: bool) -> None:
        """Record that a unit's worker failed: back to pending (``retry``) or failed, with the error;
        the claim is released (a claim lost meanwhile: the new holder's runs are left alone)."""
        with self.transaction():
            try:
                self._check_held(unit)
            except LostClaim:
                return
            self._end_claims([self.held[unit]], "failed")
            self.conn.executemany(
                "UPDATE runs SET status=?, error=?, updated=? WHERE id=?",
                [("pending" if retry else "failed", error[-4000:], time.time(), i) for i in run_ids])
        self._forget(unit)

    def release(self, unit: str) -> None:
        """Give back a unit this process will not train further (its runs: pending, checkpoint kept)."""
        with self.transaction():
            try:
                self._check_held(unit)
            except LostClaim:
                return
            self._end_claims([self.held[unit]], "released")
            self.conn.execute(f"UPDATE runs SET status='pending' WHERE status='running' AND id IN "
                              f"({','.join('?' * len(unit_runs(unit)))})", unit_runs(unit))
        self._forget(unit)


class Heartbeat:
    """Renews the claims in ``held`` (unit -> token, shared with the store) every HEARTBEAT_S while
    in its ``with`` block; a holder that stops renewing (killed, frozen) loses them after LEASE_S."""

    def __init__(self, path: Path, held: dict[str, str]):
        import threading

        self.path, self.held = path, held
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="optimlab-heartbeat", daemon=True)

    def _beat(self) -> None:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            while not self.stop.wait(HEARTBEAT_S):
                tokens = list(self.held.values())
                if tokens:
                    with _Transaction(conn):
                        conn.executemany("UPDATE claims SET heartbeat=? WHERE token=?",
                                         [(time.time(), t) for t in tokens])
        except sqlite3.Error:  # the store went away (deleted, disk gone): the main thread will say so
            pass
        finally:
            conn.close()

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop.set()
        self.thread.join(timeout=HEARTBEAT_S + 60)
        return False


@dataclass(frozen=True)
class Claim:
    """A unit claimed by this process: where to continue it from (None: from the start)."""

    checkpoint: bytes | None


def _extras(row: dict, columns: tuple[str, ...]) -> str | None:
    """The row's values that have no column of their own, as a JSON object (None when there are none)."""
    extras = {k: v for k, v in row.items() if k not in columns}
    return json.dumps(extras) if extras else None


BUDGET = ("epochs", "iterations")


def _without_budget(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in BUDGET}


def _budget(settings: dict) -> dict:
    return {k: settings[k] for k in BUDGET if settings.get(k) is not None}


def _grown_budgets(old: dict, new: dict, path) -> dict:
    """The budgets that grew from the stored study ``old`` to ``new`` (definitions): task (None for
    a study of one task) -> the new budget; a smaller budget, another unit of budget or a learning-
    rate schedule (it spans its budget) is refused."""
    def budgets(d: dict) -> dict:
        shared = _budget(d.get("shared", {}))
        if "tasks" not in d:
            return {None: shared}
        return {t: {**shared, **_budget(v["settings"])} if _budget(v["settings"]) else shared
                for t, v in d["tasks"].items()}

    was, now = budgets(old), budgets(new)
    grown = {}
    for task in sorted(set(was) & set(now), key=str):
        a, b = was[task], now[task]
        if a == b:
            continue
        where = f"task {task!r}: " if task is not None else ""
        if set(a) != set(b) or any(b[k] < a[k] for k in a):
            raise OptimlabError(
                f"cannot extend {path}: {where}the budget changes from {a} to {b}; an extended study "
                "may only train longer in the same unit (more epochs, or more iterations). Write the "
                "other budget into a new study (another --out)")
        grown[task] = b
    if grown:
        at = axes.NAMES.index("schedule")
        points = [*old.get("grid", []), *new["grid"]]
        scheduled = sorted({str(p[at]) for p in points if len(p) > at and p[at] not in (None, "constant")}
                           | {str(d["shared"]["schedule"]) for d in (old, new)
                              if d.get("shared", {}).get("schedule") not in (None, "constant")})
        if scheduled:
            raise OptimlabError(
                f"cannot extend {path} with a larger budget: runs with a learning-rate schedule "
                f"({', '.join(scheduled)}) span their budget, so a longer one would be another run; "
                "train the longer runs into a new study (another --out)")
    return grown


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception): one writer at a time. An
    SQLite error that means the store cannot be written (read-only, full disk) is raised as
    :class:`StoreNotWritable`, with the store as it was before the transaction."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None = None):
        self.conn, self.path = conn, path

    def __enter__(self):
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise write_error(self.path, e) or e from None
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return False
            except sqlite3.OperationalError as e:
                exc = e
        if self.conn.in_transaction:  # SQLite rolls back by itself after some errors (a full disk)
            self.conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError) and (unwritable := write_error(self.path, exc)):
            raise unwritable from None
        if exc_type is None:
            raise exc
        return False
