"""Reader and writer of the IDX format of MNIST and Fashion-MNIST (raw or gzip-compressed).

An IDX file is a big-endian header -- two zero bytes, a type code, the number of dimensions d, then d
32-bit sizes -- followed by the array in C order. MNIST images are type 0x08 (unsigned byte), d = 3
(N x 28 x 28); labels are type 0x08, d = 1 (N).
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np

from optimlab.errors import DataFormatError

# type code -> numpy dtype (big-endian where it matters), as in LeCun's description of the format
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == _GZIP_MAGIC else open
        with opener(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such file") from None
    except (OSError, EOFError) as e:  # a gzip stream cut short or corrupt
        raise DataFormatError(f"{path}: cannot be read as gzip or raw IDX ({e})") from None


def read_idx(path: str | Path, expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or .gz) into a numpy array of its stored type and shape.

    ``expect_ndim`` checks the number of dimensions (3 for images, 1 for labels). Every defect --
    wrong magic number, unknown type code, wrong dimensions, truncated or oversized data -- raises
    :class:`DataFormatError` naming the file and what is wrong.
    """
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise DataFormatError(f"{path}: truncated: {len(buf)} bytes, not even an IDX header")
    zero, type_code, ndim = struct.unpack(">HBB", buf[:4])
    if zero != 0 or type_code not in _IDX_TYPES:
        raise DataFormatError(
            f"{path}: wrong magic number 0x{int.from_bytes(buf[:4], 'big'):08x}; an IDX file starts "
            f"with 0x0000 then a type code in {{{', '.join(hex(t) for t in _IDX_TYPES)}}}"
        )
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataFormatError(
            f"{path}: wrong dimensions: the header says {ndim}-dimensional, expected {expect_ndim} "
            f"({'images N x rows x cols' if expect_ndim == 3 else 'labels N'})"
        )
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataFormatError(f"{path}: truncated inside the header ({len(buf)} bytes)")
    shape = struct.unpack(f">{ndim}I", buf[4:header])
    dtype = _IDX_TYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow on absurd headers
    got = len(buf) - header
    if got < expected:
        raise DataFormatError(
            f"{path}: truncated: shape {tuple(shape)} needs {expected} bytes of data, found {got}"
        )
    if got > expected:
        raise DataFormatError(
            f"{path}: {got - expected} unexpected bytes after the data of shape {tuple(shape)}"
        )
    arr = np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file; gzip-compressed when ``compress`` (default: path ends in .gz)."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in _IDX_TYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; valid: {sorted(map(str, codes))}")
    big = array.astype(native.newbyteorder(">"), copy=False)
    data = struct.pack(">HBB", 0, codes[native], array.ndim)
    data += struct.pack(f">{array.ndim}I", *array.shape) + big.tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        data = gzip.compress(data, compresslevel=9, mtime=0)
    path.write_bytes(data)
    return path


def read_idx_pair(images: str | Path, labels: str | Path, num_classes: int = 10):
    """Read an images file (N x H x W, uint8) and its labels file (N, uint8), checked against each other.

    Returns ``(images, labels)`` as numpy arrays. Raises :class:`DataFormatError` when the counts
    differ or a label is outside ``0 .. num_classes - 1``.
    """
    x = read_idx(images, expect_ndim=3)
    y = read_idx(labels, expect_ndim=1)
    if x.shape[0] != y.shape[0]:
        raise DataFormatError(
            f"{images} holds {x.shape[0]} images but {labels} holds {y.shape[0]} labels; "
            "they must be the same count"
        )
    check_labels(y, num_classes, labels)
    return x, y


def check_labels(y: np.ndarray, num_classes: int, source: str | Path) -> None:
    """Raise :class:`DataFormatError` when a label is outside ``0 .. num_classes - 1``."""
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        raise DataFormatError(
            f"{source}: label {int(y[bad[0]])} at index {int(bad[0])} is out of range; "
            f"valid labels are 0..{num_classes - 1} ({bad.size} bad in all)"
        )
