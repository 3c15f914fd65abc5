"""Image data sets for the robust_loss study, read from their standard on-disk formats.

Every loader returns an :class:`ImageData`: uint8 images ``N x C x H x W``
and int64 labels for train and test.  CIFAR-10/100 come from the python
pickle batches (read with a restricted unpickler), FashionMNIST from idx
files (plain or ``.gz``; resized to 32x32 once here, gray repeated to 3
channels), digits from scikit-learn's bundled copy.  The data folder is an
argument, else ``$ROBUSTLAB_DATA``.  :func:`download_dataset` fetches the
standard archives for users with internet and verifies their checksums.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATA_DIR_ENV = "ROBUSTLAB_DATA"


class DatasetError(RuntimeError):
    """Data files are missing, corrupt or fail their checksum; the message lists the expected files."""


@dataclass(frozen=True)
class ImageData:
    """A data set in memory: uint8 ``N x C x H x W`` images, int64 labels; ``source`` (the folder read, or the
    bundled copy) and ``files`` (file name -> ``"sha256:HEX"`` of the bytes read, decompressed) say which data."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    source: str = ""
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts of a data set: classes, image shape and the normalization its benchmark uses."""

    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo(100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion_mnist": DatasetInfo(10, (3, 32, 32), (0.2860,) * 3, (0.3530,) * 3),
    # Mean / std of all 1,797 digits after the /16 scaling below.
    "digits": DatasetInfo(10, (1, 8, 8), (0.3053,), (0.3759,)),
}


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` if given, else ``$ROBUSTLAB_DATA``; an error says how to set one."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV)
    if not data_dir:
        raise DatasetError(f"no data folder given: pass --data-dir or set ${DATA_DIR_ENV}")
    return Path(data_dir).expanduser()


def _missing_error(dataset: str, expected: list[str], searched: list[Path], problem: str) -> DatasetError:
    return DatasetError(
        f"{dataset}: {problem}. Expected files {', '.join(expected)} in one of: "
        f"{', '.join(str(folder) for folder in searched)}. Put the standard files there{DOWNLOAD_HINT}."
    )


#: The end of a missing-data message for Python callers; a launcher replaces it with its own flags.
DOWNLOAD_HINT = " (or download them with core.vision_data.download_dataset)"


# ---------------------------------------------------------------- CIFAR pickles


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR python batches that refuses to call anything but array rebuilding.

    Dicts, lists, tuples, str/bytes, ints, floats, bools and None are built by
    pickle opcodes without any lookup.  The only globals admitted are:

    * ``numpy.core.multiarray._reconstruct`` (how Python-2-era numpy, i.e. the
      real CIFAR files, pickled arrays) and ``numpy._core.multiarray._reconstruct``
      (numpy >= 2): they allocate an empty array of a given subtype, shape and dtype;
    * ``numpy.ndarray``: the subtype ``_reconstruct`` receives (only plain ndarrays);
    * ``numpy.dtype``: rebuilds the element type from its code (e.g. ``'u1'``).

    The array's bytes are then set by ndarray ``__setstate__`` (a BUILD opcode,
    no lookup).  Anything else, e.g. ``os.system``, raises ``UnpicklingError``.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: not an array-rebuilding name")
        if name == "_reconstruct":
            return np._core.multiarray._reconstruct  # the same function under both module names
        return getattr(np, name)


def restricted_load(path: Path) -> object:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (Python-2 strings decoded as latin-1)."""
    with open(path, "rb") as stream:
        return RestrictedUnpickler(stream, encoding="latin1").load()


_CIFAR_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}


def _read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = restricted_load(path)
    if not isinstance(batch, dict):
        raise ValueError(f"expected a dict, got {type(batch).__name__}")
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    data = batch["data"]
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError("'data' is not a uint8 array of shape (N, 3072)")
    if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) >= num_classes:
        raise ValueError(f"{label_key!r} does not hold one label in [0, {num_classes}) per image")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(name: str, data_dir: str | os.PathLike | None = None) -> ImageData:
    """CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels) from the python batches.

    Looks in ``DIR/cifar-10-batches-py`` (resp. ``cifar-100-python``), then ``DIR`` itself.
    """
    folder_name, train_files, test_files, label_key = _CIFAR_LAYOUTS[name]
    root = resolve_data_dir(data_dir)
    searched = [root / folder_name, root]
    expected = train_files + test_files
    folder = next((f for f in searched if all((f / file).is_file() for file in expected)), None)
    if folder is None:
        raise _missing_error(name, expected, searched, "data files not found")
    num_classes = DATASETS[name].num_classes
    checksums: dict[str, str] = {}
    parts = {}
    for file in expected:
        try:
            parts[file] = _read_cifar_batch(folder / file, label_key, num_classes)
            checksums[file] = "sha256:" + file_checksum(folder / file, "sha256")
        except Exception as error:  # truncated, corrupt, malicious or malformed: all refused the same way
            problem = f"cannot read {file} ({type(error).__name__}: {error})"
            raise _missing_error(name, expected, [folder], problem) from error
    train = [parts[file] for file in train_files]
    test = [parts[file] for file in test_files]
    return ImageData(
        name=name,
        train_images=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_images=np.concatenate([images for images, _ in test]),
        test_labels=np.concatenate([labels for _, labels in test]),
        num_classes=num_classes,
        source=str(folder),
        files=checksums,
    )


# ---------------------------------------------------------------- FashionMNIST idx

_FMNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
_FMNIST_FOLDERS = ["FashionMNIST/raw", "FashionMNIST", "fashion-mnist", "fashion_mnist", "."]


def _read_idx(path: Path, expected_dims: int) -> tuple[np.ndarray, str]:
    """Read an idx file of unsigned bytes (magic ``0x0000 08 dims``), gzipped if it ends in ``.gz``; the array
    and the SHA-256 of the (decompressed) bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 + 4 * expected_dims:
        raise ValueError(f"file is truncated ({len(raw)} bytes)")
    zero, dtype_code, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or dims != expected_dims:
        raise ValueError(f"bad idx magic (type {dtype_code:#x}, {dims} dims; want ubyte, {expected_dims} dims)")
    shape = struct.unpack(f">{dims}I", raw[4 : 4 + 4 * dims])
    body = raw[4 + 4 * dims :]
    if len(body) != int(np.prod(shape)):
        raise ValueError(f"payload is {len(body)} bytes, header says {int(np.prod(shape))} (truncated?)")
    array = np.frombuffer(body, dtype=np.uint8).reshape(shape).copy()  # writable, independent of `raw`
    return array, hashlib.sha256(raw).hexdigest()


def _find_idx(folder: Path, base_name: str) -> Path | None:
    for candidate in (folder / base_name, folder / f"{base_name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def resize_gray_to_rgb32(images: np.ndarray, chunk: int = 10_000) -> np.ndarray:
    """``N x H x W`` uint8 gray -> ``N x 3 x 32 x 32`` uint8 (bilinear, half-pixel centres), in chunks."""
    out = np.empty((len(images), 3, 32, 32), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        block = torch.from_numpy(images[start : start + chunk]).unsqueeze(1).float()
        resized = F.interpolate(block, size=(32, 32), mode="bilinear", align_corners=False)
        out[start : start + chunk] = resized.round().clamp(0, 255).to(torch.uint8).numpy()  # broadcasts to 3 channels
    return out


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> ImageData:
    """FashionMNIST from the four idx files (each plain or ``.gz``), resized to 3 x 32 x 32.

    Looks in ``DIR/FashionMNIST/raw``, ``DIR/FashionMNIST``, ``DIR/fashion-mnist``,
    ``DIR/fashion_mnist``, then ``DIR`` itself.
    """
    root = resolve_data_dir(data_dir)
    searched = [root / folder for folder in _FMNIST_FOLDERS]
    expected = [f"{name}[.gz]" for name in _FMNIST_FILES]
    for folder in searched:
        paths = [_find_idx(folder, name) for name in _FMNIST_FILES]
        if all(paths):
            break
    else:
        raise _missing_error("fashion_mnist", expected, searched, "data files not found")
    arrays, checksums = [], {}
    for name, path, dims in zip(_FMNIST_FILES, paths, (3, 1, 3, 1)):
        try:
            array, checksums[name] = _read_idx(path, dims)
            arrays.append(array)
        except Exception as error:
            problem = f"cannot read {path.name} ({type(error).__name__}: {error})"
            raise _missing_error("fashion_mnist", expected, [folder], problem) from error
    train_images, train_labels, test_images, test_labels = arrays
    for images, labels, split in ((train_images, train_labels, "train"), (test_images, test_labels, "t10k")):
        if len(images) != len(labels) or labels.max(initial=0) >= 10:
            raise _missing_error("fashion_mnist", expected, [folder], f"{split} images and labels do not match")
    return ImageData(
        name="fashion_mnist",
        train_images=resize_gray_to_rgb32(train_images),
        train_labels=train_labels.astype(np.int64),
        test_images=resize_gray_to_rgb32(test_images),
        test_labels=test_labels.astype(np.int64),
        num_classes=10,
        source=str(folder),
        files={name: f"sha256:{checksum}" for name, checksum in checksums.items()},
    )


# ---------------------------------------------------------------- digits

DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0
DIGITS_FILE = "digits.csv.gz"  # scikit-learn's bundled copy


def load_digits_data() -> ImageData:
    """scikit-learn's bundled 8x8 digits as ``N x 1 x 8 x 8`` uint8 (values 0..16 scaled by 255/16).

    Fixed stratified split (independent of any trial seed): 1,437 train, 360 test.
    """
    from importlib import resources

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    train_images, test_images, train_labels, test_labels = train_test_split(
        images, labels, test_size=DIGITS_TEST_SIZE, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    bundled = resources.files("sklearn.datasets.data") / DIGITS_FILE
    checksum = "sha256:" + hashlib.sha256(bundled.read_bytes()).hexdigest()
    return ImageData("digits", train_images, train_labels, test_images, test_labels, num_classes=10,
                     source="sklearn.datasets.load_digits", files={DIGITS_FILE: checksum})


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> ImageData:
    """Load ``cifar10``, ``cifar100``, ``fashion_mnist`` (from the data folder) or ``digits`` (bundled)."""
    if name in _CIFAR_LAYOUTS:
        return load_cifar(name, data_dir)
    if name == "fashion_mnist":
        return load_fashion_mnist(data_dir)
    if name == "digits":
        return load_digits_data()
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


# ---------------------------------------------------------------- download


@dataclass(frozen=True)
class RemoteFile:
    """One standard file: its name on the server, ``"md5:..."``/``"sha256:..."`` checksum, destination subfolder."""

    name: str
    checksum: str
    subfolder: str
    extract: bool


# Checksums as published by the data sets' authors (and used by torchvision).
DOWNLOADS: dict[str, tuple[str, list[RemoteFile]]] = {
    "cifar10": (
        "https://www.cs.toronto.edu/~kriz/",
        [RemoteFile("cifar-10-python.tar.gz", "md5:c58f30108f718f92721af3b95e74349a", ".", True)],
    ),
    "cifar100": (
        "https://www.cs.toronto.edu/~kriz/",
        [RemoteFile("cifar-100-python.tar.gz", "md5:eb9058c3a382ffc7106e4002c42a8d85", ".", True)],
    ),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        [
            RemoteFile("train-images-idx3-ubyte.gz", "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d", "FashionMNIST/raw", False),
            RemoteFile("train-labels-idx1-ubyte.gz", "md5:25c81989df183df01b3e8a0aad5dffbe", "FashionMNIST/raw", False),
            RemoteFile("t10k-images-idx3-ubyte.gz", "md5:bef4ecab320f06d8554ea6380940ec79", "FashionMNIST/raw", False),
            RemoteFile("t10k-labels-idx1-ubyte.gz", "md5:bb300cfdad3c16e7a12a480ee83cd310", "FashionMNIST/raw", False),
        ],
    ),
}


def file_checksum(path: Path, algorithm: str) -> str:
    """Hex digest of ``path`` with ``algorithm`` (``md5`` or ``sha256``)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, checksum: str, name: str) -> None:
    algorithm, _, expected = checksum.partition(":")
    if algorithm not in ("md5", "sha256") or not expected:
        raise ValueError(f"checksum must be 'md5:HEX' or 'sha256:HEX', got {checksum!r}")
    actual = file_checksum(path, algorithm)
    if actual != expected.lower():
        raise DatasetError(f"checksum mismatch for {name}: expected {algorithm} {expected}, got {actual}")


def download_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    checksums: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download and verify the standard files of ``name`` into the data folder; return that folder.

    ``base_url`` replaces the official server (a mirror, or a local test
    server); ``checksums`` (file name -> ``"md5:..."``/``"sha256:..."``)
    replaces the published checksums for the files it names.  A file already
    present with the right checksum is not fetched again.  On a mismatch the
    download is deleted and :class:`DatasetError` raised; CIFAR archives are
    unpacked (regular files and folders only) after they pass.
    """
    if name not in DOWNLOADS:
        raise ValueError(f"no download for {name!r}; downloadable: {', '.join(DOWNLOADS)}")
    official_url, files = DOWNLOADS[name]
    base_url = (base_url or official_url).rstrip("/") + "/"
    root = resolve_data_dir(data_dir)
    checksums = dict(checksums or {})
    for remote in files:
        checksum = checksums.get(remote.name, remote.checksum)
        folder = root / remote.subfolder
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / remote.name
        if target.is_file():
            try:
                _verify(target, checksum, remote.name)
            except DatasetError:
                target.unlink()
        if not target.is_file():
            _fetch(base_url + remote.name, target, checksum, timeout)
        if remote.extract:
            with tarfile.open(target, "r:gz") as archive:
                archive.extractall(folder, filter="data")
    return root


def _fetch(url: str, target: Path, checksum: str, timeout: float) -> None:
    handle, partial_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    partial = Path(partial_name)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out)
        _verify(partial, checksum, target.name)
        partial.replace(target)
    except OSError as error:
        raise DatasetError(f"download of {url} failed: {error}") from error
    finally:
        partial.unlink(missing_ok=True)
