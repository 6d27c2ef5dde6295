"""What marking does to images: PSNR and SSIM of marked copies against their originals,
per method and parameter setting, for the demos' owners (Fashion-MNIST).

    python bench/stealth.py                # about a minute on 2 cores
    python bench/stealth.py --ubw-c only   # UBW-C's row: crafting, about an hour

Marks, with fresh keys, what the demos' owners publish: tracker users' 25 images
(demo-tracker: compress=false; and the authors' defaults), isotope owners' images at the
demo's visibility and others, and UBW-P, BadNets and Blended releases of 2,000 images
(UBW-C crafts against a surrogate for about an hour on 2 cores: its row is opt-in with
``--ubw-c add`` or ``--ubw-c only``, at the demo's settings). Each figure is
tracemark.stealth.measure on 8-bit values, over the images that carry a mark.
"""

from __future__ import annotations

import argparse

import numpy as np

from tracemark.datasets import load_fashion_mnist
from tracemark.keys import Key
from tracemark.methods import registry
from tracemark.stealth import measure, summarise

SETTINGS = [
    ("tracker", {"compress": False}, "demo-tracker (compress=false)"),
    ("tracker", {}, "authors' defaults (compress=true)"),
    ("tracker", {"compress": False, "r": 0.5}, "compress=false, r=0.5"),
    ("isotope", {"fraction": 1.0, "visibility": 0.4}, "demo-isotope (visibility 0.4)"),
    ("isotope", {"fraction": 1.0, "visibility": 0.2}, "visibility 0.2"),
    ("isotope", {"fraction": 1.0, "visibility": 0.6}, "visibility 0.6"),
    ("ubw", {"variant": "ubw-p"}, "UBW-P (corner, gamma 0.1)"),
    ("ubw", {"variant": "badnets"}, "BadNets (corner, gamma 0.1)"),
    ("ubw", {"variant": "blended"}, "Blended (alpha 0.2, gamma 0.1)"),
]
UBW_C = ("ubw", {"variant": "ubw-c"}, "UBW-C (demo-ubw: epsilon 16/255, gamma 0.1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--owners", type=int, default=10, help="owners per image method")
    parser.add_argument("--images", type=int, default=25, help="images per owner")
    parser.add_argument("--release", type=int, default=2000, help="UBW release size")
    parser.add_argument(
        "--ubw-c",
        choices=["skip", "add", "only"],
        default="skip",
        help="UBW-C's row (crafting: about an hour on 2 cores)",
    )
    args = parser.parse_args()
    settings = {"skip": SETTINGS, "add": [*SETTINGS, UBW_C], "only": [UBW_C]}[args.ubw_c]
    train = load_fashion_mnist(split="train")
    print("| method | setting | images | PSNR mean (dB) | PSNR worst | SSIM mean | SSIM worst |")
    print("|---|---|---|---|---|---|---|")
    for method, params, label in settings:
        m = registry.get(method)
        measures = []
        if m.kind == "images":
            for owner in range(args.owners):
                key = Key.generate(method, **params)
                at = owner * args.images
                images = train.images[at : at + args.images]
                ids = [str(at + i) for i in range(args.images)]
                marked = m.mark(images, key, ids=ids)
                idx = np.flatnonzero(marked.published)
                for i, copy, f in zip(idx, marked.images, marked.carries_mark, strict=True):
                    if f:
                        measures.append(measure(images[i], np.asarray(copy)))
        else:
            data = train.subset(np.arange(args.release))
            marked = m.mark(data, Key.generate(method, **params))
            for i in np.flatnonzero(marked.carries_mark):
                measures.append(measure(data.images[i], marked.images[i]))
        s = summarise(measures)
        psnr = "-" if s.get("psnr_mean") is None else f"{s['psnr_mean']:.1f}"
        worst = "-" if s.get("psnr_min") is None else f"{s['psnr_min']:.1f}"
        print(
            f"| {method} | {label} | {s['images']} | {psnr} | {worst} | "
            f"{s['ssim_mean']:.3f} | {s['ssim_min']:.3f} |"
        )


if __name__ == "__main__":
    main()
