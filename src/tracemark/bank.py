"""A bank of real photos shipped inside installed packages, for natural-image marks.

scikit-image's bundled ``data`` photos and scikit-learn's sample images need no
download. Crops, flips and resizes of them give an effectively unbounded supply of
natural-image patterns (:class:`NaturalPattern`); which crop a key uses is one seeded
draw. The tracker's natural-image outlier and the isotope's natural marks both draw here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

# ITU-R 601-2 luma, the same weights Pillow uses for RGB -> L.
LUMA = np.array([0.299, 0.587, 0.114])

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


@functools.cache
def _photo_image(photo: int) -> Image.Image:
    """A bank photo as a Pillow image: crops of it are cut in C, without NumPy copies."""
    return Image.fromarray(_photos()[photo])


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
    img = _photo_image(photo)
    w, h = img.size
    top, left, bh, bw = box
    y0, x0 = int(top * h), int(left * w)
    y1, x1 = max(y0 + 1, int((top + bh) * h)), max(x0 + 1, int((left + bw) * w))
    crop = img.crop((x0, y0, x1, y1))
    if flip:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    resized = crop.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.float64) / 255.0


def to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """Adapt an (H, W, 3) float pattern to 1 or 3 channels (grey via ITU-R 601-2 luma)."""
    if channels == 3:
        return rgb
    if channels == 1:
        return (rgb @ LUMA)[..., None]
    raise ValueError(f"images must have 1 or 3 channels, not {channels}")


@dataclass(frozen=True)
class NaturalPattern:
    """A crop of a bank photo, resized to each image: the tracker's alternative outlier and
    the tiles of the isotope's natural marks."""

    photo: int
    box: tuple[float, float, float, float]  # top, left, height, width as fractions
    flip: bool

    @classmethod
    def draw(cls, rng: np.random.Generator) -> NaturalPattern:
        photo = int(rng.integers(0, photo_count()))
        scale = float(rng.uniform(0.3, 1.0))
        top, left = (float(v) for v in rng.uniform(0.0, 1.0 - scale, size=2))
        return cls(photo, (top, left, scale, scale), bool(rng.integers(0, 2)))

    def render(self, height: int, width: int, channels: int = 3) -> np.ndarray:
        rgb = render_crop(self.photo, self.box, self.flip, height, width)
        return to_channels(rgb, channels)
