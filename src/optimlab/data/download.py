"""Downloading a data set's files from their official mirrors, each checked against its SHA-256."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from optimlab.errors import OptimlabError

TIMEOUT_S = 20.0


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def offline() -> bool:
    """True when the user forbade downloads (``OPTIMLAB_OFFLINE=1``)."""
    return os.environ.get("OPTIMLAB_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def fetch(filename: str, mirrors: list[str], sha256: str, dest_dir: Path, progress=None, stream=None) -> Path:
    """Download ``filename`` from the first mirror that serves it with the right SHA-256.

    The file is written under a temporary name and renamed into ``dest_dir`` only once its checksum
    matches, so an interrupted download never leaves a partial file behind. Raises
    :class:`OptimlabError` listing every mirror and why it failed. ``progress(n)`` is called with the
    size of every block received; without it a bar (bytes, rate, time left) shows on ``stream``
    (standard error) when that is a terminal.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / filename
    failures = []
    for base in mirrors:
        url = base + filename
        fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", dir=dest_dir)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp, \
                    _bar(filename, resp, progress, stream) as step:
                h = hashlib.sha256()
                while block := resp.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    step(len(block))
            if h.hexdigest() != sha256:
                failures.append(f"{url}: SHA-256 {h.hexdigest()} does not match {sha256}")
                continue
            os.replace(tmp, target)
            return target
        except (urllib.error.URLError, OSError, ValueError) as e:
            failures.append(f"{url}: {getattr(e, 'reason', e)}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise OptimlabError(f"could not download {filename}:\n  " + "\n  ".join(failures))


@contextlib.contextmanager
def _bar(filename: str, resp, progress, stream):
    """What to call with each block's size: ``progress``, else a bar of the download's bytes (its
    size from Content-Length) where ``stream`` is a terminal."""
    if progress is not None:
        yield progress
        return
    import sys

    from tqdm.auto import tqdm

    length = resp.headers.get("Content-Length")
    stream = stream if stream is not None else sys.stderr
    with tqdm(total=int(length) if length and length.isdigit() else None, unit="B", unit_scale=True,
              unit_divisor=1024, desc=f"downloading {filename}", file=stream, leave=False,
              disable=not getattr(stream, "isatty", lambda: False)()) as bar:
        yield bar.update
