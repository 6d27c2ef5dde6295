"""The contract every registered method keeps, checked without training anything.

A method marks real Fashion-MNIST images and audits a model that is no trained network:
a nearest-class-mean classifier (class means of a few hundred training images), wrapped
in a ``CallableOracle``. Whatever the method, its verdict must be well formed, its
p-value in (0, 1], its query count what the oracle counted, and a key of another method
refused.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from tracemark.datasets import LabelledImages
from tracemark.errors import BudgetExceededError, TracemarkError
from tracemark.keys import Key
from tracemark.methods.base import AuditData, MarkedData
from tracemark.oracle import CallableOracle
from tracemark.verdict import Verdict

CLASS = 3  # the owner's class (dresses)


@dataclass
class World:
    """Real images for every kind of method: a collection of one class, labelled data."""

    collection: np.ndarray
    ids: list[str]
    train: LabelledImages  # a labelled dataset (what a dataset watermark marks)
    test: LabelledImages  # labelled images of every class, never marked
    means: np.ndarray  # class means of the training images: the "model"


def make_world(fmnist_train, fmnist_test, seed: int = 0) -> World:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(fmnist_train), 400, replace=False)
    train = fmnist_train.subset(np.sort(idx))
    own = rng.choice(np.flatnonzero(fmnist_train.labels == CLASS), 12, replace=False)
    test = fmnist_test.subset(np.sort(rng.choice(len(fmnist_test), 400, replace=False)))
    means = np.stack([train.images[train.labels == c].mean(axis=0) for c in range(10)])
    return World(
        collection=fmnist_train.images[own],
        ids=[f"own/{i:03d}.png" for i in range(len(own))],
        train=train,
        test=test,
        means=means,
    )


def oracle_for(world: World) -> CallableOracle:
    """Softmax over minus the distance to each class mean: a classifier nobody trained."""
    flat = world.means.reshape(10, -1)

    def logits(images: np.ndarray) -> np.ndarray:
        d = ((images.reshape(len(images), 1, -1) - flat[None]) ** 2).sum(axis=2)
        return -d / 10.0

    return CallableOracle(logits, num_classes=10)


def marked_by(method, key: Key, world: World) -> MarkedData:
    """What the method marks: the owner's collection, or (dataset methods) a whole dataset."""
    if method.kind == "dataset":
        return method.mark(world.train, key)
    return method.mark(world.collection, key, ids=world.ids)


def audit_data(method, marked: MarkedData, world: World) -> AuditData:
    """Everything any method may read; each takes what it needs."""
    images = marked.images if method.kind == "images" else None
    return AuditData(
        collection=world.collection,
        ids=world.ids,
        published=marked.published if method.kind == "images" else None,
        images=np.stack(images) if images is not None else None,
        carries_mark=marked.carries_mark if method.kind == "images" else None,
        aux=world.test,
        testset=world.test,
        label=CLASS,
    )


def check_contract(method, world: World, other_keys: list[Key]) -> Verdict:
    """Run one method end to end against the untrained oracle and check what it promises."""
    key = Key.generate(method.name)
    assert isinstance(key.typed_params(), method.params)
    marked = marked_by(method, key, world)
    assert isinstance(marked, MarkedData)
    assert len(marked.images) == int(np.sum(marked.published))
    assert len(marked.carries_mark) == len(marked.images) and marked.carries_mark.any()
    assert marked.key.method == method.name
    data = audit_data(method, marked, world)
    options = method.options(alpha=0.05)
    assert {"alpha", "access", "include_evidence"} <= {f.name for f in fields(options)}
    oracle = oracle_for(world)
    verdict = method.audit(oracle, marked.key, data, options)
    assert isinstance(verdict, Verdict)
    assert verdict.method == method.name
    assert 0 < verdict.p_value <= 1
    assert verdict.alpha == 0.05 and verdict.decision == (verdict.p_value <= 0.05)
    assert verdict.queries == oracle.queries > 0
    assert verdict.key_commitment == marked.key.commitment()
    assert verdict.test and verdict.access and verdict.effect_description
    assert verdict.evidence, "include_evidence is on by default"
    assert method.progress_steps(options) >= 1 and method.progress_unit
    check_budget_is_kept(method, world, marked.key, data, options, verdict.queries)
    for other in other_keys:
        try:
            method.audit(oracle_for(world), other, data, options)
        except TracemarkError:
            continue
        raise AssertionError(f"{method.name} audited a {other.method} key")
    return verdict


def check_budget_is_kept(method, world: World, key: Key, data, options, spent: int) -> None:
    """A budget too small for the audit is refused before the first query, never midway:
    with a budget of 1, and of one less than the audit just spent, the audit either
    refuses with nothing sent or finishes within the budget (UBW looks at fewer clean
    images), and never sends an image past it."""
    for budget in (1, spent - 1):
        oracle = oracle_for(world)
        oracle.budget = budget
        try:
            verdict = method.audit(oracle, key, data, options)
        except BudgetExceededError as e:
            assert oracle.queries == 0, f"{method.name} sent {oracle.queries} before refusing"
            assert "Nothing was sent" in str(e) and f"leaves {budget:,}" in str(e)
        else:
            assert budget > 1, f"{method.name} audited with a budget of one query"
            assert verdict.queries == oracle.queries <= budget
