"""Tests of optimlab.data: the IDX and CIFAR-10 readers on real file bytes, the catalogue's search
order, downloads from a local HTTP mirror, the bundled mnist-10k, the lls problem, batch orders."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import struct
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from optimlab.data import (
    CATALOGUE,
    catalogue,
    dataset_names,
    dataset_status,
    epoch_batches,
    load_dataset,
    locate,
    make_lls,
    read_cifar10_binary,
    read_idx,
    read_idx_pair,
    search_places,
    steps_per_epoch,
    write_cifar10_binary,
    write_idx,
)
from optimlab.data.catalogue import BUNDLED_DIR, IDX_FILES
from optimlab.data.cifar import RECORD_BYTES, TEST_FILES, TRAIN_FILES
from optimlab.errors import DataFormatError, DatasetNotFoundError, OptimlabError

FMNIST = CATALOGUE["fashion-mnist"]
# a 2 x 3 x 3 uint8 IDX file by hand: zero, type 0x08, 3 dims, the sizes, then the bytes in C order
HAND_IDX = struct.pack(">HBB3I", 0, 0x08, 3, 2, 3, 3) + bytes(range(18))
HAND_LABELS = struct.pack(">HBBI", 0, 0x08, 1, 4) + bytes([0, 1, 2, 3])


# ------------------------------------------------------------------------------------------ helpers


def write_idx_set(folder: Path, seed: int, gz: bool = True, n_train: int = 50, n_test: int = 20):
    """A small IDX set (28 x 28 random bytes, labels covering 0..9) written in ``folder``."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.permutation(np.arange(n_test) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for role, array in arrays.items():
        write_idx(folder / (IDX_FILES[role] + (".gz" if gz else "")), array)
    return arrays


def as_bytes(x: torch.Tensor) -> np.ndarray:
    """Images loaded with normalize=False (byte / 255, N x 1 x H x W) back to uint8 N x H x W."""
    return x.mul(255).round().to(torch.uint8)[:, 0].numpy()


def assert_holds(ds, arrays):
    assert np.array_equal(as_bytes(ds.x_train), arrays["train_images"])
    assert np.array_equal(as_bytes(ds.x_test), arrays["test_images"])
    assert np.array_equal(ds.y_train.numpy(), arrays["train_labels"])
    assert np.array_equal(ds.y_test.numpy(), arrays["test_labels"])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def read_error(path: Path, data: bytes, **kw) -> str:
    path.write_bytes(data)
    with pytest.raises(DataFormatError) as e:
        read_idx(path, **kw)
    assert str(path) in str(e.value)
    return str(e.value)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _fresh_read_cache():
    catalogue._read_raw.cache_clear()
    yield
    catalogue._read_raw.cache_clear()


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Every place data is looked for, as empty folders under tmp_path, and no proxy in the way."""
    roots = {k: tmp_path / k for k in ("explicit", "env", "xdg", "system")}
    monkeypatch.delenv("OPTIMLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(roots["xdg"]))
    monkeypatch.setenv("OPTIMLAB_SYSTEM_DATA", str(roots["system"]))
    for var in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setenv("no_proxy", "*")
    roots["cache"] = roots["xdg"] / "optimlab"
    return roots


@pytest.fixture
def mirror(tmp_path):
    """A real HTTP server on 127.0.0.1 serving the folder it yields, with its base URL."""
    root = tmp_path / "mirror"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join()


# ---------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.random.default_rng(0).integers(0, 256, (7, 5, 4), dtype=np.uint8),
        np.arange(11, dtype=np.uint8),
        np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32),
        np.array([-32768, -1, 0, 1, 32767], dtype=np.int16),
    ],
    ids=["u8-3d", "u8-1d", "f32-2d", "i16-1d"],
)
def test_idx_round_trip(tmp_path, array, suffix):
    path = write_idx(tmp_path / f"a.idx{suffix}", array)
    raw = path.read_bytes()
    if suffix:
        assert raw[:2] == b"\x1f\x8b"
        raw = gzip.decompress(raw)
    assert raw[:4] == bytes([0, 0, {"uint8": 8, "int16": 0x0B, "float32": 0x0D}[array.dtype.name],
                             array.ndim])
    assert len(raw) == 4 + 4 * array.ndim + array.nbytes
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array)


def test_idx_hand_built_headers(tmp_path):
    (tmp_path / "x").write_bytes(HAND_IDX)
    x = read_idx(tmp_path / "x", expect_ndim=3)
    assert x.dtype == np.uint8 and x.shape == (2, 3, 3)
    assert np.array_equal(x, np.arange(18).reshape(2, 3, 3))
    assert x[1, 2, 0] == 15
    # big-endian float32, as the format stores it
    floats = struct.pack(">HBBI", 0, 0x0D, 1, 3) + struct.pack(">3f", 1.5, -2, 0.25)
    (tmp_path / "f").write_bytes(floats)
    assert read_idx(tmp_path / "f").tolist() == [1.5, -2.0, 0.25]
    # and our writer produces exactly those bytes
    written = write_idx(tmp_path / "w", np.arange(18, dtype=np.uint8).reshape(2, 3, 3))
    assert written.read_bytes() == HAND_IDX


def test_idx_wrong_magic(tmp_path):
    msg = read_error(tmp_path / "bad-magic", b"\x00\x01\x08\x03" + HAND_IDX[4:])
    assert "wrong magic number 0x00010803" in msg and "0x8" in msg
    msg = read_error(tmp_path / "bad-type", b"\x00\x00\x07\x03" + HAND_IDX[4:])
    assert "wrong magic number 0x00000703" in msg


def test_idx_labels_given_where_images_expected(tmp_path):
    msg = read_error(tmp_path / "train-labels-idx1-ubyte", HAND_LABELS, expect_ndim=3)
    assert "wrong dimensions" in msg and "1-dimensional, expected 3" in msg
    assert "images N x rows x cols" in msg
    msg = read_error(tmp_path / "images", HAND_IDX, expect_ndim=1)
    assert "3-dimensional, expected 1 (labels N)" in msg


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_idx_truncated_data(tmp_path, compress):
    data = HAND_IDX[:-5]
    msg = read_error(tmp_path / "cut.idx", gzip.compress(data) if compress else data, expect_ndim=3)
    assert "truncated" in msg and "shape (2, 3, 3) needs 18 bytes of data, found 13" in msg


def test_idx_truncated_gzip_stream(tmp_path):
    msg = read_error(tmp_path / "cut.gz", gzip.compress(HAND_IDX)[:-10])
    assert "cannot be read as gzip or raw IDX" in msg
    assert "ended before the end-of-stream marker" in msg


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_idx_extra_trailing_bytes(tmp_path, compress):
    data = HAND_IDX + b"\x00\x00\x00"
    msg = read_error(tmp_path / "long.idx", gzip.compress(data) if compress else data)
    assert "3 unexpected bytes after the data of shape (2, 3, 3)" in msg


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"", "truncated: 0 bytes, not even an IDX header"),
        (b"\x00\x00\x08", "truncated: 3 bytes, not even an IDX header"),
        (HAND_IDX[:10], "truncated inside the header (10 bytes)"),
    ],
    ids=["empty", "3-bytes", "half-header"],
)
def test_idx_shorter_than_header(tmp_path, data, fragment):
    assert fragment in read_error(tmp_path / "short.idx", data)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataFormatError, match="no such file") as e:
        read_idx(tmp_path / "nowhere.idx")
    assert str(tmp_path / "nowhere.idx") in str(e.value)


def test_idx_absurd_shape_is_a_format_error(tmp_path):
    # the size must not wrap around in fixed-width integers (2**64 bytes claimed, 0 present)
    message = read_error(tmp_path / "huge.idx", struct.pack(">HBB3I", 0, 0x08, 3, 2**31, 2**31, 4))
    assert "truncated" in message


def test_idx_pair_reads_matching_files(tmp_path):
    (tmp_path / "x").write_bytes(HAND_IDX)
    write_idx(tmp_path / "y.gz", np.array([9, 0], dtype=np.uint8))
    x, y = read_idx_pair(tmp_path / "x", tmp_path / "y.gz")
    assert x.shape == (2, 3, 3) and y.tolist() == [9, 0]


def test_idx_pair_count_mismatch(tmp_path):
    (tmp_path / "x").write_bytes(HAND_IDX)
    (tmp_path / "y").write_bytes(HAND_LABELS)
    with pytest.raises(DataFormatError) as e:
        read_idx_pair(tmp_path / "x", tmp_path / "y")
    msg = str(e.value)
    assert f"{tmp_path / 'x'} holds 2 images but {tmp_path / 'y'} holds 4 labels" in msg


def test_idx_pair_label_out_of_range(tmp_path):
    (tmp_path / "x").write_bytes(HAND_IDX)
    (tmp_path / "y").write_bytes(struct.pack(">HBBI", 0, 0x08, 1, 2) + bytes([3, 10]))
    with pytest.raises(DataFormatError) as e:
        read_idx_pair(tmp_path / "x", tmp_path / "y", num_classes=10)
    assert str(e.value) == (
        f"{tmp_path / 'y'}: label 10 at index 1 is out of range; "
        "valid labels are 0..9 (1 bad in all)"
    )


# ----------------------------------------------------------------------------------------- CIFAR-10


def test_cifar_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 7], dtype=np.uint8)
    path = write_cifar10_binary(tmp_path / "data_batch_1.bin", images, labels)
    assert path.stat().st_size == 5 * RECORD_BYTES
    x, y = read_cifar10_binary(path)
    assert x.dtype == np.uint8 and x.shape == (5, 3, 32, 32)
    assert np.array_equal(x, images) and np.array_equal(y, labels)


def test_cifar_channel_layout_of_a_hand_built_record(tmp_path):
    k = np.arange(1024)
    red, green, blue = k % 256, (7 * k + 1) % 256, 255 - k % 256
    record = bytes([7]) + bytes(red.tolist()) + bytes(green.tolist()) + bytes(blue.tolist())
    flat = bytes([3]) + bytes([10]) * 1024 + bytes([20]) * 1024 + bytes([30]) * 1024
    (tmp_path / "b.bin").write_bytes(record + flat)
    x, y = read_cifar10_binary(tmp_path / "b.bin")
    assert y.tolist() == [7, 3] and x.shape == (2, 3, 32, 32)
    for c, plane in enumerate((red, green, blue)):
        for i, j in ((0, 0), (0, 31), (2, 5), (17, 9), (31, 31)):
            assert x[0, c, i, j] == plane[32 * i + j]
        assert (x[1, c] == 10 * (c + 1)).all()
    assert np.array_equal(x[0], np.stack([red, green, blue]).reshape(3, 32, 32))


def test_cifar_truncated_file(tmp_path):
    path = write_cifar10_binary(tmp_path / "t.bin", np.zeros((2, 3, 32, 32)), [1, 2])
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataFormatError) as e:
        read_cifar10_binary(path)
    assert str(e.value) == (
        f"{path}: truncated: 6145 bytes is not a whole number of 3073-byte records "
        "(1 full records and 3072 bytes left over)"
    )


def test_cifar_empty_and_missing_file(tmp_path):
    (tmp_path / "e.bin").write_bytes(b"")
    with pytest.raises(DataFormatError, match="empty file; expected records of 3073 bytes") as e:
        read_cifar10_binary(tmp_path / "e.bin")
    assert str(tmp_path / "e.bin") in str(e.value)
    with pytest.raises(DataFormatError, match="no such file"):
        read_cifar10_binary(tmp_path / "missing.bin")


def test_cifar_label_out_of_range(tmp_path):
    path = write_cifar10_binary(tmp_path / "l.bin", np.zeros((3, 3, 32, 32)), [9, 10, 255])
    with pytest.raises(DataFormatError) as e:
        read_cifar10_binary(path)
    assert str(e.value) == (
        f"{path}: label 10 at index 1 is out of range; valid labels are 0..9 (2 bad in all)"
    )


def test_cifar10_from_a_tarball_in_the_data_dir(places):
    rng = np.random.default_rng(3)
    buf, parts = io.BytesIO(), {}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i, name in enumerate(TRAIN_FILES + TEST_FILES):
            x = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
            path = write_cifar10_binary(places["explicit"].parent / name, x, [i, 9 - i])
            parts[name] = x
            tar.add(path, arcname=f"cifar-10-batches-bin/{name}")
    folder = places["explicit"] / "cifar10"
    folder.mkdir(parents=True)
    (folder / "cifar-10-binary.tar.gz").write_bytes(buf.getvalue())
    ds = load_dataset("cifar10", data_dir=places["explicit"])
    assert ds.source == str(folder) and ds.x_train.shape == (10, 3, 32, 32)
    assert ds.y_train.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5] and ds.y_test.tolist() == [5, 4]
    info = CATALOGUE["cifar10"]
    mean, std = np.array(info.mean)[:, None, None], np.array(info.std)[:, None, None]
    expected = (np.concatenate([parts[n] for n in TRAIN_FILES]) / 255 - mean) / std
    np.testing.assert_allclose(ds.x_train.numpy(), expected, rtol=0, atol=1e-5)
    assert files_under(folder / "cifar-10-batches-bin") == sorted(TRAIN_FILES + TEST_FILES)
    assert not (folder / ".extracting").exists()


# ---------------------------------------------------------------------------------------- catalogue


def test_search_places_and_their_labels(places, monkeypatch, tmp_path):
    assert search_places("mnist") == [
        ("user cache", places["cache"] / "mnist"),
        ("system datasets", places["system"] / "mnist"),
    ]
    monkeypatch.setenv("OPTIMLAB_DATA", str(places["env"]))
    assert search_places("mnist")[0] == ("OPTIMLAB_DATA", places["env"] / "mnist")
    explicit = places["explicit"]
    assert search_places("mnist", explicit)[0] == ("--data-dir", explicit / "mnist")
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert search_places("mnist")[1] == ("user cache", tmp_path / "home/.cache/optimlab/mnist")


def test_search_order_explicit_then_cache_then_system(places, monkeypatch):
    def check(where, **kw):
        ds = load_dataset("fashion-mnist", normalize=False, **kw)
        assert ds.source == str(folders[where])
        assert_holds(ds, sets[where])

    folders = {
        "system": places["system"] / "fashion-mnist",
        "cache": places["cache"] / "fashion-mnist",
        "env": places["env"] / "fashion-mnist",
        "explicit": places["explicit"] / "fashion-mnist",
    }
    sets = {}
    assert locate("fashion-mnist") is None
    sets["system"] = write_idx_set(folders["system"], seed=10, gz=False)
    check("system")
    sets["cache"] = write_idx_set(folders["cache"], seed=11, gz=True)
    check("cache")
    sets["env"] = write_idx_set(folders["env"], seed=12, gz=False)
    check("cache")  # OPTIMLAB_DATA not set yet
    monkeypatch.setenv("OPTIMLAB_DATA", str(places["env"]))
    check("env")
    sets["explicit"] = write_idx_set(folders["explicit"], seed=13, gz=True)
    check("explicit", data_dir=places["explicit"])  # the argument wins over OPTIMLAB_DATA
    assert locate("fashion-mnist", places["explicit"]) == folders["explicit"]


def test_gz_files_win_over_raw_ones_in_one_folder(places):
    folder = places["explicit"] / "fashion-mnist"
    write_idx_set(folder, seed=1, gz=False)
    gz = write_idx_set(folder, seed=2, gz=True)
    assert_holds(load_dataset("fashion-mnist", data_dir=places["explicit"], normalize=False), gz)


def test_normalization_uses_the_catalogue_constants(places):
    arrays = write_idx_set(places["explicit"] / "fashion-mnist", seed=4)
    ds = load_dataset("fashion-mnist", data_dir=places["explicit"])
    raw = load_dataset("fashion-mnist", data_dir=places["explicit"], normalize=False)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_train.shape == (50, 1, 28, 28) and ds.x_test.shape == (20, 1, 28, 28)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and ds.task == "classification"
    assert ds.classes == FMNIST.classes and ds.name == "fashion-mnist"
    for split in ("train", "test"):
        b = arrays[f"{split}_images"][:, None].astype(np.float64)
        got = getattr(ds, f"x_{split}").numpy()
        np.testing.assert_allclose(got, (b / 255 - 0.2860) / 0.3530, rtol=0, atol=1e-6)
        np.testing.assert_allclose(getattr(raw, f"x_{split}").numpy(), b / 255, rtol=0, atol=1e-7)
    assert FMNIST.mean == (0.2860,) and FMNIST.std == (0.3530,)


def test_class_restriction_keeps_and_relabels(places):
    arrays = write_idx_set(places["explicit"] / "fashion-mnist", seed=5)
    ds = load_dataset("fashion-mnist:3,1", data_dir=places["explicit"], normalize=False)
    assert ds.classes == ("Dress", "Trouser") and ds.num_classes == 2
    assert ds.name == "fashion-mnist:3,1"
    for split in ("train", "test"):
        y = arrays[f"{split}_labels"]
        keep = (y == 3) | (y == 1)
        assert np.array_equal(as_bytes(getattr(ds, f"x_{split}")), arrays[f"{split}_images"][keep])
        assert getattr(ds, f"y_{split}").tolist() == [0 if v == 3 else 1 for v in y[keep]]
    assert ds.num_train == 10 and ds.num_test == 4  # each class 5 / 2 times in the fake set


@pytest.mark.parametrize(
    "options, fragment",
    [
        ("1", "fashion-mnist:1: give at least two distinct classes among 0..9"),
        ("1,1", "fashion-mnist:1,1: give at least two distinct classes among 0..9"),
        ("0,10", "fashion-mnist:0,10: give at least two distinct classes among 0..9"),
        ("-1,2", "give at least two distinct classes among 0..9"),
        ("a,b", "fashion-mnist:a,b: classes must be comma-separated integers, e.g. "
         "fashion-mnist:0,1"),
    ],
)
def test_bad_class_restrictions(places, options, fragment):
    with pytest.raises(OptimlabError) as e:
        load_dataset(f"fashion-mnist:{options}")
    assert type(e.value) is OptimlabError and fragment in str(e.value)


@pytest.mark.parametrize("name", ["mnist-20k", "mnist-20k:0,1", "MNIST", ""])
def test_unknown_name_lists_the_valid_ones(name):
    with pytest.raises(OptimlabError) as e:
        load_dataset(name)
    msg = str(e.value)
    assert f"unknown data set {name.partition(':')[0]!r}" in msg
    assert "valid: mnist-10k, mnist, fashion-mnist, cifar10, lls, quadratic-deep" in msg
    assert dataset_names() == ["mnist-10k", "mnist", "fashion-mnist", "cifar10", "lls", "quadratic-deep"]


@pytest.mark.parametrize("download", [True, False])
def test_not_found_offline_lists_every_folder(places, download):
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("fashion-mnist", data_dir=places["explicit"], download=download)
    msg = str(e.value)
    assert f"  --data-dir: {places['explicit'] / 'fashion-mnist'}\n" in msg
    assert f"  user cache: {places['cache'] / 'fashion-mnist'}\n" in msg
    assert f"  system datasets: {places['system'] / 'fashion-mnist'}\n" in msg
    why = "Downloads are off (OPTIMLAB_OFFLINE=1)." if download else "Download not asked."
    assert why in msg and f"How to get it: {FMNIST.how_to_get}" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert not any(p.exists() for p in places.values())  # nothing created anywhere


def test_unreachable_mirror_is_reported_and_leaves_nothing(places, monkeypatch):
    monkeypatch.delenv("OPTIMLAB_OFFLINE")
    monkeypatch.setitem(
        CATALOGUE, "mnist", dataclasses.replace(CATALOGUE["mnist"], mirrors=("http://127.0.0.1:9/",))
    )
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("mnist")
    msg = str(e.value)
    assert f"  user cache: {places['cache'] / 'mnist'}" in msg
    assert "The download failed: could not download train-images-idx3-ubyte.gz" in msg
    assert "http://127.0.0.1:9/train-images-idx3-ubyte.gz: " in msg
    assert files_under(places["xdg"]) == []


def serve_idx_set(mirror, monkeypatch, seed=6, **digests):
    """Put a small IDX set on the local mirror and point the catalogue's 'mnist' at it."""
    root, url = mirror
    arrays = write_idx_set(root, seed=seed)
    sha = {f"{stem}.gz": sha256(root / f"{stem}.gz") for stem in IDX_FILES.values()}
    sha.update(digests)
    info = dataclasses.replace(CATALOGUE["mnist"], mirrors=("http://127.0.0.1:9/", url), sha256=sha)
    monkeypatch.setitem(CATALOGUE, "mnist", info)
    monkeypatch.delenv("OPTIMLAB_OFFLINE")
    return arrays, sha


def test_download_from_a_local_mirror(places, mirror, monkeypatch):
    arrays, sha = serve_idx_set(mirror, monkeypatch)
    ds = load_dataset("mnist", normalize=False)  # first mirror refused, second serves
    folder = places["cache"] / "mnist"
    assert ds.source == str(folder)
    assert_holds(ds, arrays)
    assert files_under(folder) == sorted(sha)
    assert all(sha256(folder / name) == digest for name, digest in sha.items())
    monkeypatch.setenv("OPTIMLAB_OFFLINE", "1")  # now found without a network
    catalogue._read_raw.cache_clear()
    assert load_dataset("mnist", normalize=False).source == str(folder)
    row = {r["name"]: r for r in dataset_status()}["mnist"]
    assert row["found"] and row["where"] == str(folder)


def test_download_into_the_data_dir(places, mirror, monkeypatch):
    arrays, _ = serve_idx_set(mirror, monkeypatch, seed=7)
    ds = load_dataset("mnist", data_dir=places["explicit"], normalize=False)
    assert ds.source == str(places["explicit"] / "mnist")
    assert_holds(ds, arrays)
    assert files_under(places["xdg"]) == []


@pytest.mark.parametrize("bad", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
def test_download_with_a_wrong_checksum_leaves_nothing_behind(places, mirror, monkeypatch, bad):
    _, sha = serve_idx_set(mirror, monkeypatch, **{bad: "0" * 64})
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("mnist")
    msg = str(e.value)
    assert f"The download failed: could not download {bad}" in msg
    assert f"{mirror[1]}{bad}: SHA-256 {sha256(mirror[0] / bad)} does not match {'0' * 64}" in msg
    # no partial or unverified file; the files verified before the bad one stay
    folder = places["cache"] / "mnist"
    assert files_under(folder) == sorted(list(sha)[: list(sha).index(bad)])
    assert locate("mnist") is None


def test_dataset_status(places):
    write_idx_set(places["explicit"] / "fashion-mnist", seed=8)
    rows = {r["name"]: r for r in dataset_status(places["explicit"])}
    assert list(rows) == dataset_names()
    assert rows["mnist-10k"]["found"]
    assert rows["mnist-10k"]["where"] == str(BUNDLED_DIR / "mnist-10k")
    assert rows["fashion-mnist"]["found"]
    assert rows["fashion-mnist"]["where"] == str(places["explicit"] / "fashion-mnist")
    for name in ("mnist", "cifar10"):
        assert not rows[name]["found"] and rows[name]["where"] is None
        assert rows[name]["how_to_get"] == CATALOGUE[name].how_to_get
    assert rows["lls"]["found"] and rows["lls"]["where"] == "generated on demand"
    assert not {r["name"]: r for r in dataset_status()}["fashion-mnist"]["found"]


# ---------------------------------------------------------------------------------------- mnist-10k


@pytest.fixture(scope="module")
def mnist10k_bytes():
    folder = BUNDLED_DIR / "mnist-10k"
    return tuple(
        read_idx_pair(folder / f"{p}-images-idx3-ubyte.gz", folder / f"{p}-labels-idx1-ubyte.gz")
        for p in ("train", "t10k")
    )


def test_mnist10k_shapes_and_labels(mnist10k):
    assert mnist10k.x_train.shape == (8000, 1, 28, 28)
    assert mnist10k.x_test.shape == (2000, 1, 28, 28)
    assert mnist10k.y_train.unique().tolist() == list(range(10))
    assert mnist10k.y_test.unique().tolist() == list(range(10))
    assert mnist10k.classes == tuple("0123456789")
    assert mnist10k.source == str(BUNDLED_DIR / "mnist-10k")


def test_mnist10k_split_is_stratified_and_disjoint(mnist10k_bytes):
    (xtr, ytr), (xte, yte) = mnist10k_bytes
    test_counts = np.bincount(yte, minlength=10)
    all_counts = test_counts + np.bincount(ytr, minlength=10)
    assert all_counts.sum() == 10000
    # each class's share of the test set equals its share overall, within one sample
    assert np.all(np.abs(test_counts - all_counts * 2000 / 10000) <= 1)

    def digests(x):
        return {hashlib.sha1(row.tobytes()).digest() for row in x}

    train, test = digests(xtr), digests(xte)
    assert len(train) == 8000 and len(test) == 2000 and not train & test


def test_mnist10k_normalization_constants(mnist10k_bytes, mnist10k):
    (xtr, _), _ = mnist10k_bytes
    info = CATALOGUE["mnist-10k"]
    pixels = xtr / 255.0
    assert abs(pixels.mean() - info.mean[0]) < 1e-3 and abs(pixels.std() - info.std[0]) < 1e-3
    x = mnist10k.x_train.double()
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3


def test_mnist10k_binary_restriction(mnist10k_bytes):
    (_, ytr), (_, yte) = mnist10k_bytes
    ds = load_dataset("mnist-10k:0,1")
    assert ds.classes == ("0", "1")
    assert ds.y_train.unique().tolist() == [0, 1] and ds.y_test.unique().tolist() == [0, 1]
    assert ds.num_train == int(np.isin(ytr, [0, 1]).sum())
    assert ds.num_test == int(np.isin(yte, [0, 1]).sum())
    assert ds.y_train.tolist() == ytr[np.isin(ytr, [0, 1])].tolist()


# ---------------------------------------------------------------------------------------------- lls


LLS = "lls:n=200,p=10,cond=1e3,noise=0.1,seed=3"


@pytest.fixture(scope="module")
def lls():
    return load_dataset(LLS)


def test_lls_loaded_by_name_equals_make_lls(lls):
    made = make_lls(n=200, p=10, cond=1e3, noise=0.1, seed=3)
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(lls, k), getattr(made, k))
    assert lls.task == "regression" and lls.num_classes == 0 and lls.source == "synthetic"
    assert lls.x_train.shape == (200, 10) and lls.x_test.shape == (250, 10)
    assert lls.y_train.shape == (200,) and lls.x_train.dtype == torch.float32


def test_lls_hessian_spectrum(lls):
    x = lls.x_train.double()
    eig = torch.linalg.eigvalsh(x.T @ x / x.shape[0])
    assert eig.max().item() == pytest.approx(1.0, rel=1e-6)
    assert eig.min().item() == pytest.approx(1e-3, rel=1e-6)
    assert (eig.max() / eig.min()).item() == pytest.approx(1e3, rel=1e-6)
    expected = torch.logspace(0, -3, 10, dtype=torch.float64)
    stored = lls.extras["hessian_eigenvalues"].double()
    torch.testing.assert_close(stored, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(eig.flip(0), expected, rtol=1e-5, atol=0)


def test_lls_theta_star_solves_the_normal_equations(lls):
    x, y = lls.x_train.double(), lls.y_train.double()
    theta = lls.extras["theta_star"].double()
    grad = x.T @ (x @ theta - y) / len(y)
    assert grad.norm() / (x.T @ y / len(y)).norm() < 1e-4
    lstsq = np.linalg.lstsq(x.numpy(), y.numpy(), rcond=None)[0]
    np.testing.assert_allclose(theta.numpy(), lstsq, rtol=1e-5, atol=1e-6)
    loss = 0.5 * ((x @ theta - y) ** 2).mean().item()
    assert lls.extras["optimal_loss"] == pytest.approx(loss, rel=1e-5)
    assert 0.5 * 0.1**2 * 0.5 < loss < 0.5 * 0.1**2 * 1.5  # (n - p) / n of the noise variance / 2


def test_lls_without_noise_recovers_theta_true():
    ds = make_lls(n=60, p=8, noise=0.0, cond=50.0, seed=1)
    assert ds.extras["optimal_loss"] < 1e-12
    torch.testing.assert_close(ds.extras["theta_star"], ds.extras["theta_true"], rtol=0, atol=1e-6)


def test_lls_seeds():
    a, b, c = make_lls(n=30, p=4, seed=5), make_lls(n=30, p=4, seed=5), make_lls(n=30, p=4, seed=6)
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, k), getattr(b, k))
        assert not torch.allclose(getattr(a, k), getattr(c, k))


@pytest.mark.parametrize(
    "options, fragment",
    [
        ("p=0", "need 1 <= p <= n"),
        ("n=5,p=10", "need 1 <= p <= n so that the solution is unique; got n=5, p=10"),
        ("cond=0.5", "cond is the Hessian's condition number and must be >= 1; got 0.5"),
        ("noise=-1", "noise must be a finite number >= 0"),
        ("foo=1", "lls option 'foo=1' is not KEY=VALUE with KEY in n, p, noise, cond, seed"),
        ("n", "lls option 'n' is not KEY=VALUE"),
        ("n=abc", "lls option n='abc' is not an integer"),
        ("n=200.7", "lls option n='200.7' is not an integer"),
        ("n=inf", "lls option n='inf' is not an integer"),
        ("cond=x", "lls option cond='x' is not a number"),
    ],
)
def test_lls_bad_options(options, fragment):
    with pytest.raises(OptimlabError) as e:
        load_dataset(f"lls:{options}")
    assert fragment in str(e.value)


# ------------------------------------------------------------------------------------- batch orders


@pytest.mark.parametrize("n, batch", [(10, 3), (12, 4), (7, 10), (1, 1)])
def test_epoch_batches_cover_every_sample_once(n, batch):
    batches = epoch_batches(n, batch, torch.Generator().manual_seed(0))
    assert len(batches) == steps_per_epoch(n, batch, drop_last=False) == -(-n // batch)
    assert [len(b) for b in batches] == [batch] * (n // batch) + ([n % batch] if n % batch else [])
    assert torch.cat(batches).sort().values.tolist() == list(range(n))
    assert all(b.dtype == torch.int64 for b in batches)
    dropped = epoch_batches(n, batch, torch.Generator().manual_seed(0), drop_last=True)
    assert len(dropped) == steps_per_epoch(n, batch, drop_last=True) == n // batch
    assert all(torch.equal(d, b) for d, b in zip(dropped, batches[: n // batch], strict=True))
    assert all(len(d) == batch for d in dropped)


def test_epoch_batches_are_seeded():
    g1, g2 = torch.Generator().manual_seed(42), torch.Generator().manual_seed(42)
    first = torch.cat(epoch_batches(100, 16, g1))
    assert torch.equal(first, torch.cat(epoch_batches(100, 16, g2)))
    second = torch.cat(epoch_batches(100, 16, g1))
    assert not torch.equal(first, second)
    assert second.sort().values.tolist() == list(range(100))
    other = torch.cat(epoch_batches(100, 16, torch.Generator().manual_seed(43)))
    assert not torch.equal(first, other)


def test_a_download_shows_its_bytes_on_a_terminal(tmp_path, mirror):
    """A bar of the download's bytes (from Content-Length) on a terminal; nothing on a pipe."""
    import io

    from optimlab.data.download import fetch

    root, url = mirror
    (root / "blob.bin").write_bytes(b"x" * 300_000)
    digest = sha256(root / "blob.bin")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen, pipe = Terminal(), io.StringIO()
    fetch("blob.bin", [url], digest, tmp_path / "a", stream=screen)
    fetch("blob.bin", [url], digest, tmp_path / "b", stream=pipe)
    shown = screen.getvalue()
    assert "downloading blob.bin" in shown and "/293k [" in shown  # its size, from Content-Length
    assert pipe.getvalue() == ""
    counted = []
    fetch("blob.bin", [url], digest, tmp_path / "c", progress=counted.append)
    assert sum(counted) == 300_000 and (tmp_path / "c" / "blob.bin").stat().st_size == 300_000
