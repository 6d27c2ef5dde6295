"""A cell's two victims under its countermeasure, and what the countermeasure cost.

The plain victims (no countermeasure) come from the cache where they can: the clean
model of a (recipe, seed) and the marked victim of a (method, recipe, seed), so the
output-level and post-training countermeasures of one experiment train nothing again.
Per stage (:mod:`tracemark.countermeasures.base`):

- ``output``: both plain models; the cell's oracles are wrapped (:mod:`.run`);
- ``post``: the countermeasure applied to the plain marked victim and to the plain clean
  model, with the same clean data;
- ``training``: both trained anew with the countermeasure, and cached: the clean model
  under a countermeasure serves every method on its recipe (:func:`trained_under`);
- ``data``: the marked victim trained on what the filter keeps of its data (the filter's
  precision and recall on marked images are recorded); the clean model is the plain one,
  since filtering clean data gives just another model that never saw a mark. The
  out-of-distribution filters score with a reference trained on held-out clean images
  (:func:`held_out_reference`, cached per recipe and seed).

The accuracy cost is the plain marked victim's test accuracy minus the marked victim's
after the countermeasure: what the countermeasure cost the trainer on the same data.
(Cells without members compare the clean models.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import COMPUTE_VERSION
from ..countermeasures import Trainer
from ..datasets import LabelledImages
from ..errors import TracemarkError
from ..fsutil import atomic_write_text
from ..rng import derive_int
from .cells import Cell, digest, identity
from .victims import (
    being_trained,
    build_victim,
    cached_model,
    clean_model_id,
    model_path,
    progress_file,
    train_config,
    train_victim,
)
from .world import seed_hex


@dataclass
class Victims:
    """The marked victim (None without members), the clean model, the plain marked victim
    (the accuracy baseline: the clean model where there are no members), and the figures
    the countermeasure reported (``info``) with whether the plain models were trained now."""

    marked: Any
    clean: Any
    plain: Any
    info: dict[str, Any] = field(default_factory=dict)
    trained: dict[str, bool] = field(default_factory=dict)


def train_victims(
    cell: Cell,
    clean: LabelledImages,
    training: LabelledImages | None,
    carries_mark: np.ndarray | None,
    trainer_clean: LabelledImages,
    cache: Path | None,
    device: str,
    bar: Callable[[str], Callable[[int], None] | None],
    held_out: Callable[[int], LabelledImages] | None = None,
) -> Victims:
    """The cell's victims: ``clean`` is the clean model's data, ``training`` the marked
    victim's (``carries_mark`` over it), ``trainer_clean`` the clean images of it the
    trainer holds (distillation's transfer set), ``held_out(n)`` clean images neither
    model trained on (fine-tuning)."""
    spec, recipe, cm = cell.spec, cell.recipe, cell.countermeasure
    seed = derive_int(seed_hex(cell.seed), "evaluate/train", digest(identity(recipe)))

    def plain(name: str, data: LabelledImages):
        return lambda progress_at: train_victim(
            recipe, data.images, data.labels, seed, device, bar(name), progress_at
        )

    model_id = clean_model_id(spec.dataset, recipe, cell.seed, spec.torch_threads)
    jobs = {"clean": (model_id, plain("clean", clean))}
    if training is not None:
        jobs["marked"] = (marked_model_id(cell), plain("marked", training))
    # Cells of one (recipe, seed) share the clean model: a worker that finds another one
    # training it trains its own marked victim meanwhile instead of waiting on the lock.
    order = ["marked", "clean"] if "marked" in jobs and being_trained(cache, model_id) else jobs
    made = {name: cached_model(cache, *jobs[name]) for name in order}
    plain_clean, clean_trained = made["clean"]
    v = Victims(None, plain_clean, plain_clean, trained={"clean": clean_trained})
    if training is not None:
        v.marked, v.trained["marked"] = made["marked"]
        v.plain = v.marked
    if cm.stage in ("none", "output"):
        return v
    side = clean.images.shape[1]
    trainer = Trainer(
        clean=trainer_clean,
        fresh_model=lambda **change: build_victim(
            recipe.model_copy(update=change), clean.images.shape[-1], len(clean.classes)
        ),
        config=train_config(recipe, seed, side, device),
        seed=derive_int(seed_hex(cell.seed), "evaluate/countermeasure", digest(identity(cm))),
        device=device,
        held_out=held_out,
    )
    if cm.stage == "post":
        if v.marked is not None:
            v.marked = cm.apply(v.marked, trainer)
        v.clean = cm.apply(plain_clean, _fresh(trainer))
    elif cm.stage == "training":
        if training is not None:
            trainer.progress = bar("marked")
            plain_id = marked_model_id(cell)
            v.marked = trained_under(cm, training, trainer, cache, plain_id)
        clean_trainer = _fresh(trainer, progress=bar("clean"))
        v.clean = trained_under(cm, clean, clean_trainer, cache, model_id)
        if training is None:
            trainer.info = clean_trainer.info
    elif cm.stage == "data" and training is not None:
        if cm.needs_reference:
            trainer.reference = held_out_reference(
                recipe, model_id, seed, held_out, cache, device, bar
            )
        trainer.unfiltered = v.marked  # the plain victim: what the unfiltered data trains
        keep = cm.keep(training.images, training.labels, trainer)
        trainer.info.update(filter_figures(keep, carries_mark))
        kept = training.subset(np.flatnonzero(keep))
        at = progress_file(cache, digest({"cell": cell.cell_id, "purpose": "filtered victim"}))
        v.marked = train_victim(recipe, kept.images, kept.labels, seed, device, bar("marked"), at)
    v.info = trainer.info
    return v


def held_out_reference(
    recipe: Any,
    clean_id: str,
    seed: int,
    held_out: Callable[[int], LabelledImages] | None,
    cache: Path | None,
    device: str,
    bar: Callable[[str], Callable[[int], None] | None],
) -> Any:
    """The out-of-distribution filters' reference: the recipe's model trained on as many
    held-out clean images as the victim's clean data, none of which the victim trained on
    (a model trained on the images it scores has memorised them). Cached beside the clean
    model ``clean_id``, so every filter and method of a (recipe, seed) shares it."""
    if held_out is None:
        raise TracemarkError("an out-of-distribution filter needs held-out clean images")

    def train(progress_at: Path | None) -> Any:
        data = held_out(recipe.images)
        return train_victim(
            recipe, data.images, data.labels, seed, device, bar("reference"), progress_at
        )

    model_id = digest({"clean": clean_id, "purpose": "held-out reference"})
    return cached_model(cache, model_id, train)[0]


def trained_under(
    cm: Any, data: LabelledImages, trainer: Trainer, cache: Path | None, plain_id: str
) -> Any:
    """``cm.train`` on ``data``, kept in the cache beside the plain model ``plain_id`` with
    the figures it reported (epsilon, the epoch it stopped at).

    What a training-level countermeasure trains is a function of the plain model's
    identity and the countermeasure's alone (its seeds come from the cell's seed, the
    recipe and the countermeasure), so the clean model trained under it serves every
    method of the spec on that recipe, and a cell killed after one of its two trainings
    does not repeat it. A countermeasure whose model no checkpoint can rebuild
    (``checkpointable`` false: DP-SGD) trains anew each time.
    """
    if cache is None or not cm.checkpointable:
        return cm.train(data.images, data.labels, trainer)
    model_id = digest({"plain": plain_id, "countermeasure": identity(cm), "purpose": "countered"})
    figures = model_path(cache, model_id).with_suffix(".json")

    def train(_progress_at: Path | None) -> Any:  # a changed loop keeps no progress file
        model = cm.train(data.images, data.labels, trainer)
        atomic_write_text(figures, json.dumps(trainer.info, sort_keys=True))
        return model

    model, trained = cached_model(cache, model_id, train)
    if not trained:
        trainer.info.update(json.loads(figures.read_text()))
    return model


def _fresh(trainer: Trainer, **change) -> Trainer:
    """The same trainer with its own figures (the clean model's run reports apart)."""
    from dataclasses import replace

    return replace(trainer, info={}, **change)


def filter_figures(keep: np.ndarray, carries_mark: np.ndarray | None) -> dict[str, Any]:
    """How much a filter removed, and how much of it was marked."""
    removed = ~np.asarray(keep, dtype=bool)
    marked = (
        np.zeros_like(removed) if carries_mark is None else np.asarray(carries_mark, dtype=bool)
    )
    hits = int((removed & marked).sum())
    return {
        "removed": int(removed.sum()),
        "removed_share": float(removed.mean()),
        "removed_clean_share": float(removed[~marked].mean()) if (~marked).any() else 0.0,
        "marked": int(marked.sum()),
        "marked_removed": hits,
        "precision": hits / int(removed.sum()) if removed.any() else None,
        "recall": hits / int(marked.sum()) if marked.any() else None,
    }


def marked_model_id(cell: Cell) -> str:
    """What the plain marked victim of a cell is a function of (not its countermeasure)."""
    apart = ("countermeasure", "countermeasure_revision")
    payload = {k: v for k, v in cell.payload().items() if k not in apart}
    return digest({**payload, "purpose": "marked model", "compute": COMPUTE_VERSION})
