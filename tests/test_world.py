"""The harness's isolation invariant, tested on the shipped specs' own worlds.

Every false-positive rate the README reports rests on it: a never-published owner's
image is never in any victim's training data, and a victim trains on exactly the clean
images plus the members' published (marked) images. Checked for every image method and
seed of the specs, on the real data, with the harness's own functions.
"""

from __future__ import annotations

import numpy as np
import pytest

from tracemark.evaluate.cells import cells_of
from tracemark.evaluate.run import mark_world
from tracemark.evaluate.spec import load_spec
from tracemark.evaluate.world import clean_indices, load_split, owners_of, split_of
from tracemark.methods import registry

SPECS = ["realistic", "null", "demo-tracker", "demo-isotope", "paper-ablations"]


def _image_cells(spec_name: str):
    spec = load_spec(spec_name)
    seen, out = set(), []
    for c in cells_of(spec):
        if registry.get(c.method.method).kind != "images":
            continue
        ident = (c.method_name, c.recipe_name, c.seed)
        if ident not in seen:
            seen.add(ident)
            out.append(c)
    return spec, out


@pytest.mark.parametrize("spec_name", SPECS)
def test_owners_never_published_are_outside_every_victims_data(spec_name):
    spec, cells = _image_cells(spec_name)
    train = load_split(spec.dataset, "train")
    checked = 0
    for c in cells:
        split = split_of(spec.dataset, c.seed)
        assert not set(split.owners) & set(split.pool)
        assert len(split.owners) + len(split.pool) == len(train)
        clean = clean_indices(spec.dataset, c.recipe, c.seed)
        assert set(clean) <= set(split.pool)
        owners = owners_of(spec.dataset, c.method_name, c.method, c.seed, clean)
        held = [set(o.indices.tolist()) for o in owners]
        assert sum(map(len, held)) == len(set().union(*held))  # owners are disjoint
        for o, h in zip(owners, held, strict=True):
            assert (train.labels[o.indices] == o.label).all()
            if o.member and c.method.placement == "replace":
                assert h <= set(clean)  # replaced in place: already the victim's images
            else:
                assert not h & set(clean)  # never-published, or added: outside the clean set
                assert h <= set(split.owners)
            checked += not o.member
    assert checked > 0


@pytest.mark.parametrize("spec_name", ["demo-tracker-quick", "demo-isotope-quick"])
def test_a_victim_trains_on_the_clean_images_and_the_members_published_ones(
    spec_name, fmnist_train
):
    spec, cells = _image_cells(spec_name)
    c = cells[0]
    method = registry.get(c.method.method)
    train = load_split(spec.dataset, "train")
    clean = clean_indices(spec.dataset, c.recipe, c.seed)
    world = mark_world(c, method, train, clean, "cpu")
    members = [(o, mk) for o, mk in zip(world.owners, world.marked, strict=True) if o.member]
    never = [o for o in world.owners if not o.member]
    assert members and never
    data = world.training
    published = np.concatenate([np.stack(mk.images) for _, mk in members])
    if c.method.placement == "replace":
        assert len(data.images) == len(clean)
        replaced = np.concatenate([o.indices[mk.published] for o, mk in members])
        at = np.searchsorted(clean, replaced)
        np.testing.assert_array_equal(data.images[at], published)
        rest = np.setdiff1d(np.arange(len(clean)), at)
        np.testing.assert_array_equal(data.images[rest], train.images[clean[rest]])
        np.testing.assert_array_equal(data.labels, train.labels[clean])
    else:
        assert len(data.images) == len(clean) + len(published)
        np.testing.assert_array_equal(data.images[: len(clean)], train.images[clean])
        np.testing.assert_array_equal(data.images[len(clean) :], published)
        labels = np.concatenate([np.full(int(mk.published.sum()), o.label) for o, mk in members])
        np.testing.assert_array_equal(data.labels[len(clean) :], labels)
    # No never-published owner's image, marked or not, is in the training data.
    rows = {x.tobytes() for x in data.images}
    for o in never:
        assert not any(train.images[i].tobytes() in rows for i in o.indices)
