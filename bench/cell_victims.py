"""A spec cell's world and victims for the benchmarks, the marked victim cached too.

``tracemark evaluate`` caches only clean models (a marked victim belongs to one cell);
the benchmarks re-read one cell many times, so they keep its marked victim in the same
cache, under an id derived from the cell.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tracemark.evaluate.cells import cells_of, digest, select


def prepared_cell(spec_name: str, method: str, recipe: str, seed: int, cache: Path):
    """(cell, Prepared) of the spec's ``method`` entry on ``recipe`` and ``seed`` with no
    countermeasure, trained exactly as the harness trains it (the spec's torch threads)."""
    import torch

    from tracemark.evaluate import run as run_mod
    from tracemark.evaluate.spec import load_spec
    from tracemark.evaluate.victims import cached_model

    spec = load_spec(spec_name)
    cell = next(
        c
        for c in select(cells_of(spec), [method], [seed])
        if c.recipe_name == recipe and c.countermeasure.name == "none"
    )
    torch.set_num_threads(spec.torch_threads)
    marked_id = digest({"cell": cell.cell_id, "purpose": "bench marked victim"})
    clean = run_mod.load_split(spec.dataset, "train").images[
        run_mod.clean_indices(spec.dataset, cell.recipe, cell.seed)
    ]
    original = run_mod.train_victim

    def train(recipe_spec, images, labels, train_seed, device, bar):
        if len(images) == len(clean) and np.array_equal(images, clean):  # the clean model
            return original(recipe_spec, images, labels, train_seed, device, bar)
        return cached_model(
            cache,
            marked_id,
            lambda: original(recipe_spec, images, labels, train_seed, device, bar),
        )[0]

    run_mod.train_victim = train
    try:
        return cell, run_mod.prepare(cell, cache)
    finally:
        run_mod.train_victim = original
