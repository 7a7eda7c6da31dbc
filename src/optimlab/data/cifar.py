"""Reader and writer of CIFAR-10's binary format (``cifar-10-binary.tar.gz``), no pickle involved.

Each file (``data_batch_1.bin`` .. ``data_batch_5.bin``, ``test_batch.bin``) is a sequence of records of
1 label byte (0..9) followed by 3072 pixel bytes: the 1024 red, then green, then blue values of a
32 x 32 image in row-major order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from optimlab.data.idx import check_labels
from optimlab.errors import DataFormatError

RECORD_BYTES = 1 + 3 * 32 * 32
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)


def read_cifar10_binary(path: str | Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary file into ``(images uint8 N x 3 x 32 x 32, labels uint8 N)``.

    Raises :class:`DataFormatError` naming the file when it is empty, its size is not a whole number
    of 3073-byte records (truncated), or a label is outside 0..9.
    """
    path = Path(path)
    try:
        buf = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such file") from None
    except OSError as e:
        raise DataFormatError(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(buf) == 0:
        raise DataFormatError(f"{path}: empty file; expected records of {RECORD_BYTES} bytes")
    if len(buf) % RECORD_BYTES:
        raise DataFormatError(
            f"{path}: truncated: {len(buf)} bytes is not a whole number of {RECORD_BYTES}-byte records "
            f"({len(buf) // RECORD_BYTES} full records and {len(buf) % RECORD_BYTES} bytes left over)"
        )
    records = np.frombuffer(buf, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].copy()
    check_labels(labels, num_classes, path)
    images = records[:, 1:].reshape(-1, 3, 32, 32).copy()
    return images, labels


def read_cifar10_files(paths, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read and concatenate several CIFAR-10 binary files, in the order given."""
    parts = [read_cifar10_binary(p, num_classes) for p in paths]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def write_cifar10_binary(path: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write ``images`` (N x 3 x 32 x 32 uint8) and ``labels`` (N) as one CIFAR-10 binary file."""
    images = np.asarray(images, dtype=np.uint8).reshape(len(labels), -1)
    if images.shape[1] != RECORD_BYTES - 1:
        raise ValueError(f"CIFAR-10 images are 3 x 32 x 32; got {images.shape[1]} values per image")
    records = np.concatenate([np.asarray(labels, dtype=np.uint8)[:, None], images], axis=1)
    Path(path).write_bytes(records.tobytes())
    return Path(path)
