"""What an isotope audit spends rendering external marks, over the harness's access modes.

    python bench/external_marks.py                    # this tree
    PYTHONPATH=OTHER/src python bench/external_marks.py   # another checkout, to compare

An isotope audit blends each of up to 10/alpha external marks (2x2 mosaics of bank
crops) into its aux images, and the harness audits each owner once per access mode.
Times ``--passes`` passes over ``--externals`` distinct marks blended into ``--aux``
Fashion-MNIST-sized images (one thread), as three access modes of one owner do.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tracemark.methods.isotope.marks import NaturalMark, blend
from tracemark.rng import derive


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--externals", type=int, default=1000)
    ap.add_argument("--aux", type=int, default=25)
    ap.add_argument("--passes", type=int, default=3)
    a = ap.parse_args()
    marks = [
        NaturalMark.draw(derive("00" * 16, "bench/externals", i), grid=2)
        for i in range(a.externals)
    ]
    aux = np.random.default_rng(0).random((a.aux, 28, 28, 1), dtype=np.float32)
    for p in range(a.passes):
        t = time.perf_counter()
        for m in marks:
            blend(aux, m, 0.4)
        took = time.perf_counter() - t
        print(f"pass {p + 1}: {took:.2f} s for {a.externals} externals x {a.aux} aux images")


if __name__ == "__main__":
    main()
