"""Watermarking a dataset release: UBW-P, UBW-C and the targeted baselines (spec §3).

A publisher watermarks a share gamma of a labelled training set. Poisoned-label variants
paste the trigger and relabel (uniformly at random for UBW-P, to a target class for
BadNets and Blended); UBW-C perturbs images only, crafted by gradient matching
(:mod:`.clean_label`). The key is completed with what was done, so verification
(:mod:`.verify`) needs nothing else.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ...datasets import LabelledImages
from ...errors import TracemarkError
from ...images import from_uint8, to_uint8
from ...keys import Key
from ..base import check_key
from .key_trigger import NAME, make_trigger
from .params import UbwParams
from .triggers import Trigger, poison_count

PURPOSE_POISON_SET = "ubw/poison-set"
PURPOSE_LABELS = "ubw/labels"


def _check_data(data: LabelledImages) -> int:
    if len(data) < 2:
        raise TracemarkError("a dataset watermark needs at least two training images")
    k = max(len(data.classes), int(data.labels.max()) + 1)
    if k < 2:
        raise TracemarkError("a dataset watermark needs at least two classes")
    return k


def pixels_sha256(images: np.ndarray) -> str:
    """SHA-256 of 8-bit pixels: identifies a release independently of its file format."""
    return _uint8_sha256(to_uint8(images))


def _uint8_sha256(pixels: np.ndarray) -> str:
    """:func:`pixels_sha256` of pixels already rounded to 8 bits."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(pixels)).cast("B")).hexdigest()


def watermark(
    data: LabelledImages,
    key: Key,
    *,
    progress_factory=None,
    device: str = "auto",
) -> tuple[LabelledImages, Key]:
    """Watermark ``data`` (the training split) with ``key``; the input is not modified.

    Returns the release (8-bit quantised) and the key completed with the poisoned
    indices, class count, image shape and the release's pixel hash. Poisoned-label
    variants (UBW-P, BadNets, Blended) change labels; UBW-C perturbs images only.
    """
    params: UbwParams = check_key(key, NAME)
    if params.poisoned:
        raise TracemarkError("this key has already watermarked a dataset; make a new key")
    k = _check_data(data)
    if params.targeted and params.target >= k:
        raise TracemarkError(f"target class {params.target} is not one of the {k} classes")
    shape = tuple(int(s) for s in data.images.shape[1:])
    source = np.asarray(data.images, dtype=np.float32)  # read, never written
    labels = np.array(data.labels, dtype=np.int64, copy=True)
    trigger = make_trigger(key, shape)
    if params.variant == "ubw-c":
        from .clean_label import craft

        result = craft(
            data.images,
            data.labels,
            k,
            trigger,
            key,
            progress_factory=progress_factory,
            device=device,
        )
        idx, changed = result.poisoned, result.poisons
    else:
        idx, changed = poison_labels(key, params, source, labels, trigger, k)
    # The release as 8-bit files hold it: every image rounded once, the watermarked share
    # from its changed copy; no float copy of the whole dataset is made.
    pixels = to_uint8(source)
    pixels[idx] = to_uint8(changed)
    images = from_uint8(pixels)  # = quantize(release), read back as a file is
    completed = Key(
        method=key.method,
        version=key.version,  # the format the trigger above was made under
        seed=key.seed,
        created=key.created,
        params={
            **key.params,
            "num_classes": k,
            "image_shape": shape,
            "poisoned": [int(i) for i in idx],
            "release_sha256": _uint8_sha256(pixels),
        },
    )
    release = LabelledImages(images, labels, list(data.classes), data.ids)
    return release, completed


def poison_labels(
    key: Key, params: UbwParams, images: np.ndarray, labels: np.ndarray, trigger: Trigger, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Poisoned-label watermarks: a random gamma-share gets the trigger and a new label
    (uniform over all K classes for UBW-P, the target for BadNets and Blended). Labels
    change in place; returns the sorted poisoned indices and their triggered images
    (``images`` is not modified)."""
    n = len(labels)
    count = poison_count(n, params.gamma)
    candidates = np.arange(n) if not params.targeted else np.flatnonzero(labels != params.target)
    if candidates.size < count:
        raise TracemarkError(f"only {candidates.size} images can be poisoned, need {count}")
    idx = np.sort(key.rng(PURPOSE_POISON_SET, n).choice(candidates, count, replace=False))
    triggered = trigger.apply(images[idx])
    if params.targeted:
        labels[idx] = params.target
    else:  # UBW-P: uniform over all K classes, the true label included
        labels[idx] = key.rng(PURPOSE_LABELS, n).integers(0, k, size=count)
    return idx, triggered
