"""Dataset loaders: real Fashion-MNIST, CIFAR pickles (safely), image folders, .npz."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from tracemark.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    load_cifar,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    load_npz,
)
from tracemark.errors import TracemarkError

needs_fmnist = pytest.mark.skipif(
    not Path(FASHION_MNIST_DIR).is_dir(), reason="apt-get install dataset-fashion-mnist"
)

# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.fixture(scope="module")
def plain_fmnist(tmp_path_factory) -> Path:
    """The test split copied with un-gzipped files."""
    root = tmp_path_factory.mktemp("fmnist-plain")
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(Path(FASHION_MNIST_DIR) / f"{name}.gz", "rb") as src:
            (root / name).write_bytes(src.read())
    return root


@needs_fmnist
def test_fashion_mnist_train_and_test():
    train = load_fashion_mnist(split="train")
    assert train.images.shape == (60000, 28, 28, 1) and len(train) == 60000
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int64
    assert train.images.min() == 0.0 and train.images.max() == 1.0
    assert train.classes == FASHION_MNIST_CLASSES
    np.testing.assert_array_equal(np.bincount(train.labels), [6000] * 10)
    test = load_fashion_mnist(split="test")
    assert test.images.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), [1000] * 10)
    assert test.labels.min() == 0 and test.labels.max() == 9
    # values are exactly k/255
    k = test.images[:100] * 255
    np.testing.assert_allclose(k, np.round(k), atol=1e-4)


@needs_fmnist
def test_fashion_mnist_returns_copies():
    first = load_fashion_mnist(FASHION_MNIST_DIR, split="test")
    first.images[:] = 0.5
    first.labels[:] = 3
    again = load_fashion_mnist(FASHION_MNIST_DIR, split="test")
    assert again.images.max() == 1.0 and np.bincount(again.labels).tolist() == [1000] * 10
    assert again.images.flags.writeable


@needs_fmnist
def test_fashion_mnist_plain_files_and_env(plain_fmnist, monkeypatch):
    plain = load_fashion_mnist(plain_fmnist, split="test")
    gz = load_fashion_mnist(FASHION_MNIST_DIR, split="test")
    np.testing.assert_array_equal(plain.images, gz.images)
    np.testing.assert_array_equal(plain.labels, gz.labels)
    monkeypatch.setenv("TRACEMARK_FASHION_MNIST", str(plain_fmnist))
    assert len(load_fashion_mnist(split="test")) == 10000
    with pytest.raises(TracemarkError, match=r"train-images-idx3-ubyte.*apt-get install"):
        load_fashion_mnist(split="train")  # only the test split was copied
    assert len(load_dataset(plain_fmnist, split="test")) == 10000


def test_fashion_mnist_missing_dir(tmp_path):
    with pytest.raises(TracemarkError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")
    with pytest.raises(TracemarkError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(TracemarkError, match="split"):
        load_fashion_mnist(tmp_path, split="validation")


def _idx(magic: int, dims: list[int], payload: bytes) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in [magic, *dims]) + payload


def test_fashion_mnist_bad_idx_files(tmp_path):
    imgs = _idx(2051, [2, 28, 28], bytes(2 * 784))
    labels = _idx(2049, [2], bytes([1, 9]))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(imgs)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(labels)
    ok = load_fashion_mnist(tmp_path, split="test")
    assert ok.images.shape == (2, 28, 28, 1) and ok.labels.tolist() == [1, 9]

    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / "t10k-images-idx3-ubyte").write_bytes(labels)
    (swapped / "t10k-labels-idx1-ubyte").write_bytes(imgs)
    with pytest.raises(TracemarkError, match="magic number 2049, expected 2051"):
        load_fashion_mnist(swapped, split="test")

    short = tmp_path / "short"
    short.mkdir()
    (short / "t10k-images-idx3-ubyte").write_bytes(imgs[:-10])
    (short / "t10k-labels-idx1-ubyte").write_bytes(labels)
    with pytest.raises(TracemarkError, match="truncated"):
        load_fashion_mnist(short, split="test")

    counts = tmp_path / "counts"
    counts.mkdir()
    (counts / "t10k-images-idx3-ubyte").write_bytes(imgs)
    (counts / "t10k-labels-idx1-ubyte").write_bytes(_idx(2049, [3], bytes([1, 2, 3])))
    with pytest.raises(TracemarkError, match=r"2 images but .* 3 labels"):
        load_fashion_mnist(counts, split="test")


# --------------------------------------------------------------------------- CIFAR


def _cifar_data(n: int, seed: int) -> np.ndarray:
    data = np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)
    # image 0: red at (0, 0), green at (0, 1), blue at (1, 0)
    data[0, [0, 1024, 2048]] = [255, 0, 0]
    data[0, [1, 1025, 2049]] = [0, 255, 0]
    data[0, [32, 1056, 2080]] = [0, 0, 255]
    return data


def _dump(path: Path, obj: object) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _write_cifar10(root: Path, n: int = 4) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data = _cifar_data(n, i)
        labels = [(i + j) % 10 for j in range(n)]
        _dump(
            root / name,
            {
                b"batch_label": f"batch {i}".encode(),
                b"labels": labels,
                b"data": data,
                b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)],
            },
        )
        batches[name] = data
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(
        root / "batches.meta",
        {b"num_cases_per_batch": n, b"label_names": names, b"num_vis": 3072},
    )
    return batches


def _check_pixel_layout(x: np.ndarray) -> None:
    np.testing.assert_array_equal(x[0, 0, 0], [1, 0, 0])
    np.testing.assert_array_equal(x[0, 0, 1], [0, 1, 0])
    np.testing.assert_array_equal(x[0, 1, 0], [0, 0, 1])


def test_cifar10(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    batches = _write_cifar10(root)
    train = load_cifar(root)
    assert train.images.shape == (20, 32, 32, 3) and train.images.dtype == np.float32
    assert train.labels.dtype == np.int64
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    _check_pixel_layout(train.images)
    np.testing.assert_array_equal(train.labels[:4], [0, 1, 2, 3])
    np.testing.assert_array_equal(train.labels[4:8], [1, 2, 3, 4])  # data_batch_2 follows
    d = batches["data_batch_3"]
    expected = d.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) / np.float32(255)
    np.testing.assert_array_equal(train.images[8:12], expected)
    test = load_cifar(root, split="test")
    assert test.images.shape == (4, 32, 32, 3)
    _check_pixel_layout(test.images)
    # the folder the official archive extracts to is found from its parent too
    assert len(load_dataset(tmp_path, split="test")) == 4
    assert len(load_cifar(tmp_path)) == 20


def test_cifar100(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for split, n in (("train", 6), ("test", 3)):
        _dump(
            root / split,
            {
                b"filenames": [f"{split}{j}.png".encode() for j in range(n)],
                b"batch_label": f"{split} batch".encode(),
                b"fine_labels": [99 - j for j in range(n)],
                b"coarse_labels": [j % 20 for j in range(n)],
                b"data": _cifar_data(n, n),
            },
        )
    _dump(
        root / "meta",
        {
            b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
            b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)],
        },
    )
    train = load_cifar(root)
    assert train.images.shape == (6, 32, 32, 3) and len(train.classes) == 100
    assert train.labels.tolist() == [99, 98, 97, 96, 95, 94]
    assert train.classes[99] == "fine99"
    _check_pixel_layout(train.images)
    test = load_dataset(root, split="test")
    assert test.images.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(test.images * 255, np.round(test.images * 255))


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("where", ["data_batch_1", "batches.meta"])
@pytest.mark.parametrize("func", [os.system, eval])
def test_cifar_malicious_pickle_is_refused(tmp_path, where, func):
    root = tmp_path / "c10"
    _write_cifar10(root)
    marker = tmp_path / "pwned"
    code = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w').close()"
    _dump(root / where, {b"data": _Evil(func, code), b"labels": [0], b"label_names": []})
    with pytest.raises(TracemarkError, match=rf"{where}.*refusing to unpickle"):
        load_cifar(root)
    assert not marker.exists()


def test_cifar_damaged_and_missing(tmp_path):
    root = tmp_path / "c10"
    _write_cifar10(root)
    blob = (root / "test_batch").read_bytes()
    (root / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(TracemarkError, match="test_batch"):
        load_cifar(root, split="test")
    _dump(root / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(TracemarkError, match="3072"):
        load_cifar(root, split="test")
    with pytest.raises(TracemarkError, match="not a CIFAR folder"):
        load_cifar(tmp_path / "empty-nonexistent")


# --------------------------------------------------------------------------- image folders


def _write_class_folders(root: Path) -> None:
    astro = skdata.astronaut()
    cam = skdata.camera()
    for i in range(3):
        (root / "cat").mkdir(parents=True, exist_ok=True)
        Image.fromarray(astro[i * 40 : i * 40 + 24, :24]).save(root / "cat" / f"c{i}.png")
    (root / "dog" / "puppies").mkdir(parents=True)
    Image.fromarray(cam[:24, :24]).save(root / "dog" / "d0.jpg", quality=95)
    Image.fromarray(cam[24:48, :24]).save(root / "dog" / "puppies" / "d1.png")
    (root / ".thumbnails").mkdir()
    Image.fromarray(cam[:8, :8]).save(root / ".thumbnails" / "x.png")


def test_image_folder(tmp_path):
    _write_class_folders(tmp_path)
    ds = load_image_folder(tmp_path)
    assert ds.classes == ["cat", "dog"]
    assert ds.images.shape == (5, 24, 24, 3)  # cats are colour, so everything is RGB
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]
    assert ds.ids == ["cat/c0.png", "cat/c1.png", "cat/c2.png", "dog/d0.jpg", "dog/puppies/d1.png"]
    grey = load_image_folder(tmp_path, mode="L", size=(16, 12))
    assert grey.images.shape == (5, 16, 12, 1)
    sub = ds.subset([4, 0])
    assert sub.ids == ["dog/puppies/d1.png", "cat/c0.png"] and sub.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(sub.images[1], ds.images[0])
    mask = ds.subset(ds.labels == 1)
    assert len(mask) == 2 and mask.classes == ["cat", "dog"]
    assert len(load_dataset(tmp_path)) == 5


def test_image_folder_errors(tmp_path):
    _write_class_folders(tmp_path)
    Image.fromarray(skdata.camera()[:30, :30]).save(tmp_path / "dog" / "big.png")
    with pytest.raises(TracemarkError, match="--size"):
        load_image_folder(tmp_path)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(skdata.camera()[:8, :8]).save(flat / "a.png")
    with pytest.raises(TracemarkError, match="one subfolder per class"):
        load_image_folder(flat)
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(TracemarkError, match="no images"):
        load_image_folder(empty)


# --------------------------------------------------------------------------- npz


def test_npz_variants(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(5, 8, 9), dtype=np.uint8)
    np.savez(tmp_path / "nhw.npz", x=u8, y=np.arange(5))
    ds = load_npz(tmp_path / "nhw.npz")
    assert ds.images.shape == (5, 8, 9, 1) and ds.images.dtype == np.float32
    np.testing.assert_array_equal(ds.images[..., 0], u8 / np.float32(255))
    assert ds.labels.dtype == np.int64 and ds.classes == ["0", "1", "2", "3", "4"]

    f = rng.random((4, 3, 10, 12), dtype=np.float32)
    np.savez(tmp_path / "nchw.npz", images=f, labels=np.array([0, 1, 1, 0], np.uint8))
    ds = load_npz(tmp_path / "nchw.npz")
    assert ds.images.shape == (4, 10, 12, 3)
    np.testing.assert_array_equal(ds.images, f.transpose(0, 2, 3, 1))

    nhwc = rng.random((2, 6, 6, 3))
    np.savez(tmp_path / "nhwc.npz", x=nhwc, y=[1, 0], classes=np.array(["bird", "cat"]))
    ds = load_dataset(tmp_path / "nhwc.npz")
    assert ds.images.shape == (2, 6, 6, 3) and ds.images.dtype == np.float32
    assert ds.classes == ["bird", "cat"]


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "range.npz", x=np.full((2, 4, 4), 7.0), y=[0, 1])
    with pytest.raises(TracemarkError, match=r"range\.npz.*\[0, 1\]"):
        load_npz(tmp_path / "range.npz")
    np.savez(tmp_path / "keys.npz", a=np.zeros((2, 4, 4)), y=[0, 1])
    with pytest.raises(TracemarkError, match="x or images"):
        load_npz(tmp_path / "keys.npz")
    np.savez(tmp_path / "count.npz", x=np.zeros((2, 4, 4)), y=[0, 1, 2])
    with pytest.raises(TracemarkError, match="one integer label per image"):
        load_npz(tmp_path / "count.npz")
    np.savez(
        tmp_path / "obj.npz",
        x=np.zeros((1, 4, 4)),
        y=[0],
        classes=np.array(["a", None], dtype=object),
    )
    with pytest.raises(TracemarkError, match="without pickle"):
        load_npz(tmp_path / "obj.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(TracemarkError, match=r"junk\.npz"):
        load_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "chan.npz", x=np.zeros((2, 5, 6, 7), np.uint8), y=[0, 1])
    with pytest.raises(TracemarkError, match="channels"):
        load_npz(tmp_path / "chan.npz")


# --------------------------------------------------------------------------- dispatch


@needs_fmnist
def test_load_dataset_literal_fashion_mnist():
    ds = load_dataset("fashion-mnist", split="test")
    assert ds.images.shape == (10000, 28, 28, 1)


def test_load_dataset_errors(tmp_path):
    with pytest.raises(TracemarkError, match="does not exist"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "data.csv").write_text("1,2,3")
    with pytest.raises(TracemarkError, match=r"not an \.npz"):
        load_dataset(tmp_path / "data.csv")
    with pytest.raises(TracemarkError, match="cannot tell"):
        load_dataset(tmp_path)
