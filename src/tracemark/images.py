"""Reading, writing and bookkeeping of image files.

Every image inside tracemark is a float32 array in [0, 1] shaped (H, W, C) with C = 1
("L") or 3 ("RGB"). This module is the only place that talks to Pillow: it turns the
zoo of real-world files (palettes, alpha, 16-bit, CMYK, EXIF rotation) into that one
representation, refuses files that would exhaust memory, and writes marked copies
without ever touching the originals or leaving half-written files behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import TracemarkError
from .fsutil import (
    atomic_write_bytes,
    atomic_write_text,
    check_not_overlapping,
    check_output,
    read_json,
)
from .limits import MAX_IMAGE_SIDE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default limit

MANIFEST_FORMAT = "tracemark-manifest"
MANIFEST_VERSION = 1

_GREY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as Pillow's "L"


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (what the manifest records for each written file)."""
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- listing


def list_images(root: Path | str) -> list[str]:
    """Relative POSIX paths of all image files under ``root``, sorted, hidden ones skipped.

    Sorted relative paths give every image a stable identity across machines, which the
    marks and the manifest rely on. A name that is not valid UTF-8 is an error (it could
    not be recorded in the manifest), and so is a symbolic link that leads out of
    ``root``: tracemark reads only what is inside the folder it is given. Links inside
    it are followed.
    """
    root = Path(root)
    if not root.exists():
        raise TracemarkError(f"{root} does not exist; give the folder that holds your images")
    if not root.is_dir():
        raise TracemarkError(f"{root} is not a folder; give the folder that holds your images")
    real_root = root.resolve()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for d in dirnames:
            if not d.startswith("."):
                _check_link(here / d, root, real_root)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = here.relative_to(root)
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            path = here / name
            _check_name(path)
            _check_link(path, root, real_root)
            if not path.is_file():
                continue
            found.append((rel_dir / name).as_posix())
    return sorted(found)


def _check_name(path: Path) -> None:
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        shown = os.fsencode(path).decode("utf-8", errors="backslashreplace")
        raise TracemarkError(
            f"the file name {shown} is not valid UTF-8; rename it (tracemark records every "
            "image by its name)"
        ) from None


def _check_link(path: Path, root: Path, real_root: Path) -> None:
    """A symbolic link must stay inside ``root``; links to folders are not walked."""
    if not path.is_symlink():
        return
    target = path.resolve()
    if not (target == real_root or target.is_relative_to(real_root)):
        raise TracemarkError(
            f"{path} is a symbolic link to {target}, outside {root}; tracemark reads only "
            "images inside the folder it is given. Copy the image in, or remove the link"
        )
    if target.is_dir():
        raise TracemarkError(
            f"{path} is a symbolic link to a folder; tracemark does not follow folder links "
            "(an image would be read twice). Remove the link"
        )


# --------------------------------------------------------------------------- reading


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """Open ``path`` (header only) and refuse it if it declares more than ``max_pixels``."""
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces Pillow's warning; its hard error is still caught.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError:
        raise TracemarkError(f"{path} does not exist; check the path") from None
    except Image.DecompressionBombError as exc:
        raise TracemarkError(
            f"{path} looks like a decompression bomb ({exc}); if it is a genuine image, "
            f"downscale it first (Pillow refuses images over {2 * (Image.MAX_IMAGE_PIXELS or 0)} "
            "pixels)"
        ) from None
    except UnidentifiedImageError:
        raise TracemarkError(
            f"{path} is not an image Pillow can read; remove it from the folder or re-export "
            "it as PNG or JPEG"
        ) from None
    except _DECODE_ERRORS as exc:
        raise TracemarkError(
            f"cannot read {path}: {exc}; remove it from the folder or re-export it as PNG or JPEG"
        ) from None
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise TracemarkError(
            f"{path} declares {width}x{height} = {width * height} pixels, more than the limit "
            f"of {max_pixels}; it looks like a decompression bomb. If the image is genuine, "
            "raise the limit (max_pixels) or downscale it first"
        )
    try:
        frames = getattr(im, "n_frames", 1)
    except _DECODE_ERRORS as exc:
        im.close()
        raise TracemarkError(f"cannot read {path}: {exc}; re-export it as PNG or JPEG") from None
    if frames > 1:
        im.close()
        raise TracemarkError(
            f"{path} is animated ({frames} frames); tracemark marks still images only. "
            "Export the frame you publish as PNG and mark that"
        )
    return im


def _has_transparency(im: Image.Image) -> bool:
    return "transparency" in im.info or (
        im.mode == "P" and im.palette is not None and im.palette.mode == "RGBA"
    )


def _pil_to_float(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels as float32 (H, W, 1 or 3) in [0, 1], and an alpha plane (H, W) or None."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float32)
        return (np.clip(a, 0, 65535) / 65535)[..., None], None
    if mode == "F":
        a = np.asarray(im).astype(np.float32)
        return (np.clip(np.nan_to_num(a), 0, 255) / 255)[..., None], None
    if mode in ("1", "L") and "transparency" not in im.info:
        return (np.asarray(im.convert("L"), dtype=np.float32) / 255)[..., None], None
    if mode in ("LA", "La"):
        a = np.asarray(im.convert("LA"), dtype=np.float32) / 255
        return a[..., :1], a[..., 1]
    if mode in ("RGBA", "RGBa", "PA") or _has_transparency(im):
        a = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255
        return a[..., :3], a[..., 3]
    # RGB, RGBX, P without transparency, CMYK, YCbCr, LAB, HSV, ...
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255, None


def _convert(pixels: np.ndarray, alpha: np.ndarray | None, mode: str) -> np.ndarray:
    """Composite onto white and convert to the wanted channel count."""
    if alpha is not None:
        a = alpha[..., None]
        pixels = pixels * a + (1.0 - a)
    if mode == "L" and pixels.shape[-1] == 3:
        if alpha is None:
            # Exactly Pillow's integer luma, so an RGB file read as "L" matches an "L" file.
            u8 = np.round(pixels * 255).astype(np.uint32)
            luma = (u8[..., 0] * 19595 + u8[..., 1] * 38470 + u8[..., 2] * 7471 + 0x8000) >> 16
            pixels = (luma.astype(np.float32) / 255)[..., None]
        else:
            pixels = (pixels @ _LUMA)[..., None]
    elif mode == "RGB" and pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return np.clip(pixels, 0.0, 1.0).astype(np.float32, copy=False)


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a float image to ``size`` = (H, W), channel by channel."""
    h, w = size
    if x.shape[:2] == (h, w):
        return x
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(x[..., c])).resize(
                (w, h), Image.Resampling.BICUBIC
            ),
            dtype=np.float32,
        )
        for c in range(x.shape[-1])
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0).astype(np.float32, copy=False)


def _check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise TracemarkError(f"size must be (height, width), got {size!r}") from None
    if not (1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE):
        raise TracemarkError(
            f"size must be (height, width) with sides in [1, {MAX_IMAGE_SIDE}], got {size!r}"
        )
    return h, w


def read_image(
    path: Path | str,
    mode: Literal["RGB", "L"] = "RGB",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read one image file as float32 (H, W, C) in [0, 1], upright, with alpha on white.

    ``size`` = (H, W) resizes with bicubic interpolation after orientation. The pixel
    count is checked from the header before any decoding, so a hostile file cannot
    exhaust memory.
    """
    if mode not in ("RGB", "L"):
        raise TracemarkError(f"mode must be 'RGB' or 'L', got {mode!r}")
    size = _check_size(size)
    path = Path(path)
    im = _open_checked(path, max_pixels)
    try:
        with im, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
            upright = ImageOps.exif_transpose(im)
            pixels, alpha = _pil_to_float(upright)
    except Image.DecompressionBombError as exc:
        raise TracemarkError(
            f"{path} looks like a decompression bomb ({exc}); downscale it first"
        ) from None
    except _DECODE_ERRORS as exc:
        raise TracemarkError(
            f"{path} is corrupt or truncated ({exc}); remove it from the folder or re-export it"
        ) from None
    x = _convert(pixels, alpha, mode)
    if size is not None:
        x = _resize(x, size)
    return x


def _is_grey_header(im: Image.Image) -> bool:
    if im.mode in _GREY_MODES:
        return True
    if im.mode in ("P", "PA"):
        palette = im.getpalette("RGB")
        if palette is None:
            return False
        rgb = np.asarray(palette, dtype=np.int32).reshape(-1, 3)
        return bool(np.all(rgb[:, 0] == rgb[:, 1]) and np.all(rgb[:, 1] == rgb[:, 2]))
    return False


def detect_mode(
    paths: Iterable[Path | str], max_pixels: int = DEFAULT_MAX_PIXELS
) -> Literal["RGB", "L"]:
    """Return "L" if every image is greyscale (headers only), else "RGB" (also for none).

    Keeping a grey collection grey avoids tripling its size and lets marks live in the
    one channel a greyscale model actually sees.
    """
    any_image = False
    for p in paths:
        im = _open_checked(Path(p), max_pixels)
        with im:
            if not _is_grey_header(im):
                return "RGB"
        any_image = True
    return "L" if any_image else "RGB"


ColourMode = Literal["auto", "RGB", "L"]


def parse_size(size: str | None) -> tuple[int, int] | None:
    """``--size HEIGHTxWIDTH``, within :data:`tracemark.limits.MAX_IMAGE_SIDE`."""
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise TracemarkError(f"--size takes HEIGHTxWIDTH, e.g. 32x32, got {size!r}") from None
    if not (1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE):
        raise TracemarkError(
            f"--size takes sides between 1 and {MAX_IMAGE_SIDE} pixels, got {size!r}"
        )
    return h, w


@dataclass
class ImageSet:
    """Images read from a folder, with their relative paths (their identities)."""

    images: list[np.ndarray]
    rel_paths: list[str]
    root: Path
    mode: str

    def __len__(self) -> int:
        return len(self.images)

    def stack(self) -> np.ndarray:
        """All images as one (N, H, W, C) array; they must share one shape."""
        if not self.images:
            raise TracemarkError(f"{self.root} holds no images to stack")
        first = self.images[0].shape
        for rel, x in zip(self.rel_paths, self.images, strict=True):
            if x.shape != first:
                raise TracemarkError(
                    f"images in {self.root} have different sizes: {self.rel_paths[0]} is "
                    f"{first[1]}x{first[0]} but {rel} is {x.shape[1]}x{x.shape[0]}; "
                    "resize them to one size (e.g. with the --size option)"
                )
        return np.stack(self.images).astype(np.float32, copy=False)


def read_folder(
    root: Path | str,
    mode: Literal["auto", "RGB", "L"] = "auto",
    size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
) -> ImageSet:
    """Read every image under ``root`` (recursively, sorted); ``progress(1)`` after each."""
    root = Path(root)
    rel_paths = list_images(root)
    if not rel_paths:
        raise TracemarkError(
            f"{root} contains no images (looked for {', '.join(IMAGE_SUFFIXES)}); "
            "give the folder that holds your images"
        )
    if mode == "auto":
        mode = detect_mode((root / r for r in rel_paths), max_pixels=max_pixels)
    elif mode not in ("RGB", "L"):
        raise TracemarkError(f"mode must be 'auto', 'RGB' or 'L', got {mode!r}")
    images = []
    for rel in rel_paths:
        images.append(read_image(root / rel, mode=mode, max_pixels=max_pixels, size=size))
        if progress is not None:
            progress(1)
    return ImageSet(images=images, rel_paths=rel_paths, root=root, mode=mode)


# --------------------------------------------------------------------------- writing


# Arrays of this many values or more are rounded and read back by compiled loops on every
# core (:mod:`tracemark.pixel_kernels`, the same float32 operations); smaller ones by NumPy.
COMPILED_FROM = 1 << 20


def to_uint8(x: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Round [0, 1] floats to the 8-bit values a file stores (NaN becomes 0).

    The one 8-bit quantiser: marks, releases and their hashes all go through it:
    uint8(min(rint(fmax(float32(x), 0) * 255), 255)). NumPy works in float32 chunks of
    ``chunk`` values (8x faster than whole-array temporaries on big datasets); whole
    datasets of floats go through the compiled loop instead, bit for bit the same.
    """
    x = np.asarray(x)
    flat = np.ascontiguousarray(x).reshape(-1)
    if flat.size >= COMPILED_FROM and flat.dtype in (np.float32, np.float64):
        from .pixel_kernels import round_to_uint8

        return round_to_uint8(flat).reshape(x.shape)
    out = np.empty(flat.shape, np.uint8)
    buf = np.empty(min(chunk, flat.size), np.float32)
    for start in range(0, flat.size, chunk):
        part = buf[: min(chunk, flat.size - start)]
        part[...] = flat[start : start + chunk]
        np.fmax(part, 0, out=part)  # fmax drops NaN: NaN and anything below 0 become 0
        np.multiply(part, 255, out=part)
        np.rint(part, out=part)
        np.minimum(part, 255, out=part)  # +inf too
        out[start : start + chunk] = part
    return out.reshape(x.shape)


def quantize(x: np.ndarray) -> np.ndarray:
    """The float32 values an 8-bit file of ``x`` reads back as."""
    return from_uint8(to_uint8(x))


def from_uint8(pixels: np.ndarray) -> np.ndarray:
    """8-bit pixels as the float32 values in [0, 1] a file of them reads back as."""
    pixels = np.asarray(pixels)
    if pixels.size >= COMPILED_FROM and pixels.dtype == np.uint8:
        from .pixel_kernels import read_uint8

        flat = np.ascontiguousarray(pixels).reshape(-1)
        return read_uint8(flat).reshape(pixels.shape)
    out = pixels.astype(np.float32)
    out /= np.float32(255)  # in place: one array, not two
    return out


def encode_image(x: np.ndarray, fmt: Literal["png", "jpeg"] = "png", quality: int = 95) -> bytes:
    """Encode one (H, W, C) [0, 1] image as 8-bit PNG or JPEG bytes (C=1 → L, C=3 → RGB).

    JPEGs are written without chroma subsampling so colour marks are not blurred away.
    """
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] == 3)):
        raise TracemarkError(f"cannot encode an image of shape {x.shape}; expected (H, W, 1 or 3)")
    im = Image.fromarray(to_uint8(x))
    buf = io.BytesIO()
    if fmt == "png":
        im.save(buf, format="PNG")
    elif fmt in ("jpeg", "jpg"):
        if not 1 <= int(quality) <= 100:
            raise TracemarkError(f"JPEG quality must be between 1 and 100, got {quality}")
        im.save(buf, format="JPEG", quality=int(quality), subsampling=0)
    else:
        raise TracemarkError(f"unknown image format {fmt!r}; use 'png' or 'jpeg'")
    return buf.getvalue()


def decode_image(data: bytes, mode: Literal["RGB", "L"] = "RGB") -> np.ndarray:
    """Decode image bytes as :func:`read_image` reads a file: float32 (H, W, C) in [0, 1]."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            pixels, alpha = _pil_to_float(ImageOps.exif_transpose(im))
    except _DECODE_ERRORS as exc:
        raise TracemarkError(f"cannot decode image bytes: {exc}") from None
    return _convert(pixels, alpha, mode)


def _output_suffix(fmt: str) -> str:
    if fmt == "png":
        return ".png"
    if fmt in ("jpeg", "jpg"):
        return ".jpg"
    raise TracemarkError(f"unknown image format {fmt!r}; use 'png' or 'jpeg'")


def plan_outputs(
    src_root: Path | str | None, rel_paths: Sequence[str], out_root: Path | str, fmt: str
) -> list[str]:
    """Output relative paths: the source tree mirrored, suffix replaced by the format's.

    Two sources mapping to one output (``a.jpg`` and ``a.png``) would silently lose an
    image, so that is an error.
    """
    suffix = _output_suffix(fmt)
    src_name = str(src_root) if src_root is not None else "the source folder"
    outputs: list[str] = []
    seen: dict[str, str] = {}
    for rel in rel_paths:
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or not p.name:
            raise TracemarkError(f"{rel!r} is not a relative path inside {src_name}")
        out = p.with_suffix(suffix).as_posix()
        if out in seen:
            raise TracemarkError(
                f"{seen[out]} and {rel} in {src_name} would both be written as "
                f"{Path(out_root) / out}; rename one of them"
            )
        seen[out] = rel
        outputs.append(out)
    return outputs


def write_images(
    images: Sequence[np.ndarray],
    rel_paths: Sequence[str],
    out_root: Path | str,
    *,
    src_root: Path | str | None = None,
    fmt: Literal["png", "jpeg"] = "png",
    quality: int = 95,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, str]]:
    """Write images under ``out_root`` mirroring ``rel_paths``; one dict per image.

    Nothing is written unless every target is free (or ``force``); each file is written
    atomically. Returns ``{"marked": out_rel, "marked_sha256": hex}`` per image.
    """
    if len(images) != len(rel_paths):
        raise ValueError(f"{len(images)} images but {len(rel_paths)} paths")
    out_root = Path(out_root)
    if src_root is not None:
        check_not_overlapping(src_root, out_root)
    if out_root.exists() and not out_root.is_dir():
        raise TracemarkError(f"{out_root} exists and is not a folder; choose another output")
    outputs = plan_outputs(src_root, rel_paths, out_root, fmt)
    for rel, x in zip(rel_paths, images, strict=True):
        shape = np.shape(x)
        if not (len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3))):
            raise TracemarkError(
                f"cannot write {rel}: image shape {shape} is not (H, W, 1 or 3); "
                "nothing was written"
            )
    protect = () if src_root is None else (src_root,)
    for out in outputs:  # a link inside OUT must not lead a write into SRC or elsewhere
        check_output(out_root / out, force=True, protect=protect, within=out_root)
    encoded = [encode_image(x, fmt=fmt, quality=quality) for x in images]
    # A file that already holds exactly what would be written is not in the way: an
    # interrupted run (marking is deterministic) resumes by running the command again.
    todo = [
        i
        for i, (out, data) in enumerate(zip(outputs, encoded, strict=True))
        if not _holds(out_root / out, data)
    ]
    if not force:
        taken = [outputs[i] for i in todo if _exists(out_root / outputs[i])]
        if taken:
            shown = ", ".join(str(out_root / o) for o in taken[:5])
            more = f" and {len(taken) - 5} more" if len(taken) > 5 else ""
            raise TracemarkError(
                f"{len(taken)} output file(s) already exist with other contents: {shown}{more}; "
                "nothing was written. Choose a new folder or pass --force to overwrite them"
            )
    written = [
        {"marked": o, "marked_sha256": sha256_bytes(d)}
        for o, d in zip(outputs, encoded, strict=True)
    ]
    pending = set(todo)
    for i, (out, data) in enumerate(zip(outputs, encoded, strict=True)):
        if i in pending:
            target = out_root / out
            atomic_write_bytes(target, data, force=force, protect=protect, within=out_root)
        if progress is not None:
            progress(1)
    return written


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _holds(path: Path, data: bytes) -> bool:
    """True when ``path`` is a regular file (not a link) whose bytes are ``data``."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


# --------------------------------------------------------------------------- manifest


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a manifest")


def write_manifest(
    path: Path | str,
    entries: list[dict],
    meta: dict,
    force: bool = False,
    protect: Sequence[Path | str] = (),
) -> None:
    """Write the manifest (what was marked, from what, with which hashes) atomically.

    An existing manifest is only replaced with ``force``: it may be the only record
    linking published files to their originals. Nothing is written inside ``protect``.
    """
    reserved = {"format", "version", "files"} & set(meta)
    if reserved:
        raise ValueError(f"meta must not contain {sorted(reserved)}")
    doc = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **meta, "files": entries}
    text = json.dumps(doc, indent=2, sort_keys=True, default=_json_default) + "\n"
    atomic_write_text(path, text, force=force, protect=protect)


def default_manifest_path(out: Path | str) -> Path:
    """``OUT.manifest.json`` beside OUT, so OUT itself can be published as it is."""
    out = Path(out)
    return out.parent / f"{out.name}.manifest.json"


def read_manifest(path: Path | str) -> dict:
    """Read and validate a manifest written by :func:`write_manifest`."""
    path = Path(path)
    doc = read_json(path, "manifest", "; give the manifest written by mark")
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise TracemarkError(
            f"{path} is not a tracemark manifest; give the .manifest.json written by mark"
        )
    if doc.get("version") != MANIFEST_VERSION:
        raise TracemarkError(
            f"{path} is manifest version {doc.get('version')!r}; this tracemark reads version "
            f"{MANIFEST_VERSION}: upgrade tracemark"
        )
    if not isinstance(doc.get("files"), list):
        raise TracemarkError(f"{path} has no list of files; the manifest is damaged")
    return doc
