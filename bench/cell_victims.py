"""A spec cell's world and victims for the benchmarks, trained as the harness trains them.

The harness caches a cell's plain marked victim beside its clean model
(``evaluate.countered.marked_model_id``), so a benchmark that re-reads one cell many
times trains its victims once, in the cache it is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tracemark.evaluate.cells import cells_of, select


def realistic_cell_arguments(description: str) -> argparse.ArgumentParser:
    """A bench's parser, with the arguments that name one realistic cell's victims."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--recipe", default="cnn-long")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("results/cache-realistic"))
    return ap


def prepared_cell(spec_name: str, method: str, recipe: str, seed: int, cache: Path):
    """(cell, Prepared) of the spec's ``method`` entry on ``recipe`` and ``seed`` with no
    countermeasure, trained exactly as the harness trains it (the spec's torch threads)."""
    import torch

    from tracemark.evaluate import run as run_mod
    from tracemark.evaluate.spec import load_spec

    spec = load_spec(spec_name)
    cell = next(
        c
        for c in select(cells_of(spec), [method], [seed])
        if c.recipe_name == recipe and c.countermeasure.name == "none"
    )
    torch.set_num_threads(spec.torch_threads)
    return cell, run_mod.prepare(cell, cache)
