"""The folders a tracker audit reads: the owner's originals, and which of them were published.

What the audit's exactness assumes is checked here, never trusted: the originals are the
collection the key marked (every file against the marking manifest), and the published
files carry the key's marks (regenerated from the key and compared).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ...collection import Manifest, find_manifest, listed
from ...errors import TracemarkError
from ...fsutil import sha256_file
from ...images import (
    decode_image,
    default_manifest_path,
    detect_mode,
    encode_image,
    list_images,
    read_folder,
    read_image,
)
from ...keys import Key
from ...oracle.open import ModelOptions
from ..base import AuditData, AuditSources
from .audit import resolve_design
from .mark import mark

HOLDOUT_REFUSED = (
    "the tracker audit no longer takes a holdout: pseudo-users drawn from other images are "
    "not exchangeable with yours (with small holdouts that flagged up to a third of clean "
    "models at alpha = 0.05). Give --originals: the folder of every image you gave to "
    "`tracemark mark`"
)


def _stem(rel: str) -> str:
    return PurePosixPath(rel).with_suffix("").as_posix()


def folder_hashes(folder: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of every image file under ``folder`` -> its relative path."""
    return {sha256_file(Path(folder) / rel): rel for rel in list_images(folder)}


def refuse_shared(folder: str | os.PathLike, published: str | os.PathLike, message: str) -> None:
    """Refuse ``folder`` if it holds any of the files under ``published`` (by SHA-256)."""
    theirs = folder_hashes(published)
    shared = [rel for sha, rel in folder_hashes(folder).items() if sha in theirs]
    if shared:
        raise TracemarkError(message.format(n=len(shared), example=Path(folder) / shared[0]))


def tracker_collection(
    originals: Any, marked: Any, model: ModelOptions = ModelOptions()
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The originals a tracker audit needs: images, their ids, and which were published.

    ``originals``: the folder given to ``mark`` (ids are its relative paths, as when
    marking). ``marked``: the published folder; each of its files names its original
    by relative path (the suffix aside). None: every original was published.
    """
    if originals is None or isinstance(originals, np.ndarray):
        raise TracemarkError(
            "the tracker audit needs --originals: the folder of every image you gave to "
            "`tracemark mark` (the audit re-marks them to build its pseudo-users)"
        )
    if marked is not None and not isinstance(marked, (str, os.PathLike)):
        raise TracemarkError("give the published images as a folder (--marked) for a tracker audit")
    if marked is not None:
        refuse_shared(
            originals,
            marked,
            "--originals holds {n} of the marked files (e.g. {example}); give the unmarked "
            "originals you marked from",
        )
    folder = read_folder(originals, mode=model.mode, size=model.size)
    ids = list(folder.rel_paths)
    if marked is None:
        return folder.stack(), ids, np.ones(len(ids), dtype=bool)
    stems = {_stem(rel): i for i, rel in enumerate(ids)}
    published = np.zeros(len(ids), dtype=bool)
    for rel in list_images(marked):
        if _stem(rel) not in stems:
            raise TracemarkError(
                f"{Path(marked) / rel} has no original in {originals}: give the folder you "
                "marked from as --originals"
            )
        published[stems[_stem(rel)]] = True
    if not published.any():
        raise TracemarkError(f"{marked} holds no images")
    return folder.stack(), ids, published


_LOSSY_TOLERANCE = 4 / 255  # one JPEG library against another: a few levels at most
# Marks made on a CPU without fused multiply-add (or on one with) can differ from this
# machine's in a pixel of about 0.4% of images: where the image's noise is at its least
# or greatest, the sine's phase lands on a multiple of pi, and the last bit of a BLAS sum
# decides its sign (measured: bench/mark_portability.py). Those pixels hold the mark
# with the noise the other way; at most this many of them per image are accepted.
NOISE_FLIPS_PER_IMAGE = 2


def published_files(originals: Any, marked: Any) -> dict[str, str]:
    """Each published file's original: relative path of the original -> of the marked file."""
    stems = {_stem(rel): rel for rel in list_images(originals)}
    return {stems[_stem(rel)]: rel for rel in list_images(marked) if _stem(rel) in stems}


def check_marks(
    key: Key, originals: Any, marked: Any, manifest: Manifest | None
) -> tuple[int, int]:
    """Regenerate every published file from the key and its original, and compare.

    A lossless file must hold exactly the regenerated pixels; a JPEG those of the
    regenerated image encoded at the marking's quality (within a few levels, for another
    JPEG library). Except: up to NOISE_FLIPS_PER_IMAGE pixels of a file may differ by no
    more than one flip of the noise's sign, which is how marks made on another CPU
    differ (see :data:`NOISE_FLIPS_PER_IMAGE`). Returns (files checked, flipped pixels).
    """
    pairs = published_files(originals, marked)
    doc = manifest.doc if manifest is not None else {}
    mode = doc.get("colour_mode")
    if mode not in ("RGB", "L"):  # manifests before 0.2 did not record it: what mark's auto chose
        mode = detect_mode(Path(originals) / rel for rel in list_images(originals))
    quality = int(doc.get("jpeg_quality", 95))
    sources = sorted(pairs)
    images = [read_image(Path(originals) / rel, mode=mode) for rel in sources]
    regenerated = mark(images, key, ids=sources)
    params = key.typed_params()
    flip = 2 * params.eps * params.r + 1 / 255  # one pixel's noise sign the other way
    wrong, flips = [], 0
    for rel, x in zip(sources, regenerated, strict=True):
        lossy = Path(pairs[rel]).suffix.lower() in (".jpg", ".jpeg")
        expected = decode_image(encode_image(x, "jpeg" if lossy else "png", quality), mode)
        found = read_image(Path(marked) / pairs[rel], mode=mode)
        tolerance = _LOSSY_TOLERANCE if lossy else 0.5 / 255
        if found.shape != expected.shape:
            wrong.append(pairs[rel])
            continue
        diff = np.abs(found - expected).max(axis=-1)
        off = int((diff > tolerance).sum())
        if off > NOISE_FLIPS_PER_IMAGE or float(diff.max()) > flip + tolerance:
            wrong.append(pairs[rel])
        flips += off
    if wrong:
        raise TracemarkError(
            f"{len(wrong)} file(s) in --marked {marked} do not carry this key's mark of their "
            f"original: {listed(wrong)}. Give the key you marked with and the folder mark wrote "
            "(running mark again with the same key and originals regenerates it)"
        )
    return len(sources), flips


def check_inputs(
    key: Key, sources: AuditSources, ids: list[str], published: np.ndarray
) -> dict[str, Any]:
    """Check the collection against the marking manifest and the published files against
    the key, before any query; what was checked, for the verdict.

    The manifest is required when the design is randomised publication (some originals
    were kept back): that null is exact only for the collection the key chose from.
    """
    design = resolve_design(key, ids, published)[1]
    path = find_manifest(sources.marked, sources.manifest)
    if path is None and design == "randomised publication":
        raise TracemarkError(
            "this audit keeps originals back (randomised publication), whose null is exact "
            "only for the collection the key chose from, so it needs the marking manifest: "
            f"looked for {default_manifest_path(sources.marked)} (where mark writes it); "
            "give its path with --manifest"
        )
    checked: dict[str, Any] = {"design": design}
    manifest = None
    if path is not None:
        manifest = Manifest.read(path)
        manifest.check_key(key.commitment())
        manifest.check_originals(sources.originals)
        if sources.marked is not None:
            manifest.check_published(sources.marked)
        checked |= {
            "manifest": str(path),
            "collection_digest": manifest.digest,
            "originals_checked": len(manifest.files),
        }
    if sources.marked is not None:
        files, flips = check_marks(key, sources.originals, sources.marked, manifest)
        checked["published_regenerated"] = files
        checked["noise_flips_accepted"] = flips
    return checked


def read_audit_data(key: Key, sources: AuditSources, model: ModelOptions) -> AuditData:
    """The tracker audit's data from the owner's folders (``--originals``, ``--marked``),
    checked against the manifest and the key first (:func:`check_inputs`)."""
    if sources.holdout is not None:
        raise TracemarkError(HOLDOUT_REFUSED)
    collection, ids, published = tracker_collection(sources.originals, sources.marked, model)
    checked = check_inputs(key, sources, ids, published)
    return AuditData(
        collection=collection, ids=ids, published=published, label=sources.label, checked=checked
    )
