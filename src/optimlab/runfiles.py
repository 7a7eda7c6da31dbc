"""Files of a run, written so that a crash at any moment leaves either the old or the new version.

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the target
(``os.replace`` is atomic on POSIX and Windows). Checkpoints load with ``weights_only=True``: tensors
and plain containers only, never arbitrary pickled objects.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

from optimlab.errors import OptimlabError

TEMP_SUFFIX = ".partial"


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
    except OSError as e:
        raise OptimlabError(
            f"cannot write to the output folder {folder}: {e.strerror or e}. Choose a folder you "
            "can write to with --out."
        ) from None


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def atomic_save(obj: dict, path: Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    _atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: Path, expected_format: str) -> dict:
    """Load a checkpoint with ``weights_only=True`` and check that it is of the expected format."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise OptimlabError(
            f"{path} is not a readable optimlab checkpoint ({type(e).__name__}: {e}). "
            "Delete it to start the run afresh."
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != expected_format:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise OptimlabError(
            f"{path} is not an optimlab checkpoint of format {expected_format!r} (found {found!r})"
        )
    return ckpt
