"""What marking does to an image, measured before publishing: PSNR and SSIM of each marked
copy against its original (scikit-image), a summary, and a side-by-side preview.

Measured on 8-bit values, as a viewer sees a PNG: both images are rounded to 1/255 first.
A copy that carries no mark (isotope's unmarked share) is not measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Known settings that carry no signal for some images (measured; docs/results.md).
# (method, parameter, value, channels of the images, why)
NO_SIGNAL = (
    (
        "tracker",
        "compress",
        True,
        1,
        "this key's compressed palette carries no signal on greyscale images (measured: "
        "TPR 0, docs/results.md); make the key with -p compress=false",
    ),
)


def _eight_bit(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(np.asarray(x, dtype=np.float64), 0, 1) * 255) / 255


def measure(original: np.ndarray, marked: np.ndarray) -> dict[str, float]:
    """PSNR (dB; None for identical images) and SSIM of one (H, W, C) pair in [0, 1]."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a, b = _eight_bit(original), _eight_bit(marked)
    same = np.array_equal(a, b)
    psnr = None if same else float(peak_signal_noise_ratio(a, b, data_range=1.0))
    side = min(a.shape[0], a.shape[1])
    win = min(7, side if side % 2 else side - 1)
    channel = -1 if a.shape[-1] > 1 else None
    a2, b2 = (a, b) if channel is not None else (a[..., 0], b[..., 0])
    ssim = float(structural_similarity(a2, b2, data_range=1.0, channel_axis=channel, win_size=win))
    return {"psnr": None if psnr is None else round(psnr, 3), "ssim": round(ssim, 5)}


def summarise(measures: list[dict[str, float]]) -> dict[str, Any]:
    """Mean and worst PSNR and SSIM over the marked images."""
    psnr = [m["psnr"] for m in measures if m["psnr"] is not None]
    ssim = [m["ssim"] for m in measures]
    if not ssim:
        return {"images": 0}
    return {
        "images": len(ssim),
        "psnr_mean": round(float(np.mean(psnr)), 3) if psnr else None,
        "psnr_min": round(float(np.min(psnr)), 3) if psnr else None,
        "ssim_mean": round(float(np.mean(ssim)), 5),
        "ssim_min": round(float(np.min(ssim)), 5),
    }


def describe(summary: dict[str, Any]) -> str:
    """The summary as a line for a person."""
    if not summary.get("images"):
        return "no image carries a mark"
    psnr = summary["psnr_mean"]
    return (
        f"{summary['images']} marked images: PSNR {psnr:.1f} dB mean, {summary['psnr_min']:.1f} "
        f"worst; SSIM {summary['ssim_mean']:.3f} mean, {summary['ssim_min']:.3f} worst "
        "(1.0: identical)"
        if psnr is not None
        else f"{summary['images']} marked images, identical to their originals"
    )


def warnings_for(method: str, params: dict[str, Any], channels: int) -> list[str]:
    """What is known to carry no signal for images of ``channels`` channels with this
    key's settings."""
    return [
        why
        for m, name, value, ch, why in NO_SIGNAL
        if m == method and params.get(name) == value and channels == ch
    ]


def write_preview(
    originals: list[np.ndarray],
    marked: list[np.ndarray],
    path: Path,
    amplify: float = 10.0,
    force: bool = False,
    protect=(),
) -> Path:
    """A PNG of rows original | marked | difference x ``amplify`` (grey is no change)."""
    import io

    from PIL import Image

    from .fsutil import atomic_write_bytes

    rows = []
    for a, b in zip(originals, marked, strict=True):
        a8, b8 = _eight_bit(a), _eight_bit(b)
        diff = np.clip(0.5 + amplify * (b8 - a8), 0, 1)
        gap = np.ones((a.shape[0], 4, a.shape[2]))
        rows.append(np.concatenate([a8, gap, b8, gap, diff], axis=1))
    grid = np.concatenate([np.concatenate([r, np.ones((4, r.shape[1], r.shape[2]))]) for r in rows])
    pixels = np.round(grid * 255).astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    scale = max(1, 256 // originals[0].shape[0])
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue(), force=force, protect=list(protect))
    return path
