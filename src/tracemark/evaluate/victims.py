"""Victims: a recipe turned into a trained model, and the cache of clean models.

A recipe says how a model trainer trains (architecture, data size, epochs, optimiser,
augmentation, regularisation, input resolution). The clean model of a (recipe, seed) is
trained once and kept on disk, named by a hash of everything that produced it, so every
method and every later run reuses it. A lock file makes concurrent workers wait for one
another rather than train it twice (and tells a worker that another one is training it).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .._version import COMPUTE_VERSION
from .cells import digest, identity
from .spec import DatasetSpec, RecipeSpec

CUTOUT_FRACTION = 4  # "strong" augmentation erases a square of a quarter of the image side
PARTIAL_FOLDER = "partial"  # trainings in progress, beside the finished models


def train_config(recipe: RecipeSpec, seed: int, image_side: int, device: str = "auto"):
    """The training loop's settings for a recipe (torch is imported here, not before)."""
    from ..training import TrainConfig

    lr = recipe.lr if recipe.lr is not None else (1e-3 if recipe.optimizer == "adam" else 0.05)
    side = recipe.resolution or image_side
    return TrainConfig(
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=lr,
        weight_decay=recipe.weight_decay,
        augment=recipe.augment != "none",
        schedule=recipe.schedule,
        seed=seed,
        device=device,
        optimizer=recipe.optimizer,
        label_smoothing=recipe.label_smoothing,
        cutout=max(1, side // CUTOUT_FRACTION) if recipe.augment == "strong" else 0,
        pad=max(1, side // 7),  # pad-4 crops on 28-32 pixel images
    )


def build_victim(recipe: RecipeSpec, in_channels: int, num_classes: int):
    """An untrained model of the recipe's architecture."""
    from ..errors import TracemarkError
    from ..models import build_model

    kwargs: dict = {"in_channels": in_channels, "num_classes": num_classes}
    if recipe.resolution is not None:
        kwargs["input_size"] = recipe.resolution
    if recipe.width is not None:
        kwargs["widen_factor" if recipe.arch == "wrn" else "width"] = recipe.width
    if recipe.depth is not None:
        if recipe.arch != "wrn":
            raise TracemarkError("recipe.depth is for wrn")
        kwargs["depth"] = recipe.depth
    if recipe.dropout:
        if recipe.arch == "resnet18":
            raise TracemarkError("recipe.dropout: resnet18 has no dropout layer")
        kwargs["dropout"] = recipe.dropout
    return build_model(recipe.arch, **kwargs)


def train_victim(
    recipe: RecipeSpec,
    images: np.ndarray,
    labels: np.ndarray,
    seed: int,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
    checkpoint: Path | None = None,
):
    """A model trained on ``images`` with the recipe; ``seed`` drives every random choice.
    ``checkpoint``: where the training's progress is kept, so that a killed run resumes."""
    from ..training import train_model

    model = build_victim(recipe, images.shape[-1], int(labels.max()) + 1)
    config = train_config(recipe, seed, images.shape[1], device)
    callback = (lambda *_: progress(1)) if progress is not None else None
    return train_model(model, images, labels, config, progress=callback, checkpoint=checkpoint)


def clean_model_id(dataset: DatasetSpec, recipe: RecipeSpec, seed: int, threads: int) -> str:
    """What the clean model of a (recipe, seed) is a function of."""
    return digest(
        {
            "dataset": identity(dataset),
            "recipe": identity(recipe),
            "seed": seed,
            "torch_threads": threads,
            "tracemark_version": COMPUTE_VERSION,
            "purpose": "clean model",
        }
    )


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (a lock file) for the span of a ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def being_trained(cache: Path | None, model_id: str) -> bool:
    """Whether another process is training ``model_id`` into the cache right now (holds
    its lock with the model not yet written), so a worker can do other work first."""
    if cache is None:
        return False
    path = model_path(cache, model_id)
    lock = path.with_suffix(".lock")
    if path.exists() or not lock.exists():
        return False
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def model_path(cache: Path, model_id: str) -> Path:
    """Where the cache keeps ``model_id`` (its lock file beside it, ``.lock``)."""
    return cache / "models" / f"{model_id}.pt"


def partial_folder(cache: Path | None) -> Path | None:
    """Where a cache keeps work in progress (trainings, crafting, a cell's audits)."""
    return None if cache is None else cache / PARTIAL_FOLDER


def progress_file(cache: Path | None, model_id: str) -> Path | None:
    """Where the training of ``model_id`` keeps its progress (:mod:`..training_resume`)."""
    folder = partial_folder(cache)
    return None if folder is None else folder / f"{model_id}.pt"


def cached_model(cache: Path | None, model_id: str, train: Callable[[Path | None], object]):
    """The model cached as ``model_id``, or ``train(progress_file)``'s, saved atomically
    for next time; a training killed half-way resumes from its progress file.

    Returns (model, whether it was trained now).
    """
    from ..training import load_checkpoint, save_checkpoint

    if cache is None:
        return train(None), True
    path = model_path(cache, model_id)
    with locked(path.with_suffix(".lock")):
        if path.exists():
            return load_checkpoint(path), False
        model = train(progress_file(cache, model_id))
        save_checkpoint(model, path, force=True)
        return model, True
