"""What the answer book saves an output-level countermeasure's cell, measured.

    python bench/answer_book.py            # about 6 minutes on 2 cores

Runs a small tracker experiment (the quick demo's victim) without a countermeasure, then
each output-level countermeasure's cell twice on the same cached victims: once reading the
book the first cell filled, once with an empty book (a cache holding only the models).
Prints, per cell, the audits' wall time and the images that reached the model each way,
and whether the two ways stored the same rows (p-values, queries, evidence).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

SPEC = """
name = "bench-answer-book"
seeds = [0]
alpha = 0.01
accesses = ["probabilities", "label"]
torch_threads = 1

[dataset]
owner_images = 6000
test_images = 1000

[recipes.fit]
images = 600
balanced = false
epochs = 25
batch_size = 32

[methods.tracker]
method = "tracker"
members = 3
never_published = 5
images_per_user = 30
collection = 60
params = { compress = false }

[[countermeasures]]
name = "none"
[[countermeasures]]
name = "output-noise"
sigma = 0.01
[[countermeasures]]
name = "temperature"
t = 4.0
"""


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    import tomllib

    from tracemark.evaluate import cells_of, parse_spec
    from tracemark.evaluate.run import run_cell
    from tracemark.oracle import TorchModuleOracle

    asked = [0]
    predict = TorchModuleOracle._predict

    def counting(self, batch):
        asked[0] += len(batch)
        return predict(self, batch)

    TorchModuleOracle._predict = counting
    cells = cells_of(parse_spec(tomllib.loads(SPEC)))
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        start = time.perf_counter()
        run_cell(cells[0], cache, device="cpu")
        print(
            f"{cells[0].countermeasure.label}: {time.perf_counter() - start:.0f} s "
            f"(training and audits), {asked[0]:,} images to the model"
        )
        print(
            "| countermeasure | audits with the book | images to the model | "
            "audits, empty book | images to the model | same rows |"
        )
        print("|---|---|---|---|---|---|")
        for cell in cells[1:]:
            figures = []
            for booked in (True, False):
                folder = cache
                if not booked:  # the same models, nobody's answers
                    folder = Path(tmp) / f"alone-{cell.cell_id[:8]}"
                    shutil.copytree(cache / "models", folder / "models")
                asked[0] = 0
                result = run_cell(cell, folder, device="cpu")
                figures.append((result.timings["audit"], asked[0], result.audits))
            (t_book, n_book, rows_book), (t_alone, n_alone, rows_alone) = figures
            same = [dataclasses.asdict(r) for r in rows_book] == [
                dataclasses.asdict(r) for r in rows_alone
            ]
            print(
                f"| {cell.countermeasure.label} | {t_book:.1f} s | {n_book:,} | "
                f"{t_alone:.1f} s | {n_alone:,} | {same} |"
            )


if __name__ == "__main__":
    main()
