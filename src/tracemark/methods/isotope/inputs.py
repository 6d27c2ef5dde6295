"""The folders an isotope audit reads: the owner's published images and auxiliary images."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ...datasets import load_image_pool
from ...errors import TracemarkError
from ...images import default_manifest_path, read_folder, read_manifest
from ...keys import Key
from ...oracle.open import ModelOptions
from ..base import AuditData, AuditSources
from .mark import select_marked


def isotope_flags(key: Key, marked: str | os.PathLike, rel_paths: Sequence[str]) -> np.ndarray:
    """Which published files carry the isotope mark: from the manifest beside the folder
    when there is one (it maps each file to its source's id), else from the file names."""
    manifest = default_manifest_path(marked)
    if manifest.exists():
        flags = {e.get("marked"): e.get("carries_mark") for e in read_manifest(manifest)["files"]}
        if all(isinstance(flags.get(rel), bool) for rel in rel_paths):
            return np.array([flags[rel] for rel in rel_paths], dtype=bool)
    return select_marked(key, list(rel_paths))


def read_audit_data(
    key: Key, sources: AuditSources, model: ModelOptions = ModelOptions()
) -> AuditData:
    """The owner's published images (to vote on their class) and the aux pool.

    The aux pool is read in the colour mode of the owner's images, so the two match.
    """
    if sources.holdout is not None:
        raise TracemarkError(
            "isotope audits take no --holdout: give --aux, images of the same domain that "
            "are not yours"
        )
    if sources.aux is None:
        raise TracemarkError(
            "the isotope audit needs auxiliary images of the same domain (--aux): a flat "
            "folder, or one subfolder per class"
        )
    images, colour, carries_mark = None, model.mode, None
    marked = sources.marked
    if isinstance(marked, np.ndarray):
        images, colour = marked, "L" if marked.shape[-1] == 1 else "RGB"
    elif marked is not None:
        folder = read_folder(marked, mode=model.mode, size=model.size)
        images, colour = folder.stack(), folder.mode
        carries_mark = isotope_flags(key, marked, folder.rel_paths)
    aux = sources.aux
    if isinstance(aux, (str, os.PathLike)):
        aux = load_image_pool(aux, colour, model.size, model.class_names)
    return AuditData(images=images, carries_mark=carries_mark, aux=aux, label=sources.label)
