"""The folders a tracker audit reads: the owner's originals, and which of them were published."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ...errors import TracemarkError
from ...fsutil import sha256_file
from ...images import list_images, read_folder
from ...oracle.open import ModelOptions
from ..base import AuditData, AuditSources

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


def read_audit_data(sources: AuditSources, model: ModelOptions) -> AuditData:
    """The tracker audit's data from the owner's folders (``--originals``, ``--marked``)."""
    if sources.holdout is not None:
        raise TracemarkError(HOLDOUT_REFUSED)
    collection, ids, published = tracker_collection(sources.originals, sources.marked, model)
    return AuditData(collection=collection, ids=ids, published=published, label=sources.label)
