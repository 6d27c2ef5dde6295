"""Write a modified copy of a dataset's training split in the layout it came in.

A watermarked release is only useful if whoever downloads it can load it exactly as
they loaded the original: same file names, same format, the test split untouched. So
:func:`write_release` mirrors the source's layout (Fashion-MNIST IDX files, CIFAR
pickles, an .npz, class folders of images) and replaces only the training images and
labels, quantised to the 8 bits every one of these formats stores.

A release is built in a hidden temporary sibling of ``out`` and renamed into place at
the end, so an interrupted run never leaves a half-written release behind, and an
existing release is only replaced on request. The source is only ever read.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import re
import shutil
import struct
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .datasets import (  # noqa: F401  (Layout and detect_layout are re-exported)
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    LabelledImages,
    Layout,
    cifar_kind,
    cifar_root,
    decode_names,
    detect_layout,
    fashion_files,
    get_field,
    has_idx,
    load_npz,
    unpickle,
)
from .errors import TracemarkError
from .fsutil import check_not_overlapping, sha256_file
from .images import (
    detect_mode,
    encode_image,
    list_images,
    read_image,
    sha256_bytes,
    to_uint8,
)

_TEST_IDX = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_GZIP_LEVEL = 1  # on Fashion-MNIST: 4% larger than level 9, at 1/20 of its time


# --------------------------------------------------------------------------- detection


def _source_root(src: str | Path, layout: Layout) -> Path:
    """The path the loader actually reads for ``src`` (the alias resolves to a folder)."""
    if layout == "fashion-mnist":
        return Path(os.environ.get("TRACEMARK_FASHION_MNIST") or FASHION_MNIST_DIR)
    return Path(src)


# --------------------------------------------------------------------------- checks


@dataclass
class _Expected:
    """What the source's training split holds: count, image shape and class names."""

    n: int
    shape: tuple[int, ...]  # (H, W, C)
    classes: list[str]


def _check_data(data: LabelledImages) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels as arrays, after checking they are a coherent labelled set."""
    images = np.asarray(data.images)
    labels = np.asarray(data.labels)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise TracemarkError(
            f"release images have shape {images.shape}; expected (N, H, W, C) with C = 1 or 3, "
            "as tracemark.datasets.load_dataset returns them"
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise TracemarkError(
            f"release images have dtype {images.dtype}; give floats in [0, 1] (divide uint8 "
            "pixels by 255)"
        )
    if not np.isfinite(images).all():
        raise TracemarkError(
            "release images contain NaN or infinite values; fix the marking step that made them"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise TracemarkError(
            f"release labels have shape {labels.shape} but there are {images.shape[0]} images; "
            "give one integer label per image"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise TracemarkError(f"release labels have dtype {labels.dtype}; give integer labels")
    n_classes = len(data.classes)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise TracemarkError(
            f"release labels range {labels.min()}..{labels.max()} but there are {n_classes} "
            "classes; every label must index data.classes"
        )
    if data.ids is not None and len(data.ids) != images.shape[0]:
        raise TracemarkError(
            f"release has {len(data.ids)} ids for {images.shape[0]} images; give one id per "
            "image or none"
        )
    return images, labels.astype(np.int64)


def _check_matches(images: np.ndarray, classes: list[str], exp: _Expected, src: Path) -> None:
    """Refuse a release that is not a same-sized copy of the source's training split."""
    n, shape = images.shape[0], tuple(int(s) for s in images.shape[1:])
    if n != exp.n:
        raise TracemarkError(
            f"the release has {n} images but the training split of {src} has {exp.n}; "
            "a release replaces the whole training split, so give all of its images, in order"
        )
    if shape != exp.shape:
        raise TracemarkError(
            f"release images are (H, W, C) = {shape} but {src} holds {exp.shape}; keep the "
            "source's image size and channels"
        )
    if list(classes) != exp.classes:
        raise TracemarkError(
            f"the release's {len(classes)} classes {_short(classes)} differ from the "
            f"{len(exp.classes)} of {src} {_short(exp.classes)}; keep the source's class list "
            "(labels may change, the classes may not)"
        )


def _short(names: list[str]) -> str:
    shown = ", ".join(repr(str(c)) for c in names[:4])
    return f"[{shown}{', ...' if len(names) > 4 else ''}]"


# --------------------------------------------------------------------------- file staging


def _write_file(path: Path, data: bytes) -> None:
    """Write a new file and fsync it (the release is renamed into place only afterwards)."""
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _copy_file(src: Path, dst: Path) -> str:
    """Copy ``src`` byte for byte to a new ``dst``; returns the SHA-256 of what was copied."""
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        for chunk in iter(lambda: fin.read(1 << 20), b""):
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()


class _Files:
    """Writes files under a staging folder and records each one's path and hash."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries: list[dict[str, str]] = []

    def write(self, rel: str, data: bytes) -> None:
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_file(target, data)
        self.entries.append({"path": rel, "sha256": sha256_bytes(data)})

    def copy(self, rel: str, src: Path) -> None:
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        self.entries.append({"path": rel, "sha256": _copy_file(src, target)})


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _commit(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` only goes with ``force``."""
    if out.exists() or out.is_symlink():
        if not force:
            raise TracemarkError(f"{out} appeared while writing; pass force=True to replace it")
        old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)  # put the previous release back
            raise
        _remove(old)
    else:
        os.replace(tmp, out)
    _fsync_dir(out.parent)


@contextlib.contextmanager
def _staged(out: Path, *, directory: bool, force: bool) -> Iterator[Path]:
    """A temporary sibling of ``out`` to build the release in, renamed into place on success."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a release is meant to be shared
    else:
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o644)
    try:
        yield tmp
        _commit(tmp, out, force)
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(tmp)
        raise


# --------------------------------------------------------------------------- IDX


def _idx_header(path: Path, magic: int, ndim: int) -> list[int]:
    """The dimensions in an IDX file's header, read without decompressing the payload."""
    size = 4 + 4 * ndim
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                head = fh.read(size)
        else:
            with open(path, "rb") as fh:
                head = fh.read(size)
    except (OSError, EOFError) as exc:
        raise TracemarkError(f"cannot read {path}: {exc}; reinstall or re-download it") from None
    found = int.from_bytes(head[:4], "big") if len(head) >= 4 else None
    if found != magic or len(head) < size:
        raise TracemarkError(
            f"{path} is not an IDX file with magic number {magic} (found {found}); check the "
            "file names or re-download it"
        )
    return [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]


def _idx_bytes(magic: int, array: np.ndarray) -> bytes:
    header = b"".join(int(v).to_bytes(4, "big") for v in (magic, *array.shape))
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _release_idx(
    images: np.ndarray, labels: np.ndarray, classes: list[str], root: Path, stage: Path
) -> list[dict[str, str]]:
    images_path, labels_path = fashion_files(root, "train")
    n, h, w = _idx_header(images_path, IDX_IMAGES_MAGIC, 3)
    (n_labels,) = _idx_header(labels_path, IDX_LABELS_MAGIC, 1)
    if n_labels != n:
        raise TracemarkError(
            f"{images_path} holds {n} images but {labels_path} holds {n_labels} labels; the "
            "source files do not belong together, re-download them"
        )
    _check_matches(images, classes, _Expected(n, (h, w, 1), list(FASHION_MNIST_CLASSES)), root)
    files = _Files(stage)
    for src_file, magic, array in (
        (images_path, IDX_IMAGES_MAGIC, to_uint8(images[..., 0])),
        (labels_path, IDX_LABELS_MAGIC, labels.astype(np.uint8)),
    ):
        data = _idx_bytes(magic, array)
        if src_file.suffix == ".gz":
            data = gzip.compress(data, compresslevel=_GZIP_LEVEL, mtime=0)
        files.write(src_file.name, data)
    for name in _TEST_IDX:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                files.copy(candidate.name, candidate)
    return files.entries


# --------------------------------------------------------------------------- CIFAR


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets one type be overridden
    """Writes ``bytes`` as Python 2 strings, as the official CIFAR pickles hold them.

    Python 3 readers then see exactly what the originals give: bytes keys with
    ``encoding="bytes"`` (tracemark, Keras) and str keys with ``encoding="latin1"``
    (torchvision), and the pixel payload is stored once instead of as a latin-1 text.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        elif n < 2**31:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        else:
            raise TracemarkError("a CIFAR batch over 2 GiB cannot be written; use fewer images")
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _pickle_batch(batch: dict) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(batch)
    return buf.getvalue()


def _key(d: dict, name: str) -> Any:
    """The key ``name`` has in a batch (bytes in the official files), as the loader finds it."""
    return name.encode() if name.encode() in d else name


def _release_cifar(
    images: np.ndarray, labels: np.ndarray, classes: list[str], given: Path, stage: Path
) -> list[dict[str, str]]:
    found = cifar_root(given)
    if found is None:  # detect_layout said CIFAR, so only a concurrent change gets here
        raise TracemarkError(f"{given} is no longer a CIFAR folder; check the path")
    if cifar_kind(found) == "cifar10":
        train = sorted(
            (p for p in found.iterdir() if re.fullmatch(r"data_batch_\d+", p.name)),
            key=lambda p: int(p.name.rsplit("_", 1)[1]),
        )
        label_key, meta_file, names_key, n_classes = "labels", "batches.meta", "label_names", 10
    else:
        train = [found / "train"] if (found / "train").is_file() else []
        label_key, meta_file, names_key, n_classes = "fine_labels", "meta", "fine_label_names", 100
    if not train:
        raise TracemarkError(
            f"{found} has no training batches (data_batch_1.. or train) to replace; give a "
            "complete CIFAR folder"
        )
    batches = [unpickle(p) for p in train]
    counts = [
        int(np.shape(get_field(b, "data", p))[0]) for b, p in zip(batches, train, strict=True)
    ]
    meta = found / meta_file
    if meta.is_file():
        src_classes = decode_names(get_field(unpickle(meta), names_key, meta), meta)
    else:
        src_classes = [str(i) for i in range(n_classes)]
    _check_matches(images, classes, _Expected(sum(counts), (32, 32, 3), src_classes), given)

    rel = found.relative_to(given).as_posix()
    prefix = "" if rel == "." else f"{rel}/"
    files = _Files(stage)
    data = to_uint8(images).transpose(0, 3, 1, 2).reshape(len(images), 3 * 32 * 32)
    start = 0
    for path, batch, count in zip(train, batches, counts, strict=True):
        stop = start + count
        new = dict(batch)  # batch_label, filenames, coarse_labels... kept as they were
        new[_key(batch, "data")] = np.ascontiguousarray(data[start:stop])
        new[_key(batch, label_key)] = [int(v) for v in labels[start:stop]]
        files.write(prefix + path.name, _pickle_batch(new))
        start = stop
    names = {p.name for p in train}
    for p in sorted(found.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name not in names:
            files.copy(prefix + p.name, p)  # test batch, meta, readme: unchanged
    return files.entries


# --------------------------------------------------------------------------- npz


def _release_npz(
    images: np.ndarray, labels: np.ndarray, classes: list[str], src: Path, stage: Path, name: str
) -> list[dict[str, str]]:
    source = load_npz(src)  # no cheap header: (N, H, W) and (N, C, H, W) are converted
    _check_matches(
        images, classes, _Expected(len(source), source.images.shape[1:], source.classes), src
    )
    del source
    with open(stage, "wb") as fh:
        np.savez_compressed(
            fh, x=to_uint8(images), y=labels.astype(np.int64), classes=np.asarray(classes, str)
        )
        fh.flush()
        os.fsync(fh.fileno())
    return [{"path": name, "sha256": sha256_file(stage)}]


# --------------------------------------------------------------------------- class folders


def _folder_expected(root: Path) -> _Expected:
    """Count, shape and classes of a class-folder tree, reading headers and one image."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    rels = [f"{c}/{r}" for c in classes for r in list_images(root / c)]
    if not rels:
        raise TracemarkError(f"the class folders in {root} contain no images; check the source")
    mode = detect_mode(root / r for r in rels)
    first = read_image(root / rels[0], mode=mode)
    return _Expected(len(rels), first.shape, classes)


def _folder_outputs(labels: np.ndarray, classes: list[str], ids: list[str] | None) -> list[str]:
    """Where each image goes: its id's path under its (possibly new) class, as .png.

    The class folder *is* the label, so a relabelled image moves to its new class's
    folder; the rest of its path is kept.
    """
    outputs: list[str] = []
    seen: dict[str, str] = {}
    for i, label in enumerate(labels):
        cls = classes[int(label)]
        if ids is None:
            rel, out = f"#{i}", f"{cls}/{i:06d}.png"
        else:
            rel = str(ids[i])
            p = PurePosixPath(rel)
            if (
                p.is_absolute()
                or not p.name
                or any(part in ("", ".", "..") or part.startswith(".") for part in p.parts)
            ):
                raise TracemarkError(
                    f"image id {rel!r} is not a plain relative path (absolute, '..' or hidden "
                    "parts); give ids like 'cat/img001.jpg'"
                )
            parts = p.parts[1:] if len(p.parts) > 1 and p.parts[0] in classes else p.parts
            out = PurePosixPath(cls, *parts).with_suffix(".png").as_posix()
        if out in seen:
            raise TracemarkError(
                f"images {seen[out]} and {rel} would both be written as {out}; give them "
                "distinct ids (names that differ only in their suffix collide)"
            )
        seen[out] = rel
        outputs.append(out)
    return outputs


def _release_folder(
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    ids: list[str] | None,
    root: Path,
    stage: Path,
) -> tuple[list[dict[str, str]], list[str]]:
    _check_matches(images, classes, _folder_expected(root), root)
    outputs = _folder_outputs(labels, classes, ids)
    files = _Files(stage)
    for cls in classes:  # an empty class folder still counts as a class
        (stage / cls).mkdir(parents=True, exist_ok=True)
    for x, out in zip(images, outputs, strict=True):
        files.write(out, encode_image(x, fmt="png"))  # clips and rounds like to_uint8
    return files.entries, outputs


# --------------------------------------------------------------------------- entry point


def write_release(
    data: LabelledImages, src: str | Path, out: str | Path, *, force: bool = False
) -> dict[str, Any]:
    """Write ``data`` as a new training split of ``src``, in ``src``'s layout, at ``out``.

    ``data`` must have the source training split's image count, image shape and classes
    (labels may differ). Pixels are stored as ``round(clip(x, 0, 1) * 255)``; the test
    split, where the layout has one, is copied unchanged, so ``load_dataset(out, split)``
    gives the release's data and the source's test data. For class folders the loader
    sorts by class and path, so match images by the returned ``ids``. An existing
    ``out`` is replaced only with ``force``; the source is never modified.

    Returns ``{"layout", "out", "files": [{"path", "sha256"}, ...]}`` (paths relative to
    ``out``, or the file name for an .npz), plus ``"ids"`` for class folders: each
    image's path in the release, in ``data``'s order.
    """
    layout = detect_layout(src)
    root = _source_root(src, layout)
    out = Path(out)
    images, labels = _check_data(data)
    classes = [str(c) for c in data.classes]
    if str(out) == "fashion-mnist":
        raise TracemarkError(
            "'fashion-mnist' names the installed dataset when loading; write the release to "
            "another path, e.g. ./fashion-mnist-release"
        )
    if layout == "npz" and out.suffix.lower() != ".npz":
        raise TracemarkError(f"{out} must end in .npz: the source {src} is an .npz file")
    if layout != "npz" and out.suffix.lower() == ".npz":
        raise TracemarkError(f"{out} ends in .npz but the source {src} is a folder; give a folder")
    check_not_overlapping(root, out)
    if (out.exists() or out.is_symlink()) and not force:
        raise TracemarkError(
            f"{out} already exists; choose a new path or pass force=True to replace it"
        )
    result: dict[str, Any] = {"layout": layout, "out": str(out)}
    try:
        with _staged(out, directory=layout != "npz", force=force) as stage:
            if layout in ("fashion-mnist", "idx"):
                if images.shape[-1] != 1:
                    raise TracemarkError(
                        f"{src} stores greyscale images but the release has {images.shape[-1]} "
                        "channels; convert the images to one channel"
                    )
                entries = _release_idx(images, labels, classes, root, stage)
            elif layout == "cifar":
                entries = _release_cifar(images, labels, classes, root, stage)
            elif layout == "npz":
                entries = _release_npz(images, labels, classes, root, stage, out.name)
            else:
                entries, result["ids"] = _release_folder(
                    images, labels, classes, data.ids, root, stage
                )
    except OSError as exc:
        raise TracemarkError(
            f"cannot write the release {out}: {exc}; check the folder's permissions and free "
            "space (nothing was left behind)"
        ) from None
    result["files"] = sorted(entries, key=lambda e: e["path"])
    return result
