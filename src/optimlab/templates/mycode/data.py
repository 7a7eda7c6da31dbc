"""The example's data: a few thousand of optimlab's bundled MNIST digits (``mnist-10k``), saved as a
``.npz`` of numpy arrays -- standing in for a data set of your own on disk.

    write_npz("digits.npz")                               # once (load does it when the file is missing)
    x_train, y_train, x_test, y_test = load("digits.npz")
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

DEFAULT_TRAIN, DEFAULT_TEST = 4000, 1000


def write_npz(path: str | os.PathLike, n_train: int = DEFAULT_TRAIN, n_test: int = DEFAULT_TEST) -> Path:
    """Write the first ``n_train`` training and ``n_test`` test digits of ``mnist-10k`` (normalized to
    mean 0 and std 1 as optimlab serves them) to ``path``: ``x_train``/``x_test`` float32 (N, 1, 28, 28),
    ``y_train``/``y_test`` int64 (N,). The file appears at once (written aside, then renamed), so
    several processes may call this together."""
    from optimlab.data import load_dataset

    d = load_dataset("mnist-10k")
    if not (0 < n_train <= len(d.x_train) and 0 < n_test <= len(d.x_test)):
        raise ValueError(f"n_train must be in 1..{len(d.x_train)} and n_test in 1..{len(d.x_test)}")
    arrays = {"x_train": d.x_train[:n_train], "y_train": d.y_train[:n_train],
              "x_test": d.x_test[:n_test], "y_test": d.y_test[:n_test]}
    arrays = {k: v.numpy().astype(np.float32 if k[0] == "x" else np.int64) for k, v in arrays.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load(path: str, n_train: int | None = None, n_test: int | None = None,
         create: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)`` read from the ``.npz`` at ``path`` -- absolute, or
    relative to the working directory of the process that loads it (a study's workers and a local
    Ray's tasks share the driver's; on a cluster give an absolute path that every node has).
    ``n_train`` / ``n_test``: only the first so many samples. ``create``: write the file with
    :func:`write_npz` (its default sizes) when it is missing."""
    file = Path(path).expanduser()
    if not file.is_file():
        if not create:
            raise FileNotFoundError(f"{file.resolve()} does not exist (write it with mycode.data.write_npz)")
        write_npz(file)
    with np.load(file) as z:
        x_train, y_train, x_test, y_test = (torch.from_numpy(z[k]) for k in
                                            ("x_train", "y_train", "x_test", "y_test"))
    return x_train[:n_train], y_train[:n_train], x_test[:n_test], y_test[:n_test]
