"""Writing a modified training split back in its source's layout (a watermarked release).

Every source here is built from real images (Fashion-MNIST, scikit-image photos) in the
real on-disk formats; every release is read back with ``load_dataset``.
"""

from __future__ import annotations

import gzip
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from tracemark import dataset_writers
from tracemark.dataset_writers import detect_layout, write_release
from tracemark.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    LabelledImages,
    load_dataset,
)
from tracemark.errors import TracemarkError
from tracemark.images import quantize

from helpers import tree_hashes

N_TRAIN, N_TEST = 200, 50


# --------------------------------------------------------------------------- helpers


def _expected_pixels(x: np.ndarray) -> np.ndarray:
    """What an 8-bit file of ``x`` reads back as, computed independently of tracemark."""
    return (np.round(np.clip(x, 0, 1) * 255).astype(np.uint8) / np.float32(255)).astype(np.float32)


def _modify(ds: LabelledImages, seed: int = 0) -> LabelledImages:
    """A watermark-like change: off-grid and out-of-range pixels in some images, new labels."""
    rng = np.random.default_rng(seed)
    x = ds.images.copy()
    idx = rng.choice(len(ds), size=max(3, len(ds) // 10), replace=False)
    x[idx, 2:6, 3:7] = rng.uniform(-0.2, 1.2, size=(len(idx), 4, 4, x.shape[-1]))
    x[idx[0]] += 0.0013  # between two 8-bit levels almost everywhere
    y = ds.labels.copy()
    y[idx[:5]] = (y[idx[:5]] + 1) % len(ds.classes)
    return LabelledImages(x.astype(np.float32), y, list(ds.classes), ds.ids)


def _assert_release(back: LabelledImages, sent: LabelledImages) -> None:
    np.testing.assert_array_equal(back.images, quantize(sent.images))
    np.testing.assert_array_equal(back.images, _expected_pixels(sent.images))
    np.testing.assert_array_equal(back.labels, sent.labels)
    assert back.classes == sent.classes


def _assert_same(a: LabelledImages, b: LabelledImages) -> None:
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.classes == b.classes


def _assert_files(result: dict, out: Path) -> None:
    """The returned file list names exactly what is on disk, with the right hashes."""
    assert result["out"] == str(out)
    listed = {f["path"]: f["sha256"] for f in result["files"]}
    assert listed == tree_hashes(out)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.round(x * 255).astype(np.uint8)


# --------------------------------------------------------------------------- sources


def _idx(magic: int, array: np.ndarray) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in (magic, *array.shape)) + array.tobytes()


@pytest.fixture(scope="module")
def fm_small(fmnist_train, fmnist_test) -> tuple[LabelledImages, LabelledImages]:
    return fmnist_train.subset(slice(0, N_TRAIN)), fmnist_test.subset(slice(0, N_TEST))


def _write_idx_folder(root: Path, fm_small, gz: bool) -> Path:
    root.mkdir(parents=True)
    train, test = fm_small
    for prefix, ds in (("train", train), ("t10k", test)):
        for kind, magic, arr in (
            ("images-idx3", 2051, _u8(ds.images[..., 0])),
            ("labels-idx1", 2049, ds.labels.astype(np.uint8)),
        ):
            blob = _idx(magic, arr)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (root / name).write_bytes(blob)
    return root


def _to_cifar(ds: LabelledImages) -> np.ndarray:
    """Fashion-MNIST images as CIFAR rows: padded to 32x32, three distinct channels."""
    g = np.pad(_u8(ds.images[..., 0]), ((0, 0), (2, 2), (2, 2)))
    chw = np.stack([g, g.transpose(0, 2, 1), 255 - g], axis=1)  # (N, 3, 32, 32)
    return chw.reshape(len(ds), 3072)


def _dump(path: Path, obj: object) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _write_cifar10(root: Path, fm_small) -> Path:
    """Two training batches of 60 and a test batch, as the python CIFAR-10 archive has them."""
    root.mkdir(parents=True)
    train, test = fm_small
    parts = [
        ("data_batch_1", train.subset(slice(0, 60))),
        ("data_batch_2", train.subset(slice(60, 120))),
    ]
    for i, (name, ds) in enumerate([*parts, ("test_batch", test)]):
        _dump(
            root / name,
            {
                b"batch_label": f"{name} ({i + 1} of 3)".encode(),
                b"labels": [int(v) for v in ds.labels],
                b"data": _to_cifar(ds),
                b"filenames": [f"{name}_{j:05d}.png".encode() for j in range(len(ds))],
            },
        )
    names = [c.encode() for c in FASHION_MNIST_CLASSES]
    _dump(
        root / "batches.meta", {b"num_cases_per_batch": 60, b"label_names": names, b"num_vis": 3072}
    )
    (root / "readme.html").write_text("<html>CIFAR-style test data</html>\n")
    return root


def _write_cifar100(root: Path, fm_small) -> Path:
    root.mkdir(parents=True)
    train, test = fm_small
    for split, ds in (("train", train.subset(slice(0, 120))), ("test", test)):
        _dump(
            root / split,
            {
                b"filenames": [f"{split}{j}.png".encode() for j in range(len(ds))],
                b"batch_label": f"{split} batch".encode(),
                b"fine_labels": [int(v) * 10 + j % 10 for j, v in enumerate(ds.labels)],
                b"coarse_labels": [int(v) * 2 for v in ds.labels],
                b"data": _to_cifar(ds),
            },
        )
    _dump(
        root / "meta",
        {
            b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
            b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)],
        },
    )
    return root


def _write_photo_folder(root: Path) -> Path:
    """RGB crops of real photos in two classes, one a JPEG, one in a nested folder."""
    astro, coffee, cam = skdata.astronaut(), skdata.coffee(), skdata.camera()
    (root / "cat").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(astro[i * 40 : i * 40 + 24, 100:124]).save(root / "cat" / f"c{i}.png")
    (root / "dog" / "puppies").mkdir(parents=True)
    Image.fromarray(coffee[100:124, 200:224]).save(root / "dog" / "d0.jpg", quality=90)
    Image.fromarray(cam[24:48, :24]).save(root / "dog" / "puppies" / "d1.png")
    return root


def _write_grey_folder(root: Path, fm_small) -> Path:
    train, _ = fm_small
    for i in range(12):
        folder = root / FASHION_MNIST_CLASSES[int(train.labels[i])].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_u8(train.images[i, ..., 0])).save(folder / f"fm{i:03d}.png")
    return root


# --------------------------------------------------------------------------- detection


def test_detect_layout(tmp_path, fm_small):
    assert Path(FASHION_MNIST_DIR).is_dir(), "apt-get install dataset-fashion-mnist"
    assert detect_layout("fashion-mnist") == "fashion-mnist"
    assert detect_layout(FASHION_MNIST_DIR) == "idx"
    assert detect_layout(_write_idx_folder(tmp_path / "idx", fm_small, gz=False)) == "idx"
    c10 = _write_cifar10(tmp_path / "c10" / "cifar-10-batches-py", fm_small)
    assert detect_layout(c10) == "cifar" and detect_layout(c10.parent) == "cifar"
    assert detect_layout(_write_cifar100(tmp_path / "c100", fm_small)) == "cifar"
    with open(tmp_path / "d.NPZ", "wb") as fh:  # np.savez would append ".npz"
        np.savez(fh, x=np.zeros((1, 2, 2), np.uint8), y=[0])
    assert detect_layout(tmp_path / "d.NPZ") == "npz"
    assert detect_layout(_write_photo_folder(tmp_path / "photos")) == "folder"
    with pytest.raises(TracemarkError, match="does not exist"):
        detect_layout(tmp_path / "missing")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(TracemarkError, match=r"not an \.npz"):
        detect_layout(tmp_path / "data.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TracemarkError, match="cannot tell"):
        detect_layout(tmp_path / "empty")


# --------------------------------------------------------------------------- per layout


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_idx_release(tmp_path, fm_small, gz):
    src = _write_idx_folder(tmp_path / "src", fm_small, gz)
    before = tree_hashes(src)
    release = _modify(load_dataset(src, "train"))
    out = tmp_path / "release"
    result = write_release(release, src, out)

    assert result["layout"] == "idx"
    suffix = ".gz" if gz else ""
    names = ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    names += ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    assert sorted(p.name for p in out.iterdir()) == [n + suffix for n in names]
    _assert_files(result, out)
    _assert_release(load_dataset(out, "train"), release)
    _assert_same(load_dataset(out, "test"), load_dataset(src, "test"))
    for name in names[:2]:  # the test split is copied byte for byte
        assert (out / (name + suffix)).read_bytes() == (src / (name + suffix)).read_bytes()
    assert tree_hashes(src) == before
    if gz:  # a real gzip stream, deterministic: the same release gives the same bytes
        again = write_release(release, src, tmp_path / "again")
        assert again["files"] == result["files"]


def test_fashion_mnist_alias_release(tmp_path, fmnist_train):
    """The installed 60,000-image training set, released with a handful of images changed."""
    assert Path(FASHION_MNIST_DIR).is_dir(), "apt-get install dataset-fashion-mnist"
    images = fmnist_train.images.copy()  # the fixture is shared: never change it
    labels = fmnist_train.labels.copy()
    images[:20, 10:14, 10:14] = 191 / 255
    labels[:20] = (labels[:20] + 4) % 10
    release = LabelledImages(images, labels, list(FASHION_MNIST_CLASSES))
    out = tmp_path / "fmnist-release"
    start = time.perf_counter()
    result = write_release(release, "fashion-mnist", out)
    elapsed = time.perf_counter() - start
    assert result["layout"] == "fashion-mnist"
    assert elapsed < 10, f"writing the 60,000-image release took {elapsed:.1f} s"
    _assert_files(result, out)
    back = load_dataset(out, "train")
    assert np.array_equal(back.images, images)  # already on the 8-bit grid (and 20x faster
    assert np.array_equal(back.labels, labels)  # than np.testing on 47 million values)
    assert back.classes == FASHION_MNIST_CLASSES
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert tree_hashes(out / name)[name] == tree_hashes(Path(FASHION_MNIST_DIR) / name)[name]


@pytest.mark.parametrize("given", ["parent", "folder"])
def test_cifar10_release(tmp_path, fm_small, given):
    folder = _write_cifar10(tmp_path / "src" / "cifar-10-batches-py", fm_small)
    src = folder.parent if given == "parent" else folder
    before = tree_hashes(src)
    source = load_dataset(src, "train")
    assert source.images.shape == (120, 32, 32, 3)
    release = _modify(source)
    out = tmp_path / "release"
    result = write_release(release, src, out)

    assert result["layout"] == "cifar"
    written = out / "cifar-10-batches-py" if given == "parent" else out
    assert sorted(p.name for p in written.iterdir()) == [
        "batches.meta",
        "data_batch_1",
        "data_batch_2",
        "readme.html",
        "test_batch",
    ]
    _assert_files(result, out)
    _assert_release(load_dataset(out, "train"), release)
    _assert_same(load_dataset(out, "test"), load_dataset(src, "test"))
    for name in ("test_batch", "batches.meta", "readme.html"):
        assert (written / name).read_bytes() == (folder / name).read_bytes()
    assert tree_hashes(src) == before

    # Each batch keeps its size and bookkeeping, and reads like an original CIFAR pickle:
    # bytes keys for encoding="bytes" readers, str keys for encoding="latin1" ones.
    for k, name in enumerate(("data_batch_1", "data_batch_2")):
        with open(written / name, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        with open(folder / name, "rb") as fh:
            original = pickle.load(fh, encoding="bytes")
        assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
        assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (60, 3072)
        assert batch[b"filenames"] == original[b"filenames"]
        assert batch[b"batch_label"] == original[b"batch_label"]
        assert batch[b"labels"] == [int(v) for v in release.labels[60 * k : 60 * (k + 1)]]
        with open(written / name, "rb") as fh:
            latin = pickle.load(fh, encoding="latin1")
        assert isinstance(latin["filenames"][0], str)
        np.testing.assert_array_equal(latin["data"], batch[b"data"])


def test_cifar100_release(tmp_path, fm_small):
    src = _write_cifar100(tmp_path / "cifar-100-python", fm_small)
    before = tree_hashes(src)
    source = load_dataset(src, "train")
    assert len(source.classes) == 100
    release = _modify(source, seed=3)
    assert not np.array_equal(release.labels, source.labels)
    out = tmp_path / "release"
    result = write_release(release, src, out)
    assert sorted(p.name for p in out.iterdir()) == ["meta", "test", "train"]
    _assert_files(result, out)
    _assert_release(load_dataset(out, "train"), release)
    _assert_same(load_dataset(out, "test"), load_dataset(src, "test"))
    with open(out / "train", "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    with open(src / "train", "rb") as fh:
        original = pickle.load(fh, encoding="bytes")
    assert batch[b"coarse_labels"] == original[b"coarse_labels"]
    assert batch[b"fine_labels"] == release.labels.tolist()
    assert tree_hashes(src) == before


def test_npz_release(tmp_path, fm_small):
    train, _ = fm_small
    src = tmp_path / "fm.npz"
    np.savez(src, x=_u8(train.images[..., 0]), y=train.labels, classes=FASHION_MNIST_CLASSES)
    before = tree_hashes(src)
    release = _modify(load_dataset(src))
    out = tmp_path / "release.npz"
    result = write_release(release, src, out)
    assert result["layout"] == "npz"
    assert result["files"] == [{"path": "release.npz", "sha256": tree_hashes(out)["release.npz"]}]
    _assert_release(load_dataset(out), release)
    with np.load(out, allow_pickle=False) as npz:
        assert npz["x"].dtype == np.uint8 and npz["x"].shape == (N_TRAIN, 28, 28, 1)
        assert npz["y"].dtype == np.int64
        assert npz["classes"].tolist() == FASHION_MNIST_CLASSES
    assert tree_hashes(src) == before
    with pytest.raises(TracemarkError, match=r"must end in \.npz"):
        write_release(release, src, tmp_path / "release-folder")


def test_folder_release_photos(tmp_path):
    src = _write_photo_folder(tmp_path / "src")
    before = tree_hashes(src)
    source = load_dataset(src)
    assert source.ids == [
        "cat/c0.png",
        "cat/c1.png",
        "cat/c2.png",
        "dog/d0.jpg",
        "dog/puppies/d1.png",
    ]
    release = _modify(source)
    release.labels = np.array([0, 1, 0, 1, 0])  # c1 becomes a dog, puppies/d1 a cat
    out = tmp_path / "release"
    result = write_release(release, src, out)

    assert result["layout"] == "folder"
    ids = ["cat/c0.png", "dog/c1.png", "cat/c2.png", "dog/d0.png", "cat/puppies/d1.png"]
    assert result["ids"] == ids
    _assert_files(result, out)
    assert sorted(result["ids"]) == sorted(tree_hashes(out))
    back = load_dataset(out)
    assert back.classes == ["cat", "dog"] and back.images.shape == (5, 24, 24, 3)
    order = [back.ids.index(i) for i in ids]  # the loader sorts by class and path
    _assert_release(back.subset(order), release)
    for rel in ids:
        with Image.open(out / rel) as im:
            assert im.format == "PNG" and im.mode == "RGB"
    assert tree_hashes(src) == before


def test_folder_release_grey_without_ids(tmp_path, fm_small):
    src = _write_grey_folder(tmp_path / "src", fm_small)
    source = load_dataset(src)
    assert source.images.shape[-1] == 1
    release = _modify(source)
    release.ids = None
    out = tmp_path / "release"
    result = write_release(release, src, out)
    expected = [f"{release.classes[y]}/{i:06d}.png" for i, y in enumerate(release.labels)]
    assert result["ids"] == expected
    back = load_dataset(out)
    _assert_release(back.subset([back.ids.index(i) for i in expected]), release)
    with Image.open(out / expected[0]) as im:
        assert im.mode == "L"
    # every source class stays a class, even one that loses all its images
    release.labels = np.zeros_like(release.labels)
    write_release(release, src, tmp_path / "one-class")
    assert load_dataset(tmp_path / "one-class").classes == source.classes


def test_folder_release_refuses_colliding_ids(tmp_path):
    src = _write_photo_folder(tmp_path / "src")
    release = load_dataset(src)
    release.ids = ["cat/a.png", "cat/a.jpg", "cat/b.png", "dog/d0.jpg", "dog/x.png"]
    with pytest.raises(TracemarkError, match=r"cat/a\.png and cat/a\.jpg.*cat/a\.png"):
        write_release(release, src, tmp_path / "out")
    release.ids = ["cat/c0.png", "cat/c1.png", "cat/c2.png", "dog/d0.jpg", "dog/c0.png"]
    release.labels = np.array([0, 0, 0, 1, 0])  # dog/c0 relabelled onto cat/c0
    with pytest.raises(TracemarkError, match=r"both be written as cat/c0\.png"):
        write_release(release, src, tmp_path / "out")
    release.ids = ["cat/c0.png", "cat/c1.png", "../c2.png", "dog/d0.jpg", "dog/x.png"]
    with pytest.raises(TracemarkError, match="not a plain relative path"):
        write_release(release, src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# --------------------------------------------------------------------------- safety


def test_existing_out_needs_force(tmp_path, fm_small):
    src = _write_idx_folder(tmp_path / "src", fm_small, gz=True)
    source = load_dataset(src, "train")
    out = tmp_path / "release"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier release\n")
    with pytest.raises(TracemarkError, match=r"already exists.*force=True"):
        write_release(_modify(source), src, out)
    assert (out / "keep.txt").read_text() == "an earlier release\n"

    release = _modify(source, seed=1)
    write_release(release, src, out, force=True)
    assert not (out / "keep.txt").exists()
    _assert_release(load_dataset(out, "train"), release)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release", "src"]

    npz_src = tmp_path / "src.npz"
    np.savez(npz_src, x=_u8(source.images), y=source.labels)
    npz_out = tmp_path / "release.npz"
    npz_out.write_bytes(b"old")
    with pytest.raises(TracemarkError, match="already exists"):
        write_release(load_dataset(npz_src), npz_src, npz_out)
    assert npz_out.read_bytes() == b"old"
    write_release(load_dataset(npz_src), npz_src, npz_out, force=True)
    _assert_same(load_dataset(npz_out), load_dataset(npz_src))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "release",
        "release.npz",
        "src",
        "src.npz",
    ]


def test_mismatches_are_refused(tmp_path, fm_small):
    src = _write_idx_folder(tmp_path / "src", fm_small, gz=False)
    source = load_dataset(src, "train")
    out = tmp_path / "out"
    with pytest.raises(TracemarkError, match=r"199 images .* has 200"):
        write_release(source.subset(slice(0, 199)), src, out)
    cropped = LabelledImages(source.images[:, :27], source.labels, source.classes)
    with pytest.raises(TracemarkError, match=r"\(27, 28, 1\) but .* \(28, 28, 1\)"):
        write_release(cropped, src, out)
    rgb = LabelledImages(np.repeat(source.images, 3, axis=-1), source.labels, source.classes)
    with pytest.raises(TracemarkError, match="greyscale"):
        write_release(rgb, src, out)
    fewer = LabelledImages(source.images, source.labels % 9, source.classes[:9])
    with pytest.raises(TracemarkError, match=r"9 classes .* differ from the 10"):
        write_release(fewer, src, out)
    bad_labels = LabelledImages(source.images, source.labels + 10, source.classes)
    with pytest.raises(TracemarkError, match="every label must index"):
        write_release(bad_labels, src, out)
    nan = source.images.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(TracemarkError, match="NaN"):
        write_release(LabelledImages(nan, source.labels, source.classes), src, out)
    with pytest.raises(TracemarkError, match="inside the source"):
        write_release(source, src, src / "release")
    with pytest.raises(TracemarkError, match="is the source"):
        write_release(source, src, src, force=True)
    with pytest.raises(TracemarkError, match="installed dataset"):
        write_release(source, src, "fashion-mnist")

    c10 = _write_cifar10(tmp_path / "c10", fm_small)
    c10_train = load_dataset(c10, "train")
    with pytest.raises(TracemarkError, match=r"119 images .* has 120"):
        write_release(c10_train.subset(slice(1, None)), c10, out)
    grey = LabelledImages(c10_train.images[..., :1], c10_train.labels, c10_train.classes)
    with pytest.raises(TracemarkError, match=r"\(32, 32, 1\) but .* \(32, 32, 3\)"):
        write_release(grey, c10, out)
    folder = _write_photo_folder(tmp_path / "photos")
    photos = load_dataset(folder)
    renamed = LabelledImages(photos.images, photos.labels, ["cat", "puppy"], photos.ids)
    with pytest.raises(TracemarkError, match="keep the source's class list"):
        write_release(renamed, folder, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c10", "photos", "src"]


@pytest.mark.parametrize("layout", ["idx", "cifar", "folder"])
def test_failure_midway_leaves_nothing(tmp_path, fm_small, monkeypatch, layout):
    if layout == "idx":
        src = _write_idx_folder(tmp_path / "src", fm_small, gz=True)
    elif layout == "cifar":
        src = _write_cifar10(tmp_path / "src", fm_small)
    else:
        src = _write_grey_folder(tmp_path / "src", fm_small)
    release = _modify(load_dataset(src, "train"))
    out = tmp_path / "release"
    calls = []
    real_write = dataset_writers._write_file

    def failing_write(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(dataset_writers, "_write_file", failing_write)
    with pytest.raises(TracemarkError, match="No space left on device"):
        write_release(release, src, out)
    # one file had been written, inside a hidden staging folder beside the release
    assert len(calls) == 2 and calls[0].relative_to(tmp_path).parts[0].startswith(".release.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]

    # A forced replacement that fails keeps the previous release intact.
    monkeypatch.setattr(dataset_writers, "_write_file", real_write)
    write_release(release, src, out)
    previous = tree_hashes(out)
    calls.clear()

    def interrupted(path: Path, data: bytes) -> None:
        calls.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset_writers, "_write_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_release(_modify(release, seed=5), src, out, force=True)
    assert tree_hashes(out) == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release", "src"]
