"""A bank of real photos shipped inside installed packages, for natural-image marks.

scikit-image's bundled ``data`` photos and scikit-learn's sample images need no
download. Crops, flips and resizes of them give an effectively unbounded supply of
natural-image patterns; which crop a key uses is one seeded draw.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

# Photos that ship with scikit-image (no download needed). Grey ones are stacked to RGB.
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "moon",
    "clock",
    "brick",
    "grass",
    "gravel",
)


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos: list[np.ndarray] = []
    for name in SKIMAGE_PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        photos.append(np.ascontiguousarray(img[..., :3].astype(np.uint8)))
    photos.extend(np.asarray(img, dtype=np.uint8) for img in load_sample_images().images)
    for p in photos:
        p.setflags(write=False)
    return tuple(photos)


def photo_count() -> int:
    """How many base photos the bank holds."""
    return len(_photos())


def render_crop(
    photo: int,
    box: tuple[float, float, float, float],
    flip: bool,
    height: int,
    width: int,
) -> np.ndarray:
    """Crop ``box`` (fractions: top, left, height, width) of a photo, flip, resize; float64 RGB."""
    img = _photos()[photo]
    h, w = img.shape[:2]
    top, left, bh, bw = box
    y0, x0 = int(top * h), int(left * w)
    y1, x1 = max(y0 + 1, int((top + bh) * h)), max(x0 + 1, int((left + bw) * w))
    crop = img[y0:y1, x0:x1]
    if flip:
        crop = crop[:, ::-1]
    resized = Image.fromarray(np.ascontiguousarray(crop)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    return np.asarray(resized, dtype=np.float64) / 255.0
