"""The data of one cell: which images a victim trains on, what each owner holds.

Per seed, the training split is shuffled once: the first ``owner_images`` are set aside
for owners' collections, the rest is where victims' clean images come from (so no
never-published owner's image is in any victim's data). The clean training set depends on
the recipe and the seed only, never on the method, so every method of a (recipe, seed)
shares one clean model. Every choice is derived from the seed through a named purpose.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..datasets import LabelledImages, load_fashion_mnist
from ..errors import TracemarkError
from ..keys import Key
from ..rng import derive, derive_bytes
from .spec import DatasetSpec, MethodSpec, RecipeSpec

ROOT = "74726163656d61726b2f6576616c7561"  # fixed: the same seed gives the same data anywhere


def seed_hex(seed: int) -> str:
    """The root of every random choice a cell with this seed makes."""
    return derive_bytes(ROOT, "evaluate/seed", seed).hex()


@functools.lru_cache(maxsize=2)
def load_split(dataset: DatasetSpec, split: str) -> LabelledImages:
    """The dataset's split (read once per process)."""
    return load_fashion_mnist(dataset.path, split=split)


@dataclass
class Split:
    """A seed's partition of the training split (indices into it)."""

    owners: np.ndarray  # set aside for owners' collections
    pool: np.ndarray  # where victims' clean images come from


def split_of(dataset: DatasetSpec, seed: int) -> Split:
    train = load_split(dataset, "train")
    order = derive(seed_hex(seed), "evaluate/split").permutation(len(train))
    if dataset.owner_images >= len(train):
        raise TracemarkError(f"dataset.owner_images must leave training images ({len(train)})")
    return Split(order[: dataset.owner_images], order[dataset.owner_images :])


def clean_indices(dataset: DatasetSpec, recipe: RecipeSpec, seed: int) -> np.ndarray:
    """The victim's clean training images (indices into the training split), sorted."""
    train = load_split(dataset, "train")
    pool = split_of(dataset, seed).pool
    rng = derive(seed_hex(seed), "evaluate/clean", recipe.images, int(recipe.balanced))
    if not recipe.balanced:
        if recipe.images > len(pool):
            raise TracemarkError(f"recipe asks {recipe.images} images of {len(pool)} available")
        return np.sort(rng.choice(pool, recipe.images, replace=False))
    classes = int(train.labels.max()) + 1
    per_class, extra = divmod(recipe.images, classes)
    chosen = []
    for c in range(classes):
        of_c = pool[train.labels[pool] == c]
        want = per_class + (c < extra)
        if want > len(of_c):
            raise TracemarkError(
                f"recipe asks {recipe.images} balanced images; class {c} has {len(of_c)} "
                "outside the owners' share (lower dataset.owner_images)"
            )
        chosen.append(rng.choice(of_c, want, replace=False))
    return np.sort(np.concatenate(chosen))


def held_out_indices(dataset: DatasetSpec, seed: int, clean: np.ndarray, n: int) -> np.ndarray:
    """``n`` training-split images that the victim (its ``clean`` images) did not train on
    and no owner holds, in an order drawn from the seed: the clean data its trainer
    fine-tunes with, the same for every method and countermeasure of the seed."""
    rest = np.setdiff1d(split_of(dataset, seed).pool, clean)
    if n > len(rest):
        raise TracemarkError(
            f"{n} held-out clean images asked for; the seed's pool has {len(rest)} the "
            "victim did not train on"
        )
    return np.sort(derive(seed_hex(seed), "evaluate/held-out").permutation(rest)[:n])


def test_indices(dataset: DatasetSpec, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy images, audit images): test-split indices, the second a sample audits use
    (isotope aux images, UBW test images)."""
    test = load_split(dataset, "test")
    order = derive(seed_hex(seed), "evaluate/test").permutation(len(test))
    return np.sort(order[: dataset.test_images]), np.sort(order[: dataset.aux_images])


@dataclass
class Owner:
    """One owner of a method's cell: a key, a class, and the images held."""

    index: int
    member: bool
    key: Key
    label: int
    indices: np.ndarray  # training-split indices of the images held


def owner_key(seed: int, method_name: str, method: MethodSpec, index: int) -> Key:
    """Owner ``index``'s key: fresh, and derived from the seed and the method's name."""
    raw = derive_bytes(seed_hex(seed), "evaluate/key", method_name, index)
    return Key(method=method.method, params=method.params, seed=raw.hex())


def owners_of(
    dataset: DatasetSpec, method_name: str, method: MethodSpec, seed: int, clean: np.ndarray
) -> list[Owner]:
    """Members first, then never-published owners. Owner u holds ``method.held()`` images
    of class ``classes[u % len(classes)]``: members placed "replace" take theirs from the
    victim's clean images, everyone else from the owners' share (disjoint between owners)."""
    train = load_split(dataset, "train")
    rng = derive(seed_hex(seed), "evaluate/owners", method_name)
    split = split_of(dataset, seed)
    sources = {
        "owners": {
            c: list(rng.permutation(split.owners[train.labels[split.owners] == c]))
            for c in set(method.classes)
        },
        "clean": {
            c: list(rng.permutation(clean[train.labels[clean] == c])) for c in set(method.classes)
        },
    }
    owners = []
    for u in range(method.members + method.never_published):
        member = u < method.members
        label = method.classes[u % len(method.classes)]
        where = "clean" if member and method.placement == "replace" else "owners"
        pile, need = sources[where][label], method.held(member)
        if len(pile) < need:
            raise TracemarkError(
                f"methods.{method_name}: owner {u} needs {need} images of class {label}; "
                f"only {len(pile)} are left in the {where} images (fewer owners or images "
                "per owner, never_collection, or more dataset.owner_images)"
            )
        held = np.array([pile.pop() for _ in range(need)])
        owners.append(Owner(u, member, owner_key(seed, method_name, method, u), label, held))
    return owners
