"""One-call entry points: mark a folder, audit a model. The CLI is a thin layer over these.

import tracemark
tracemark.mark_folder("me.key", "photos/", "published/")
verdict = tracemark.audit("suspect.onnx", "me.key", "published/", "unpublished/")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

from . import __version__
from .datasets import LabelledImages
from .errors import TracemarkError
from .fsutil import sha256_file
from .images import list_images, read_folder, write_images, write_manifest
from .keys import Key, load_key
from .verdict import Verdict

PathLike = str | os.PathLike
ProgressFactory = Callable[[str, int], Callable[[int], None]]


def _key(key: Key | PathLike) -> Key:
    return key if isinstance(key, Key) else load_key(key)


def default_manifest_path(out: PathLike) -> Path:
    """``OUT.manifest.json`` beside OUT, so OUT itself can be published as it is."""
    out = Path(out)
    return out.parent / f"{out.name}.manifest.json"


def mark_folder(
    key: Key | PathLike,
    src: PathLike,
    out: PathLike,
    *,
    fmt: Literal["png", "jpeg"] = "png",
    quality: int = 95,
    mode: Literal["auto", "RGB", "L"] = "auto",
    manifest: PathLike | None = None,
    force: bool = False,
    progress: ProgressFactory | None = None,
) -> Path:
    """Write marked copies of every image under ``src`` to ``out``; return the manifest path.

    Each image's noise is seeded by its relative path, so re-marking gives identical
    files. Nothing is written if any output exists (unless ``force``).
    """
    from .methods import tracker

    key = _key(key)
    if key.method != "tracker":
        raise TracemarkError(f"marking with {key.method!r} keys is not available yet")
    manifest = Path(manifest) if manifest is not None else default_manifest_path(out)
    if manifest.exists() and not force:
        raise TracemarkError(f"{manifest} already exists; pass --force to overwrite it")
    count = len(list_images(src))
    bar = progress or (lambda _d, _t: None)
    images = read_folder(src, mode=mode, progress=bar("reading", count))
    marked = tracker.mark(images.images, key, ids=images.rel_paths)
    written = write_images(
        marked,
        images.rel_paths,
        out,
        src_root=src,
        fmt=fmt,
        quality=quality,
        force=force,
        progress=bar("writing", count),
    )
    entries = [
        {"source": rel, "source_sha256": sha256_file(Path(src) / rel), **w}
        for rel, w in zip(images.rel_paths, written, strict=True)
    ]
    meta = {
        "method": key.method,
        "params": key.params,
        "key_commitment": key.commitment(),
        "source_root": str(Path(src).resolve()),
        "marked_root": str(Path(out).resolve()),
        "created": datetime.now(timezone.utc).isoformat(),
        "tracemark_version": __version__,
    }
    write_manifest(manifest, entries, meta, force=force)
    return manifest


def load_holdout(
    path: PathLike,
    mode: Literal["auto", "RGB", "L"] = "auto",
    size: tuple[int, int] | None = None,
    class_names: Sequence[str] | None = None,
) -> np.ndarray | LabelledImages:
    """A flat folder (images like the user's) or class subfolders (named by index or name)."""
    path = Path(path)
    if not path.is_dir():
        raise TracemarkError(f"held-out folder {path} does not exist or is not a folder")
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    subdirs = sorted(p for p in entries if p.is_dir())
    if not subdirs or any(p.is_file() for p in entries):
        return read_folder(path, mode=mode, size=size).stack()
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


def audit(
    model,
    key: Key | PathLike,
    marked: PathLike | np.ndarray,
    holdout: PathLike | np.ndarray | LabelledImages,
    *,
    label: int | None = None,
    alpha: float = 0.01,
    n_pseudo: int = 1000,
    access: Literal["auto", "probabilities", "label"] = "auto",
    outputs: Literal["auto", "probabilities", "logits"] = "auto",
    budget: int | None = None,
    size: tuple[int, int] | None = None,
    mode: Literal["auto", "RGB", "L"] = "auto",
    class_names: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Verdict:
    """Was ``model`` trained on the images marked with ``key``?

    ``model``: an oracle, a torch module, or a path (.onnx, TorchScript, checkpoint).
    ``marked``: the published marked images (folder or array). ``holdout``: never-
    published images of the same kind (flat folder/array, or class subfolders with
    ``label`` given). Returns a :class:`Verdict`.
    """
    from .methods import tracker
    from .oracle import Oracle, TorchModuleOracle, load_oracle

    key = _key(key)
    if key.method != "tracker":
        raise TracemarkError(f"audit of {key.method!r} keys is not available yet")
    if isinstance(model, Oracle):
        oracle = model
    elif isinstance(model, (str, os.PathLike)):
        oracle = load_oracle(model, outputs=outputs, budget=budget)
    else:
        oracle = TorchModuleOracle(model, outputs=outputs, budget=budget)
    if isinstance(marked, np.ndarray):
        published = marked
        colour = "L" if marked.shape[-1] == 1 else "RGB"
    else:
        folder = read_folder(marked, mode=mode, size=size)
        published, colour = folder.stack(), folder.mode
    pool = (
        load_holdout(holdout, colour, size, class_names)
        if isinstance(holdout, (str, os.PathLike))
        else holdout
    )
    return tracker.audit(
        oracle,
        key,
        published,
        pool,
        label=label,
        alpha=alpha,
        n_pseudo=n_pseudo,
        access=access,
        progress=progress,
    )
