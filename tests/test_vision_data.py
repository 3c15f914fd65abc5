"""Readers on files written in the real formats, the restricted unpickler, errors, download, batched augmentation."""

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import re
import tarfile
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.augment import DeviceAugmenter, Normalize, random_crop_flip
from core.vision_data import (
    DATA_DIR_ENV,
    DatasetError,
    RestrictedUnpickler,
    download_dataset,
    load_cifar,
    load_dataset,
    load_digits_data,
    load_fashion_mnist,
)
from vision_fixtures import idx_bytes, write_cifar10, write_cifar100, write_fashion_mnist

CIFAR10_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]


def _assert_same(data, written):
    for key, array in written.items():
        assert np.array_equal(getattr(data, key), array), key
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int64


@pytest.mark.parametrize("python2", [True, False], ids=["python2-era", "numpy2-era"])
def test_cifar10_pickles(tmp_path, python2):
    written = write_cifar10(tmp_path / "cifar-10-batches-py", python2=python2)
    data = load_cifar("cifar10", tmp_path)
    _assert_same(data, written)
    assert data.train_images.shape == (80, 3, 32, 32) and data.num_classes == 10
    folder = tmp_path / "cifar-10-batches-py"
    assert data.source == str(folder) and sorted(data.files) == sorted(p.name for p in folder.iterdir())
    assert data.files["test_batch"] == "sha256:" + hashlib.sha256((folder / "test_batch").read_bytes()).hexdigest()


def test_cifar10_python2_file_rebuilds_through_numpy_core(tmp_path):
    write_cifar10(tmp_path, python2=True)
    raw = (tmp_path / "test_batch").read_bytes()
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"numpy._core" not in raw
    load_cifar("cifar10", tmp_path)  # the folder itself is an accepted layout


@pytest.mark.parametrize("python2", [True, False], ids=["python2-era", "numpy2-era"])
def test_cifar100_pickles_use_fine_labels(tmp_path, python2):
    written = write_cifar100(tmp_path / "cifar-100-python", python2=python2)
    data = load_dataset("cifar100", tmp_path)
    _assert_same(data, written)
    assert data.num_classes == 100


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("subfolder", ["FashionMNIST/raw", "."])
def test_fashion_mnist_idx(tmp_path, gz, subfolder):
    written = write_fashion_mnist(tmp_path / subfolder, gz=gz)
    data = load_fashion_mnist(tmp_path)
    assert data.train_images.shape == (64, 3, 32, 32) and data.test_images.shape == (16, 3, 32, 32)
    assert np.array_equal(data.train_labels, written["train_labels"]) and data.train_labels.dtype == np.int64
    assert np.array_equal(data.train_images[:, 0], data.train_images[:, 2])  # gray repeated
    expected = F.interpolate(torch.from_numpy(written["test_images"][:, None]).float(), size=32, mode="bilinear")
    assert np.array_equal(data.test_images[:, 1], expected.round()[:, 0].to(torch.uint8).numpy())
    # checksums of the decompressed bytes: the same data give the same digest, gzipped or not
    raw = idx_bytes(written["train_labels"].astype(np.uint8))
    assert data.files["train-labels-idx1-ubyte"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert len(data.files) == 4


def test_fashion_mnist_constant_image_stays_constant(tmp_path):
    folder = tmp_path / "FashionMNIST"
    folder.mkdir()
    images = np.full((2, 28, 28), 200, dtype=np.uint8)
    labels = np.array([3, 4], dtype=np.uint8)
    for prefix in ("train", "t10k"):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    data = load_fashion_mnist(str(folder.parent))
    assert np.all(data.train_images == 200)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    write_cifar100(tmp_path / "cifar-100-python")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert len(load_dataset("cifar100").test_labels) == 16
    monkeypatch.delenv(DATA_DIR_ENV)
    with pytest.raises(DatasetError, match="ROBUSTLAB_DATA"):
        load_dataset("cifar100")


def test_digits():
    data = load_digits_data()
    assert data.train_images.shape == (1437, 1, 8, 8) and data.test_images.shape == (360, 1, 8, 8)
    assert data.train_images.dtype == np.uint8 and data.train_images.max() == 255
    assert np.bincount(data.test_labels).min() >= 35  # stratified
    assert data.source == "sklearn.datasets.load_digits" and list(data.files) == ["digits.csv.gz"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", data.files["digits.csv.gz"])


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_restricted_unpickler_refuses_a_command(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    evil = {"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": _RunsCommand(f"touch {marker}")}
    (folder / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=4))
    with pytest.raises(DatasetError, match=r"refusing to load global (posix|nt)\.system.*data_batch_1.*test_batch"):
        load_cifar("cifar10", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("numpy", "load"), ("numpy.core.multiarray", "scalar"), ("subprocess", "Popen")])
def test_restricted_unpickler_admits_only_array_rebuilding(module, name):
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        RestrictedUnpickler(io.BytesIO(payload)).load()


def test_missing_files_list_expected_names_and_folder(tmp_path):
    with pytest.raises(DatasetError) as error:
        load_cifar("cifar10", tmp_path)
    message = str(error.value)
    assert all(name in message for name in CIFAR10_FILES) and str(tmp_path / "cifar-10-batches-py") in message
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\[\.gz\].*t10k-labels-idx1-ubyte.*FashionMNIST/raw"):
        load_fashion_mnist(tmp_path)


def test_truncated_cifar_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    raw = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"cannot read test_batch.*data_batch_1.*test_batch.*" + str(folder)):
        load_cifar("cifar10", tmp_path)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_truncated_idx(tmp_path, gz):
    folder = tmp_path / "FashionMNIST" / "raw"
    write_fashion_mnist(folder, gz=gz)
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    raw = (folder / name).read_bytes()
    if gz:
        raw = gzip.compress(gzip.decompress(raw)[:-100])
    else:
        raw = raw[:-100]
    (folder / name).write_bytes(raw)
    with pytest.raises(DatasetError, match=rf"cannot read {name} .*truncated.*train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path)


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server on 127.0.0.1 serving a fresh folder; yields (folder, base_url)."""
    served = tmp_path / "served"
    served.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _cifar10_archive(tmp_path, served):
    source = tmp_path / "source"
    written = write_cifar10(source / "cifar-10-batches-py")
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, written


def test_download_verifies_and_extracts(tmp_path, http_root):
    served, base_url = http_root
    archive, written = _cifar10_archive(tmp_path, served)
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    data_dir = tmp_path / "data"
    download_dataset("cifar10", data_dir, base_url=base_url, checksums={archive.name: f"sha256:{sha256}"})
    _assert_same(load_cifar("cifar10", data_dir), written)

    written_fmnist = write_fashion_mnist(served, gz=True)
    md5s = {p.name: "md5:" + hashlib.md5(p.read_bytes()).hexdigest() for p in served.glob("*-ubyte.gz")}
    download_dataset("fashion_mnist", data_dir, base_url=base_url, checksums=md5s)
    assert sorted(p.name for p in (data_dir / "FashionMNIST" / "raw").iterdir()) == sorted(md5s)
    assert np.array_equal(load_fashion_mnist(data_dir).test_labels, written_fmnist["test_labels"])


def test_download_checksum_mismatch_leaves_nothing(tmp_path, http_root):
    served, base_url = http_root
    archive, _ = _cifar10_archive(tmp_path, served)
    data_dir = tmp_path / "data"
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DatasetError, match="checksum mismatch for cifar-10-python.tar.gz"):
        download_dataset("cifar10", data_dir, base_url=base_url, checksums={archive.name: wrong})
    assert list(data_dir.iterdir()) == []
    with pytest.raises(DatasetError, match="checksum mismatch"):  # the published md5 does not match a generated archive
        download_dataset("cifar10", data_dir, base_url=base_url)
    with pytest.raises(DatasetError, match="download of .*nowhere/cifar-10-python.tar.gz failed: HTTP Error 404"):
        download_dataset("cifar10", data_dir, base_url=base_url + "nowhere/", checksums={archive.name: wrong})


# ---------------------------------------------------------------- batched augmentation


def _reference_crop_flip(image, top, left, flip, padding):
    """What per-image RandomCrop(padding, reflect) + RandomHorizontalFlip do for given draws."""
    padded = F.pad(image[None].float(), (padding,) * 4, mode="reflect")[0]
    crop = padded[:, top : top + image.shape[1], left : left + image.shape[2]]
    return crop.flip(-1) if flip else crop


@pytest.mark.parametrize("padding, shape", [(4, (3, 32, 32)), (1, (1, 8, 8))])
def test_batched_crop_flip_matches_per_image_reference(padding, shape):
    images = torch.randint(0, 256, (20, *shape), dtype=torch.uint8)
    indices = torch.tensor([5, 0, 19, 5, 7, 3, 11, 2])
    out = random_crop_flip(images, indices, padding, True, torch.Generator().manual_seed(3))
    draws = torch.Generator().manual_seed(3)
    top = torch.randint(0, 2 * padding + 1, (8, 1), generator=draws)[:, 0]
    left = torch.randint(0, 2 * padding + 1, (8, 1), generator=draws)[:, 0]
    flip = torch.rand(8, 1, generator=draws)[:, 0] < 0.5
    assert out.dtype == torch.uint8 and out.shape == (8, *shape)
    assert 0 < int(flip.sum()) < 8 and len(set(top.tolist())) > 1
    for b, index in enumerate(indices):
        expected = _reference_crop_flip(images[index], int(top[b]), int(left[b]), bool(flip[b]), padding)
        assert torch.equal(out[b].float(), expected)


def test_augmenter_normalizes_and_test_transform_is_deterministic():
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    augmenter = DeviceAugmenter((0.5, 0.4, 0.3), (0.2, 0.25, 0.5), 0, False, "cpu")
    indices = torch.arange(6)
    expected = (images.float() / 255 - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.5]).view(1, 3, 1, 1)
    assert torch.allclose(augmenter.test_batch(images, indices), expected, atol=1e-5)
    assert torch.allclose(augmenter.train_batch(images, indices, torch.Generator()), expected, atol=1e-5)
    assert Normalize((0.0,), (1.0,), "cpu")(torch.full((1, 1, 1, 1), 255, dtype=torch.uint8)).item() == 1.0


def test_flip_without_padding_mirrors_or_keeps_each_image():
    images = torch.randint(0, 256, (16, 3, 5, 5), dtype=torch.uint8)
    out = random_crop_flip(images, torch.arange(16), 0, True, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
