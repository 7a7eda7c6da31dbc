"""The catalogue of named data sets: what each is, where it is looked for, how it is loaded.

A data set is named ``NAME``, ``NAME:C1,C2,...`` (only those classes, relabelled 0..k-1 in the order
given; ``mnist-10k:0,1`` is the binary problem of digits 0 and 1) or, for the synthetic least-squares
problem, ``lls`` / ``lls:n=2000,p=100,cond=1e3,noise=0.1,seed=1``.

Files are looked for, in order, in: the explicit data folder (``data_dir`` / ``--data-dir`` /
``OPTIMLAB_DATA``), the user cache (``$XDG_CACHE_HOME/optimlab``, else ``~/.cache/optimlab``), the
system's data set folder where Debian installs them (``/usr/share/datasets``), each under a
sub-folder named after the data set; then they are downloaded from the official mirrors (SHA-256
checked) into the explicit folder or the cache, unless ``OPTIMLAB_OFFLINE=1``.
"""

from __future__ import annotations

import functools
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from optimlab.data.cifar import TEST_FILES, TRAIN_FILES, read_cifar10_files
from optimlab.data.download import fetch, offline
from optimlab.data.idx import read_idx_pair
from optimlab.data.quadratic import make_quadratic_deep
from optimlab.data.synthetic import LLS_DEFAULTS, make_lls
from optimlab.data.tensors import Dataset
from optimlab.errors import DatasetNotFoundError, OptimlabError

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR_TARBALL = "cifar-10-binary.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-bin"


@dataclass(frozen=True)
class DatasetInfo:
    """A named data set of images in the catalogue (``lls`` is synthetic and not one of these)."""

    name: str
    summary: str
    format: str  # "idx" or "cifar10-binary"
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, of the training images scaled to [0, 1]
    std: tuple[float, ...]
    mirrors: tuple[str, ...] = ()
    sha256: dict[str, str] = field(default_factory=dict)  # downloaded file -> digest
    how_to_get: str = ""
    bundled: bool = False


DIGITS = tuple(str(d) for d in range(10))
CATALOGUE: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "mnist-10k",
            "10,000 real MNIST digits bundled with optimlab (8,000 train / 2,000 test, stratified)",
            "idx",
            DIGITS,
            (0.1309,),
            (0.3084,),
            how_to_get="bundled inside the package; nothing to do",
            bundled=True,
        ),
        DatasetInfo(
            "mnist",
            "MNIST handwritten digits, 60,000 train / 10,000 test, 28x28 grey",
            "idx",
            DIGITS,
            (0.1307,),
            (0.3081,),
            mirrors=(
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "http://yann.lecun.com/exdb/mnist/",
            ),
            sha256={
                "train-images-idx3-ubyte.gz":
                    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "train-labels-idx1-ubyte.gz":
                    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "t10k-images-idx3-ubyte.gz":
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "t10k-labels-idx1-ubyte.gz":
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            },
            how_to_get="downloaded automatically when a network is there; or put the four "
            "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] files in DATA_DIR/mnist/",
        ),
        DatasetInfo(
            "fashion-mnist",
            "Fashion-MNIST clothing images, 60,000 train / 10,000 test, 28x28 grey",
            "idx",
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
            (0.2860,),
            (0.3530,),
            mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            sha256={
                "train-images-idx3-ubyte.gz":
                    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "train-labels-idx1-ubyte.gz":
                    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "t10k-images-idx3-ubyte.gz":
                    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "t10k-labels-idx1-ubyte.gz":
                    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            },
            how_to_get="on Debian/Ubuntu: apt-get install dataset-fashion-mnist; otherwise "
            "downloaded automatically when a network is there",
        ),
        DatasetInfo(
            "cifar10",
            "CIFAR-10 colour images, 50,000 train / 10,000 test, 3x32x32 (binary version)",
            "cifar10-binary",
            ("airplane", "automobile", "bird", "cat", "deer",
             "dog", "frog", "horse", "ship", "truck"),
            (0.4914, 0.4822, 0.4465),
            (0.2470, 0.2435, 0.2616),
            mirrors=("https://www.cs.toronto.edu/~kriz/",),
            sha256={
                CIFAR_TARBALL: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
            },
            how_to_get=f"downloaded automatically (170 MB) when a network is there; or put "
            f"{CIFAR_TARBALL} (or its {CIFAR_FOLDER}/ folder) in DATA_DIR/cifar10/",
        ),
    )
}
SYNTHETIC = {"lls": "synthetic linear least squares with a known solution; options "
             + ",".join(f"{k}={v}" for k, v in LLS_DEFAULTS.items()),
             "quadratic-deep": "DeepOBS's noisy quadratic (100 dimensions, Hessian eigenvalues in (0, 1) "
             "and (30, 60), numpy seed 42); train with the model quadratic-deep"}


def dataset_names() -> list[str]:
    """Every name the catalogue knows (class restrictions like ``mnist-10k:0,1`` come on top)."""
    return list(CATALOGUE) + list(SYNTHETIC)


def system_data_dir() -> Path:
    return Path(os.environ.get("OPTIMLAB_SYSTEM_DATA", "/usr/share/datasets"))


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "optimlab"


def search_places(name: str, data_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """The folders looked in for data set ``name``, in order, each with a label saying why."""
    places = []
    explicit = data_dir or os.environ.get("OPTIMLAB_DATA")
    if explicit:
        label = "--data-dir" if data_dir else "OPTIMLAB_DATA"
        folder = Path(explicit).expanduser()
        blocked = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        if blocked is not None:  # it can neither hold data sets nor be made into a folder
            raise OptimlabError(f"{label} {explicit}: {blocked} is a file, not a folder")
        places.append((label, folder / name))
    places.append(("user cache", user_cache_dir() / name))
    places.append(("system datasets", system_data_dir() / name))
    return places


def _idx_paths(folder: Path) -> dict[str, Path] | None:
    found = {}
    for role, stem in IDX_FILES.items():
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            return None
    return found


def _cifar_folder(folder: Path) -> Path | None:
    for candidate in (folder / CIFAR_FOLDER, folder):
        if all((candidate / f).is_file() for f in TRAIN_FILES + TEST_FILES):
            return candidate
    return None


def _present(info: DatasetInfo, folder: Path) -> bool:
    if info.format == "idx":
        return _idx_paths(folder) is not None
    return _cifar_folder(folder) is not None or (folder / CIFAR_TARBALL).is_file()


def locate(name: str, data_dir: str | Path | None = None) -> Path | None:
    """The first folder holding data set ``name`` (no download), or None."""
    info = _info(name)
    if info.bundled:
        return BUNDLED_DIR / info.name
    for _, folder in search_places(name, data_dir):
        if _present(info, folder):
            return folder
    return None


def _download(info: DatasetInfo, data_dir: str | Path | None) -> Path:
    folder = search_places(info.name, data_dir)[0][1]
    for filename, digest in info.sha256.items():
        if not (folder / filename).is_file():
            fetch(filename, list(info.mirrors), digest, folder)
    return folder


def _not_found(info: DatasetInfo, data_dir, why: str) -> DatasetNotFoundError:
    looked = "\n".join(f"  {label}: {path}" for label, path in search_places(info.name, data_dir))
    return DatasetNotFoundError(
        f"data set {info.name!r} was not found. Looked in:\n{looked}\n{why}\n"
        f"How to get it: {info.how_to_get}"
    )


def _extract_cifar(folder: Path) -> Path:
    """Extract the binary files of the CIFAR-10 tarball in ``folder`` (or in the cache if read-only)."""
    dest = folder if os.access(folder, os.W_OK) else user_cache_dir() / "cifar10"
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / CIFAR_TARBALL) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".bin") or m.name.endswith(".txt")]
        tmp = dest / ".extracting"
        shutil.rmtree(tmp, ignore_errors=True)
        tar.extractall(tmp, members=members, filter="data")
    shutil.rmtree(dest / CIFAR_FOLDER, ignore_errors=True)
    os.replace(tmp / CIFAR_FOLDER, dest / CIFAR_FOLDER)
    shutil.rmtree(tmp, ignore_errors=True)
    return dest / CIFAR_FOLDER


@functools.lru_cache(maxsize=4)
def _read_raw(info_name: str, folder: Path):
    """uint8 arrays (x_train, y_train, x_test, y_test), images with a channel axis."""
    info = CATALOGUE[info_name]
    if info.format == "idx":
        p = _idx_paths(folder)
        assert p is not None
        xtr, ytr = read_idx_pair(p["train_images"], p["train_labels"], len(info.classes))
        xte, yte = read_idx_pair(p["test_images"], p["test_labels"], len(info.classes))
        return xtr[:, None], ytr, xte[:, None], yte
    bins = _cifar_folder(folder) or _extract_cifar(folder)
    xtr, ytr = read_cifar10_files([bins / f for f in TRAIN_FILES])
    xte, yte = read_cifar10_files([bins / f for f in TEST_FILES])
    return xtr, ytr, xte, yte


def _info(name: str) -> DatasetInfo:
    if name not in CATALOGUE:
        raise OptimlabError(
            f"unknown data set {name!r}; valid: {', '.join(dataset_names())} "
            "(add ':C1,C2' to keep only some classes, e.g. mnist-10k:0,1)"
        )
    return CATALOGUE[name]


def parse_dataset_name(text: str) -> tuple[str, str]:
    """Split ``NAME[:OPTIONS]`` into its name and its options text (empty when none)."""
    name, colon, options = text.strip().partition(":")
    if name not in CATALOGUE and name not in SYNTHETIC:
        _info(name)
    if colon and not options.strip():
        raise OptimlabError(f"{text!r}: nothing after ':'; write the options (e.g. {name}:0,1) or the name "
                            "alone")
    return name, options.strip()


def _parse_classes(info: DatasetInfo, options: str) -> list[int]:
    try:
        chosen = [int(c) for c in options.split(",")]
    except ValueError:
        raise OptimlabError(
            f"{info.name}:{options}: classes must be comma-separated integers, e.g. "
            f"{info.name}:0,1"
        ) from None
    bad = [c for c in chosen if not 0 <= c < len(info.classes)]
    if bad or len(set(chosen)) != len(chosen) or len(chosen) < 2:
        raise OptimlabError(
            f"{info.name}:{options}: give at least two distinct classes among "
            f"0..{len(info.classes) - 1}"
        )
    return chosen


def _parse_lls(options: str) -> dict:
    kwargs = dict(LLS_DEFAULTS)
    for item in filter(None, (s.strip() for s in options.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in LLS_DEFAULTS:
            raise OptimlabError(
                f"lls option {item!r} is not KEY=VALUE with KEY in {', '.join(LLS_DEFAULTS)}"
            )
        try:
            number = float(value)
            if isinstance(LLS_DEFAULTS[key], int):
                if not number.is_integer():
                    raise ValueError
                number = int(number)
        except (ValueError, OverflowError):
            kind = "an integer" if isinstance(LLS_DEFAULTS[key], int) else "a number"
            raise OptimlabError(f"lls option {key}={value!r} is not {kind}") from None
        kwargs[key] = number
    return kwargs


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    normalize: bool = True,
    download: bool = True,
) -> Dataset:
    """Load a named data set as tensors on ``device``.

    Images are scaled to [0, 1] and, when ``normalize``, standardized with the data set's per-channel
    mean and std (those of its training images). Raises :class:`DatasetNotFoundError` listing where
    it looked and how to get the data when it is nowhere and cannot be downloaded.
    """
    base, options = parse_dataset_name(name)
    if base == "lls":
        return make_lls(**_parse_lls(options)).to(device)
    if base == "quadratic-deep":
        if options:
            raise OptimlabError(f"quadratic-deep takes no options; got {options!r}")
        return make_quadratic_deep().to(device)
    info = _info(base)
    chosen = _parse_classes(info, options) if options else None
    folder = locate(base, data_dir)
    if folder is None:
        if not download or offline():
            why = "Downloads are off (OPTIMLAB_OFFLINE=1)." if download else "Download not asked."
            raise _not_found(info, data_dir, why)
        try:
            folder = _download(info, data_dir)
        except OptimlabError as e:
            raise _not_found(info, data_dir, f"The download failed: {e}") from None
    xtr, ytr, xte, yte = _read_raw(info.name, folder)
    classes = info.classes
    if chosen is not None:
        (xtr, ytr), (xte, yte) = _keep_classes(xtr, ytr, chosen), _keep_classes(xte, yte, chosen)
        classes = tuple(info.classes[c] for c in chosen)
    mean = torch.tensor(info.mean if normalize else (0.0,) * len(info.mean)).view(1, -1, 1, 1)
    std = torch.tensor(info.std if normalize else (1.0,) * len(info.std)).view(1, -1, 1, 1)

    def images(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x).to(device=device, dtype=torch.float32).div_(255.0)
        return t.sub_(mean.to(device)).div_(std.to(device))

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(y.astype(np.int64)).to(device)

    return Dataset(
        name=name,
        x_train=images(xtr),
        y_train=labels(ytr),
        x_test=images(xte),
        y_test=labels(yte),
        task="classification",
        classes=classes,
        source=str(folder),
    )


def _keep_classes(x: np.ndarray, y: np.ndarray, chosen: list[int]):
    relabel = np.full(256, -1, dtype=np.int64)
    relabel[chosen] = np.arange(len(chosen))
    keep = relabel[y] >= 0
    return x[keep], relabel[y[keep]]


def dataset_status(data_dir: str | Path | None = None) -> list[dict]:
    """One row per catalogue entry: name, found (bool), where (folder or None), summary, how_to_get."""
    rows = []
    for info in CATALOGUE.values():
        where = locate(info.name, data_dir)
        rows.append({"name": info.name, "found": where is not None,
                     "where": str(where) if where else None, "summary": info.summary,
                     "how_to_get": info.how_to_get})
    for name, summary in SYNTHETIC.items():
        rows.append({"name": name, "found": True, "where": "generated on demand",
                     "summary": summary, "how_to_get": "nothing to do"})
    return rows
