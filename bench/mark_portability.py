"""Do tracker marks regenerate bit for bit under another BLAS kernel (another machine)?

    python bench/mark_portability.py [--images 2400] [--cores Haswell,SkylakeX,Sandybridge]

An audit regenerates the owner's published files from the key and the originals and
refuses any that differ (a lossless file must match exactly), so marks must come out the
same on every machine. The Perlin noise is a float64 BLAS product, and OpenBLAS picks
its kernel by CPU: this script marks the same images with the same keys in one child
process per kernel (``OPENBLAS_CORETYPE``; the default is this machine's own) and
counts the images and pixels that differ from the default's. Sizes from 17x61 to
224x224, 1 and 3 channels, default and varied eps/r, stripes and natural patterns.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SHAPES = [(32, 32, 3), (28, 28, 1), (224, 224, 3), (17, 61, 3), (64, 64, 1), (96, 80, 3)]


def mark_all(out: Path, images: int) -> None:
    """In the child: mark every case and save the marks."""
    from tracemark.keys import Key
    from tracemark.methods.tracker import mark

    rng = np.random.default_rng(11)
    marks, total, j = {}, 0, 0
    while total < images:
        h, w, c = SHAPES[j % len(SHAPES)]
        params: dict = {}
        if j % 3 == 1:
            params = {"eps": float(rng.integers(1, 20)) / 255, "r": float(rng.uniform(0.5, 0.95))}
        if j % 7 == 3:
            params["pattern"] = "natural"
        key = Key(method="tracker", seed=rng.bytes(32).hex(), params=params)
        n = min(images - total, int(rng.integers(1, 40)) if h < 100 else 4)
        x = (rng.integers(0, 256, (n, h, w, c)) / 255.0).astype(np.float32)
        marks[f"m{j}"] = mark(x, key)
        total, j = total + n, j + 1
    np.savez(out, **marks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2400)
    ap.add_argument("--cores", default="Haswell,SkylakeX,Cooperlake,Sandybridge,Prescott")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mark_all(Path(args.child), args.images)
        return
    tmp = Path(tempfile.mkdtemp(prefix="tracemark-portability-"))
    runs = {}
    for core in ["default", *args.cores.split(",")]:
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        if core != "default":
            env["OPENBLAS_CORETYPE"] = core
        out = tmp / f"{core}.npz"
        cmd = [sys.executable, __file__, "--images", str(args.images), "--child", str(out)]
        subprocess.run(cmd, env=env, check=True)
        runs[core] = np.load(out)
    base = runs.pop("default")
    print("| OpenBLAS kernel | images differing | pixels differing |")
    print("|---|---|---|")
    images = sum(len(base[k]) for k in base.files)
    pixels = sum(base[k][..., 0].size for k in base.files)
    for core, marks in runs.items():
        bad_images = sum(
            int((base[k] != marks[k]).reshape(len(base[k]), -1).any(axis=1).sum())
            for k in base.files
        )
        bad_pixels = sum(int((base[k] != marks[k]).any(axis=-1).sum()) for k in base.files)
        print(f"| {core} | {bad_images} of {images} | {bad_pixels} of {pixels:,} |")


if __name__ == "__main__":
    main()
