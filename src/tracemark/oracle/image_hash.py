"""One fingerprint per query image, shared by the query log, replay and `tracemark serve`.

The hash covers the exact float32 pixels the model is asked about and their shape, so
two images collide only if they are the same query. It is what makes a log resumable
(an image already answered is never sent again) and checkable by a third party.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["LARGE_IMAGE_BYTES", "image_hashes", "image_sha256"]


def image_sha256(image: np.ndarray) -> str:
    """SHA-256 (hex) of one (H, W, C) image as float32, with its shape."""
    x = np.ascontiguousarray(image, dtype=np.float32)
    digest = hashlib.sha256("x".join(str(d) for d in x.shape).encode() + b"\0")
    digest.update(memoryview(x).cast("B"))  # the array's own memory, not a copy
    return digest.hexdigest()


# Above this many bytes an image's hash releases the GIL long enough for threads to pay
# (hashlib lets go of it for buffers over 2 KB): 224x224x3 float32 is 602 KB.
LARGE_IMAGE_BYTES = 1 << 16


def image_hashes(images: np.ndarray) -> list[str]:
    """:func:`image_sha256` of every image in an (N, H, W, C) batch, on every core for
    large images (an audit hashes every image before it sends any)."""
    images = np.asarray(images)
    if len(images) < 2 or images[0].size * 4 < LARGE_IMAGE_BYTES:
        return [image_sha256(x) for x in images]
    workers = min(len(images), os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(image_sha256, images))
