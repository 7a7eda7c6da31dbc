"""Files of a run, written so that a crash at any moment leaves either the old or the new version.

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the target
(``os.replace`` is atomic on POSIX and Windows). Checkpoints load with ``weights_only=True``: tensors
and plain containers only, never arbitrary pickled objects.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import tempfile
from pathlib import Path

import torch

from optimlab.errors import OptimlabError

TEMP_SUFFIX = ".partial"
_UMASK = os.umask(0o022)  # read once, at import (setting it is the only way to read it)
os.umask(_UMASK)


def remove_partial_files(folder: Path) -> None:
    """Delete what a write killed half-way left behind (``.NAME.*.partial``) in ``folder``."""
    for leftover in folder.glob(f".*{TEMP_SUFFIX}"):
        leftover.unlink(missing_ok=True)


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and make sure a file can be written there, or raise a clear error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise OptimlabError(
            f"cannot write to the output folder {folder!s:.200}: {getattr(e, 'strerror', None) or e}. "
            "Choose a folder you can write to with --out."
        ) from None


def _atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file; a file system that refuses (full, read-only)
    leaves the previous version in place and raises a plain error."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise _write_refused(path, e) from None
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600; the user's files are as their umask says
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _write_refused(path, e) from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _write_refused(path: Path, e: OSError) -> OptimlabError:
    full = e.errno == errno.ENOSPC
    what = "the disk is full" if full else f"the file system refused it ({e.strerror or e})"
    kept = "its previous version is kept" if path.exists() else "nothing of it was written"
    return OptimlabError(f"{path} was not written: {what}; {kept}. Free some space (or make the folder "
                         "writable) and run the command again (with --resume where the run has a checkpoint "
                         "already) to continue")


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, text.encode())


def atomic_save(obj: dict, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (serialized in memory first: torch's writer reports a
    full disk as an internal error)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic(path, buf.getvalue())


def load_checkpoint(path: Path, expected_format: str) -> dict:
    """Load a checkpoint with ``weights_only=True`` and check that it is of the expected format."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]  # torch's own advice runs to pages
        raise OptimlabError(
            f"{path} is not a readable optimlab checkpoint ({type(e).__name__}: {first}). "
            "Delete it to start the run afresh."
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != expected_format:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise OptimlabError(
            f"{path} is not an optimlab checkpoint of format {expected_format!r} (found {found!r})"
        )
    return ckpt
