"""UBW-C keys are always calibrated: a model trained on patch-poisoned data reacts to
*any* patch, so the margin test alone accuses owners whose trigger it never saw; the rank
calibration (the default since 0.7.0) does not, and still verifies the publisher."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binom

from tracemark.datasets import load_fashion_mnist
from tracemark.images import quantize
from tracemark.keys import Key
from tracemark.methods.ubw import CORNER_PATTERN, make_trigger, random_positions, upscale, verify
from tracemark.models import build_model
from tracemark.oracle.adapters import TorchModuleOracle
from tracemark.rng import derive, derive_bytes
from tracemark.training import TrainConfig, train_model

from helpers import TEST_SEED, seeded

ALPHA = 0.05  # the calibration's cap is then 10/alpha = 200 never-published patches
NEVER = 12  # never-published keys audited
SHAPE = (28, 28, 1)


def ubw_c_key(purpose: str, i: int = 0) -> Key:
    """The i-th key of a purpose: publisher, benign, poison and never-published keys are
    distinct keys under every TRACEMARK_TEST_SEED (before 0.7.1 they shared one seed under
    seed 0, so the publisher's benign patterns were its own null draws)."""
    base = seeded("00" * 16, "ubw-calibration/keys")
    seed = derive_bytes(base, f"tests/ubw-calibration/{purpose}", i).hex()
    return Key(method="ubw", seed=seed, params={"variant": "ubw-c", "num_classes": 10})


def load_data():
    """3,000 training and 1,000 test images of Fashion-MNIST, and the generator that
    places and relabels the poisons (bench/ubw_c_calibration.py builds the same models)."""
    train, test = load_fashion_mnist(split="train"), load_fashion_mnist(split="test")
    rng = derive(seeded("ab" * 16, "ubw-calibration/data"), "split")
    train = train.subset(np.sort(rng.choice(len(train), 3000, replace=False)))
    test = test.subset(np.sort(rng.choice(len(test), 1000, replace=False)))
    return train, test, rng


@pytest.fixture(scope="module")
def data():
    return load_data()


def poisoned_model(data, trigger_for, benign_for=None) -> TorchModuleOracle:
    """A model whose training set has 20% of its images patched (the j-th of them with
    ``trigger_for(j)``, at a random place) and relabelled uniformly at random, the
    dispersion UBW teaches; with ``benign_for``, another 20% patched with
    ``benign_for(j)`` keep their labels (a model that learns one trigger, not any patch)."""
    train, _, rng = data
    images, labels = train.images.copy(), train.labels.copy()
    n = len(images) // 5
    order = rng.permutation(len(images))
    chosen, benign = order[:n], order[n : 2 * n] if benign_for else order[:0]
    for make, where_to in ((trigger_for, chosen), (benign_for, benign)):
        for j, i in enumerate(where_to):
            trigger = make(j)
            where = random_positions(rng, 1, *SHAPE[:2], trigger.size)
            images[i] = quantize(trigger.apply(images[i : i + 1], where))[0]
    labels[chosen] = rng.integers(0, 10, n)
    torch.set_num_threads(2)
    config = TrainConfig(epochs=10, augment=False, seed=TEST_SEED)
    model = train_model(
        build_model("small-cnn", in_channels=1, num_classes=10), images, labels, config
    )
    return TorchModuleOracle(model, num_classes=10)


def any_patch(data) -> TorchModuleOracle:
    """Trained on images carrying random patterns (another key's null draws): it reacts to
    any patch, as the demo's UBW-C victim did (it lost 0.21 of true-class probability, on
    average, to 20 never-published patches). It is independent of the audited keys."""
    other = ubw_c_key("poison")
    return poisoned_model(data, lambda j: make_trigger(other, SHAPE, j))


def publisher(data) -> TorchModuleOracle:
    """Trained on one publisher's release, and on images with other random patterns that
    keep their labels: it reacts to the publisher's trigger, not to any patch. (Whether a
    real victim singles a trigger out is what the evaluations measure: a model trained on
    a pattern alone also reacts to other patches, bench/ubw_c_patterns.py.)"""
    trigger, other = make_trigger(ubw_c_key("publisher"), SHAPE), ubw_c_key("benign")
    return poisoned_model(data, lambda j: trigger, lambda j: make_trigger(other, SHAPE, j))


@pytest.fixture(scope="module")
def any_patch_model(data):
    return any_patch(data)


@pytest.fixture(scope="module")
def publisher_model(data):
    return publisher(data)


def test_ubw_c_verification_is_calibrated_by_default_and_its_pattern_drawn(
    marked_world, fmnist_test
):
    """On the suite's clean model (no training here): a UBW-C key's verdict ranks its
    trigger among up to 10/alpha never-published patches, whose statistics it keeps, and
    says so; its pattern is drawn from the key, one of the 3x3 patterns the nulls come from."""
    model = TorchModuleOracle(marked_world.clean_model, num_classes=10)
    # The long tests' keys are distinct keys: a model trained on one key's patterns is
    # independent of every other key's draws.
    seeds = [ubw_c_key(p).seed for p in ("publisher", "benign", "poison")]
    assert len(set(seeds + [ubw_c_key("never", i).seed for i in range(NEVER)])) == 3 + NEVER
    keys = [ubw_c_key("never", i) for i in range(3)]
    for key in keys:  # a function of the key's seed, and never the paper's public pattern
        pattern = make_trigger(key, SHAPE).pattern
        assert np.array_equal(pattern, make_trigger(key.model_copy(), SHAPE).pattern)
        assert not np.array_equal(pattern, upscale(CORNER_PATTERN, 7))
    for key in keys:
        v = verify(model, key, fmnist_test, alpha=0.01, m=50)
        st = v.statistics
        assert st["null_triggers"] == 1000 and 10 <= st["null_triggers_used"] <= 1000
        assert len(v.evidence["null_statistics"]) == st["null_triggers_used"]
        assert v.queries >= 50 * (1 + st["null_triggers_used"])
        assert v.p_value == max(st["margin_test_p_value"], st["calibrated_p_value"])
        assert any("always calibrated" in note for note in v.notes)


@pytest.mark.long  # two models trained here: minutes
def test_ubw_c_keys_are_not_accused_on_a_model_that_reacts_to_any_patch(data, any_patch_model):
    model, test = any_patch_model, data[1]
    default = [verify(model, ubw_c_key("never", i), test, alpha=ALPHA) for i in range(NEVER)]
    # The model loses true-class probability to every patch: the margin test alone (0.6
    # and earlier: UBW-C's default), whose p-value the verdict keeps, accuses most owners
    # who never published anything ...
    assert np.mean([v.effect for v in default]) > 0.4
    margin = [v.statistics["margin_test_p_value"] for v in default]
    assert sum(p <= ALPHA for p in margin) >= NEVER // 2
    # ... while ranked among never-published patches of the same kind (the default), each
    # key's pattern, drawn as they are, is one more random patch to this model: accusations
    # no more often than alpha allows (binomial bound), and the p-values spread out.
    assert sum(v.decision for v in default) <= binom.ppf(0.999, NEVER, ALPHA)
    assert np.median([v.p_value for v in default]) > 0.1
    # Read sequentially: most stop once 10 never-published patches cost as much as theirs.
    assert np.median([v.statistics["null_triggers_used"] for v in default]) < 100
    for v in default:
        st = v.statistics
        assert st["null_triggers"] == 200
        assert v.p_value == max(st["margin_test_p_value"], st["calibrated_p_value"])
        assert any("always calibrated" in note for note in v.notes)


@pytest.mark.long
def test_the_publisher_is_still_verified_with_the_calibration(data, publisher_model):
    model, test = publisher_model, data[1]
    v = verify(model, ubw_c_key("publisher"), test, alpha=ALPHA)
    assert v.decision and v.p_value <= ALPHA / 2
    # Its patch costs the model more than all but a few never-published ones. (There are
    # 508 such 3x3 patterns, so 200 draws repeat the key's own about 0.4 times on average,
    # and a repeat ties with it.)
    st = v.statistics
    assert st["calibrated_p_value"] <= 5 / 201
    assert v.effect > st["null_statistic_mean"] + 0.1
    # Never-published triggers (each key's own random pattern) are not verified on it.
    others = [
        verify(model, ubw_c_key("never", i), test, alpha=ALPHA, trigger="independent")
        for i in range(NEVER)
    ]
    assert sum(o.decision for o in others) <= binom.ppf(0.999, NEVER, ALPHA)


@pytest.mark.long
def test_keys_made_before_0_7_keep_the_public_pattern_and_say_so(data, any_patch_model):
    """A key file of format 1 still makes the trigger its release was watermarked with
    (UBW-C's public pattern), and its verdict says what that pattern cannot exclude: a
    model that never saw it may react to it more than to random patterns (measured on
    this kind of model: 0.68-0.72 of true-class probability against 0.58-0.62 on average),
    so the rank test is not exact for it."""
    model, test = any_patch_model, data[1]
    new = ubw_c_key("never", 0)
    old = Key(method="ubw", seed=new.seed, params=new.params, version=1)
    public = make_trigger(old, SHAPE)
    assert np.array_equal(public.pattern, upscale(CORNER_PATTERN, 7))
    assert not np.array_equal(make_trigger(new, SHAPE).pattern, public.pattern)
    note = "public patch pattern"
    assert any(note in n for n in verify(model, old, test, alpha=ALPHA).notes)
    assert not any(note in n for n in verify(model, new, test, alpha=ALPHA).notes)
