"""Writers of tiny data files in the exact on-disk formats of CIFAR-10/100 and FashionMNIST (test helpers)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


class Python2Pickler(pickle._Pickler):
    """Protocol-2 pickles as Python 2's cPickle wrote them (the real CIFAR files).

    Byte strings become Python 2 ``str`` opcodes (SHORT_BINSTRING / BINSTRING)
    and numpy arrays are rebuilt through ``numpy.core.multiarray._reconstruct``.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str

    def save_global(self, obj, name=None):
        if obj is np._core.multiarray._reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def _dump(obj: dict, path: Path, python2: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as stream:
        if python2:
            Python2Pickler(stream, protocol=2).dump(obj)
        else:
            pickle.dump(obj, stream, protocol=4)


def _key(name: str, python2: bool) -> str | bytes:
    return name.encode() if python2 else name


def _random_split(rng: np.random.RandomState, n: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = rng.randint(0, 256, size=(n, 3, 32, 32)).astype(np.uint8)
    labels = rng.randint(0, num_classes, size=n).astype(np.int64)
    return images, labels


def write_cifar10(folder: Path, per_batch: int = 16, n_test: int = 16, seed: int = 0, python2: bool = True) -> dict[str, np.ndarray]:
    """Write ``data_batch_1..5`` and ``test_batch`` into ``folder``; return the arrays written."""
    rng = np.random.RandomState(seed)
    written = {"train_images": [], "train_labels": []}
    for index in range(1, 6):
        images, labels = _random_split(rng, per_batch, 10)
        written["train_images"].append(images)
        written["train_labels"].append(labels)
        batch = {
            _key("batch_label", python2): f"training batch {index} of 5".encode(),
            _key("labels", python2): labels.tolist(),
            _key("data", python2): images.reshape(per_batch, -1),
            _key("filenames", python2): [f"img_{index}_{i}.png".encode() for i in range(per_batch)],
        }
        _dump(batch, folder / f"data_batch_{index}", python2)
    test_images, test_labels = _random_split(rng, n_test, 10)
    test = {
        _key("batch_label", python2): b"testing batch 1 of 1",
        _key("labels", python2): test_labels.tolist(),
        _key("data", python2): test_images.reshape(n_test, -1),
        _key("filenames", python2): [f"test_{i}.png".encode() for i in range(n_test)],
    }
    _dump(test, folder / "test_batch", python2)
    return {
        "train_images": np.concatenate(written["train_images"]),
        "train_labels": np.concatenate(written["train_labels"]),
        "test_images": test_images,
        "test_labels": test_labels,
    }


def write_cifar100(folder: Path, n_train: int = 64, n_test: int = 16, seed: int = 0, python2: bool = False) -> dict[str, np.ndarray]:
    """Write ``train`` and ``test`` (fine and coarse labels) into ``folder``; return the arrays written."""
    rng = np.random.RandomState(seed)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = _random_split(rng, n, 100)
        written[f"{split}_images"], written[f"{split}_labels"] = images, labels
        batch = {
            _key("filenames", python2): [f"{split}_{i}.png".encode() for i in range(n)],
            _key("batch_label", python2): f"{split} batch 1 of 1".encode(),
            _key("fine_labels", python2): labels.tolist(),
            _key("coarse_labels", python2): (labels // 5).tolist(),
            _key("data", python2): images.reshape(n, -1),
        }
        _dump(batch, folder / split, python2)
    return written


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file of unsigned bytes holding ``array``."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fashion_mnist(folder: Path, n_train: int = 64, n_test: int = 16, seed: int = 0, gz: bool = True) -> dict[str, np.ndarray]:
    """Write the four 28x28 idx files (``.gz`` or plain) into ``folder``; return the arrays written."""
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for prefix, split, n in (("train", "train", n_train), ("t10k", "test", n_test)):
        images = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
        labels = rng.randint(0, 10, size=n).astype(np.uint8)
        written[f"{split}_images"], written[f"{split}_labels"] = images, labels
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            payload = idx_bytes(array)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)
    return written
