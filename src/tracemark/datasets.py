"""Labelled training data for experiments: Fashion-MNIST, CIFAR, image folders, .npz.

Everything is returned as :class:`LabelledImages` with float32 (N, H, W, C) images in
[0, 1], so training and auditing code never needs to know where data came from. CIFAR's
pickle files are read with a restricted unpickler: a downloaded "dataset" must not be
able to run code.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import TracemarkError
from .images import IMAGE_SUFFIXES, ImageSet, detect_mode, list_images, read_folder, read_image
from .limits import MAX_CLASSES

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
_IDX_PREFIX = {"train": "train", "test": "t10k"}


@dataclass
class LabelledImages:
    """Images (N, H, W, C) float32 in [0, 1], integer labels (N,), class names, optional ids."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    ids: list[str] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: Any) -> LabelledImages:
        """The images at ``idx`` (indices, boolean mask or slice), as a new set."""
        if not isinstance(idx, slice):
            idx = np.asarray(idx)
            if idx.ndim == 0:
                idx = idx[None]
        ids = None
        if self.ids is not None:
            ids = [str(s) for s in np.asarray(self.ids, dtype=object)[idx]]
        return LabelledImages(self.images[idx], self.labels[idx], list(self.classes), ids)


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise TracemarkError(f"split must be 'train' or 'test', got {split!r}")


# --------------------------------------------------------------------------- Fashion-MNIST


def _idx_file(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def fashion_files(root: Path, split: str) -> tuple[Path, Path]:
    prefix = _IDX_PREFIX[split]
    images = _idx_file(root, f"{prefix}-images-idx3-ubyte")
    labels = _idx_file(root, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        missing = f"{prefix}-images-idx3-ubyte" if images is None else f"{prefix}-labels-idx1-ubyte"
        raise TracemarkError(
            f"Fashion-MNIST not found: {root / missing}(.gz) does not exist. Install it with "
            "`apt-get install dataset-fashion-mnist`, or pass the directory that holds the "
            "IDX files (or set TRACEMARK_FASHION_MNIST)"
        )
    return images, labels


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise TracemarkError(
            f"cannot read {path}: {exc}; the file is damaged, reinstall or re-download it"
        ) from None


def _parse_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (big-endian header, uint8 payload) into an array."""
    data = _read_bytes(path)
    ndim = 3 if magic == IDX_IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        raise TracemarkError(
            f"{path} has magic number {found}, expected {magic}; it is not the right IDX "
            "file (images 2051, labels 2049): check the file names or re-download it"
        )
    if len(data) < header:
        raise TracemarkError(f"{path} is truncated (header cut short); re-download it")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise TracemarkError(
            f"{path} declares {dims} ({expected} bytes) but holds {len(data) - header} bytes "
            "of data; the file is truncated or damaged, re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


@functools.lru_cache(maxsize=4)
def _fashion_raw(
    images_path: str, labels_path: str, _stamp: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images and labels (read-only arrays; callers get converted copies)."""
    x = _parse_idx(Path(images_path), IDX_IMAGES_MAGIC)
    y = _parse_idx(Path(labels_path), IDX_LABELS_MAGIC)
    if x.shape[0] != y.shape[0]:
        raise TracemarkError(
            f"{images_path} holds {x.shape[0]} images but {labels_path} holds {y.shape[0]} "
            "labels; the files do not belong together, re-download them"
        )
    if y.size and int(y.max()) >= len(FASHION_MNIST_CLASSES):
        raise TracemarkError(
            f"{labels_path} has label {int(y.max())}; Fashion-MNIST labels are 0-9. "
            "Is this the right file?"
        )
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_fashion_mnist(
    root: Path | str | None = None, split: Literal["train", "test"] = "train"
) -> LabelledImages:
    """Fashion-MNIST as (N, 28, 28, 1) float32; IDX files may be gzipped or plain.

    ``root`` defaults to $TRACEMARK_FASHION_MNIST, then the Debian package's directory.
    """
    _check_split(split)
    if root is None:
        root = os.environ.get("TRACEMARK_FASHION_MNIST") or FASHION_MNIST_DIR
    root = Path(root)
    if not root.is_dir():
        raise TracemarkError(
            f"Fashion-MNIST directory {root} does not exist. Install it with "
            "`apt-get install dataset-fashion-mnist`, or pass the directory that holds the "
            "IDX files (or set TRACEMARK_FASHION_MNIST)"
        )
    images_path, labels_path = (p.resolve() for p in fashion_files(root, split))
    stamp = tuple(
        v for p in (images_path, labels_path) for v in (p.stat().st_mtime_ns, p.stat().st_size)
    )
    raw_x, raw_y = _fashion_raw(str(images_path), str(labels_path), stamp)
    x = raw_x.astype(np.float32)  # a fresh copy: the cache stays untouched
    x /= 255
    return LabelledImages(
        x[..., None], raw_y.astype(np.int64), list(FASHION_MNIST_CLASSES), ids=None
    )


def has_idx(root: Path) -> bool:
    return any(_idx_file(root, f"{p}-images-idx3-ubyte") is not None for p in _IDX_PREFIX.values())


# --------------------------------------------------------------------------- CIFAR


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


def _numpy_frombuffer() -> Any:
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]
    return _frombuffer


_PICKLE_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    # Python 3 writes bytes as _codecs.encode(str, "latin1") at pickle protocol < 3.
    ("_codecs", "encode"): lambda: codecs.encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays; anything else is refused."""

    def __init__(self, fh: Any, path: Path) -> None:
        super().__init__(fh, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        factory = _PICKLE_ALLOWED.get((module, name))
        if factory is None:
            raise TracemarkError(
                f"{self._path} asks to load {module}.{name}, which a CIFAR batch never needs; "
                "refusing to unpickle it (pickles can run code). Use the original CIFAR files "
                "from https://www.cs.toronto.edu/~kriz/cifar.html"
            )
        return factory()


def unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _RestrictedUnpickler(fh, path).load()
    except TracemarkError:
        raise
    except FileNotFoundError:
        raise TracemarkError(f"{path} does not exist; is this a complete CIFAR folder?") from None
    except Exception as exc:  # a damaged pickle can raise almost anything
        raise TracemarkError(
            f"cannot read {path} as a CIFAR batch ({type(exc).__name__}: {exc}); "
            "re-download the python version of CIFAR"
        ) from None
    if not isinstance(obj, dict):
        raise TracemarkError(f"{path} does not hold a CIFAR batch dictionary; re-download it")
    return obj


def get_field(d: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise TracemarkError(f"{path} has no {key!r} entry; it is not a CIFAR batch file")


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = unpickle(path)
    data = get_field(d, "data", path)
    labels = get_field(d, label_key, path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise TracemarkError(f"{path}: 'data' is not a uint8 (N, 3072) array; re-download it")
    if data.shape[1] != 3 * 32 * 32:
        raise TracemarkError(
            f"{path}: 'data' has {data.shape[1]} values per image, CIFAR has 3072 (3x32x32)"
        )
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise TracemarkError(f"{path}: {label_key!r} is not a list of integers") from None
    if y.shape[0] != data.shape[0]:
        raise TracemarkError(
            f"{path} holds {data.shape[0]} images but {y.shape[0]} labels; re-download it"
        )
    return data, y


def decode_names(names: Any, path: Path) -> list[str]:
    if not isinstance(names, list | tuple):
        raise TracemarkError(f"{path}: class names are not a list; re-download it")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def cifar_kind(root: Path) -> Literal["cifar10", "cifar100"] | None:
    if (root / "data_batch_1").is_file() or (root / "test_batch").is_file():
        return "cifar10"
    if (root / "train").is_file() or (root / "test").is_file():
        return "cifar100"
    return None


def cifar_root(root: Path) -> Path | None:
    """``root`` itself, or the folder the official archives extract to inside it."""
    for candidate in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
        if candidate.is_dir() and cifar_kind(candidate) is not None:
            return candidate
    return None


def load_cifar(root: Path | str, split: Literal["train", "test"] = "train") -> LabelledImages:
    """CIFAR-10 or CIFAR-100 (python pickle version, auto-detected) as (N, 32, 32, 3)."""
    _check_split(split)
    given = Path(root)
    found = cifar_root(given) if given.is_dir() else None
    if found is None:
        raise TracemarkError(
            f"{given} is not a CIFAR folder: expected data_batch_1..5 and test_batch (CIFAR-10) "
            "or train and test (CIFAR-100), as extracted from the python version archives"
        )
    kind = cifar_kind(found)
    if kind == "cifar10":
        if split == "train":
            files = sorted(
                (p for p in found.iterdir() if re.fullmatch(r"data_batch_\d+", p.name)),
                key=lambda p: int(p.name.rsplit("_", 1)[1]),
            )
        else:
            files = [found / "test_batch"]
        label_key, meta_file, names_key, n_classes = "labels", "batches.meta", "label_names", 10
    else:
        files = [found / split]
        label_key, meta_file, names_key, n_classes = "fine_labels", "meta", "fine_label_names", 100
    if not files or not all(f.is_file() for f in files):
        raise TracemarkError(
            f"{found} has no {split} batches ({'data_batch_1..5' if kind == 'cifar10' else split}"
            f" expected); is the folder complete?"
        )
    parts = [_cifar_batch(f, label_key) for f in files]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    meta_path = found / meta_file
    if meta_path.is_file():
        classes = decode_names(get_field(unpickle(meta_path), names_key, meta_path), meta_path)
    else:
        classes = [str(i) for i in range(n_classes)]
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise TracemarkError(
            f"{found}: labels range {labels.min()}..{labels.max()} but there are "
            f"{len(classes)} classes; the files do not belong together"
        )
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32)
    x /= 255
    return LabelledImages(x, labels, classes)


# --------------------------------------------------------------------------- folders, npz


def load_image_folder(
    root: Path | str,
    mode: Literal["auto", "RGB", "L"] = "auto",
    size: tuple[int, int] | None = None,
) -> LabelledImages:
    """One subfolder per class (classes = sorted subfolder names); ``ids`` = relative paths."""
    root = Path(root)
    if not root.is_dir():
        raise TracemarkError(f"{root} is not a folder; give a folder with one subfolder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [
        p.name
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_SUFFIXES)
    ]
    if not classes or loose:
        raise TracemarkError(
            f"{root} must hold one subfolder per class with the images inside"
            + (f" (found images directly in it, e.g. {sorted(loose)[0]})" if loose else "")
            + "; move each image into the folder named after its class"
        )
    ids: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for rel in list_images(root / name):
            ids.append(f"{name}/{rel}")
            labels.append(label)
    if not ids:
        raise TracemarkError(
            f"the class folders in {root} contain no images (looked for "
            f"{', '.join(IMAGE_SUFFIXES)})"
        )
    if mode == "auto":
        mode = detect_mode(root / i for i in ids)
    images = [read_image(root / i, mode=mode, size=size) for i in ids]
    stacked = ImageSet(images, ids, root, mode).stack()
    return LabelledImages(stacked, np.asarray(labels, dtype=np.int64), classes, ids)


def _first_key(npz: Any, names: tuple[str, ...], path: Path, what: str) -> np.ndarray:
    for name in names:
        if name in npz.files:
            try:
                return npz[name]
            except ValueError as exc:
                raise TracemarkError(
                    f"{path}: cannot load {name!r} without pickle ({exc}); save plain arrays"
                ) from None
    raise TracemarkError(
        f"{path} has no {what} array (looked for {' or '.join(names)}; found "
        f"{', '.join(npz.files) or 'nothing'}); save it with np.savez(path, x=..., y=...)"
    )


def load_npz(path: Path | str) -> LabelledImages:
    """An .npz with ``x``/``images`` and ``y``/``labels`` (and optional ``classes``).

    uint8 images are scaled by 1/255, float ones must already be in [0, 1]; (N, H, W)
    gains a channel and (N, C, H, W) is transposed to channels-last.
    """
    path = Path(path)
    if not path.is_file():
        raise TracemarkError(f"{path} does not exist; give an .npz file")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise TracemarkError(f"cannot read {path} as .npz ({exc}); save it with np.savez") from None
    if not hasattr(npz, "files"):
        raise TracemarkError(f"{path} holds a single array, not an .npz archive; use np.savez")
    with npz:
        x = _first_key(npz, ("x", "images"), path, "images")
        y = _first_key(npz, ("y", "labels"), path, "labels")
        raw_classes = (
            _first_key(npz, ("classes",), path, "classes") if "classes" in npz.files else None
        )

    if x.dtype == np.uint8:
        images = x.astype(np.float32) / 255
    elif np.issubdtype(x.dtype, np.floating):
        if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise TracemarkError(
                f"{path}: float images must lie in [0, 1] (found {np.nanmin(x)}..{np.nanmax(x)}"
                "); divide 0-255 data by 255 or store it as uint8"
            )
        images = x.astype(np.float32)
    else:
        raise TracemarkError(
            f"{path}: images have dtype {x.dtype}; store uint8 (0-255) or floats in [0, 1]"
        )
    if images.ndim == 3:
        images = images[..., None]
    elif images.ndim == 4 and images.shape[-1] not in (1, 3):
        if images.shape[1] in (1, 3) and images.shape[2] > 4 and images.shape[3] > 4:
            images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        else:
            raise TracemarkError(
                f"{path}: images of shape {x.shape} have neither 1 nor 3 channels; "
                "store (N, H, W, C) or (N, C, H, W) with C = 1 or 3"
            )
    elif images.ndim != 4:
        raise TracemarkError(
            f"{path}: images have shape {x.shape}; store (N, H, W), (N, H, W, C) or (N, C, H, W)"
        )

    if y.ndim != 1 or y.shape[0] != images.shape[0]:
        raise TracemarkError(
            f"{path}: labels have shape {y.shape} but there are {images.shape[0]} images; "
            "store one integer label per image"
        )
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        raise TracemarkError(f"{path}: labels have dtype {y.dtype}; store integer class indices")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= MAX_CLASSES):
        raise TracemarkError(
            f"{path}: labels must be class indices in [0, {MAX_CLASSES}), found "
            f"{int(y.min())}..{int(y.max())}"
        )
    labels = y.astype(np.int64)
    n_classes = int(labels.max()) + 1 if labels.size else 0
    if raw_classes is not None:
        classes = [str(c) for c in np.asarray(raw_classes).reshape(-1)]
        if len(classes) < n_classes:
            raise TracemarkError(
                f"{path}: {len(classes)} class names but labels go up to {n_classes - 1}"
            )
    else:
        classes = [str(i) for i in range(n_classes)]
    return LabelledImages(images, labels, classes)


# --------------------------------------------------------------------------- dispatch


Layout = Literal["fashion-mnist", "idx", "cifar", "npz", "folder"]


def detect_layout(src: str | Path) -> Layout:
    """Which layout :func:`tracemark.datasets.load_dataset` reads ``src`` as.

    The checks run in the loader's order, so the release is written in exactly the
    layout the source is read in.
    """
    if str(src) == "fashion-mnist":
        return "fashion-mnist"
    p = Path(src)
    if not p.exists():
        raise TracemarkError(
            f"{p} does not exist; give 'fashion-mnist', a folder (Fashion-MNIST IDX files, "
            "CIFAR batches, or one subfolder of images per class) or an .npz file"
        )
    if p.is_file():
        if p.suffix.lower() == ".npz":
            return "npz"
        raise TracemarkError(f"{p} is not an .npz file; give an .npz or a dataset folder")
    if has_idx(p):
        return "idx"
    if cifar_root(p) is not None:
        return "cifar"
    if any(c.is_dir() and not c.name.startswith(".") for c in p.iterdir()):
        return "folder"
    raise TracemarkError(
        f"cannot tell what dataset {p} holds: expected Fashion-MNIST IDX files, CIFAR batches "
        "(data_batch_1 / train), or one subfolder of images per class"
    )


def load_dataset(path: Path | str, split: Literal["train", "test"] = "train") -> LabelledImages:
    """Load a dataset by what ``path`` is: "fashion-mnist", IDX/CIFAR folder, .npz, class folders.

    ``split`` applies to Fashion-MNIST and CIFAR; an .npz or image folder is one set.
    """
    _check_split(split)
    layout = detect_layout(path)
    if layout == "fashion-mnist":
        return load_fashion_mnist(split=split)
    if layout == "npz":
        return load_npz(path)
    if layout == "idx":
        return load_fashion_mnist(path, split=split)
    if layout == "cifar":
        return load_cifar(path, split=split)
    return load_image_folder(path)


def load_image_pool(
    path: Path | str,
    mode: Literal["auto", "RGB", "L"] = "auto",
    size: tuple[int, int] | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
) -> np.ndarray | LabelledImages:
    """Images of a domain: a flat folder (an array), or class subfolders (labelled images).

    Subfolders are named by class index or by one of ``class_names``. Every image is read
    in one colour mode, so the classes stack.
    """
    path = Path(path)
    if not path.is_dir():
        raise TracemarkError(f"held-out folder {path} does not exist or is not a folder")
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    subdirs = sorted(p for p in entries if p.is_dir())
    if not subdirs or any(p.is_file() for p in entries):
        return read_folder(path, mode=mode, size=size).stack()
    if mode == "auto":  # one colour mode for every class folder, so they stack
        mode = detect_mode(path / rel for rel in list_images(path))
    names = list(class_names or [])
    images, labels = [], []
    for d in subdirs:
        if d.name.isdigit():
            label = int(d.name)
        elif d.name in names:
            label = names.index(d.name)
        else:
            raise TracemarkError(
                f"held-out subfolder {d.name!r} is neither a class index nor in --class-names"
            )
        x = read_folder(d, mode=mode, size=size).stack()
        images.append(x)
        labels.extend([label] * len(x))
    return LabelledImages(np.concatenate(images), np.array(labels, dtype=np.int64), names)
