"""Running one cell: mark, train the victim (and reuse the clean model), audit everyone.

Every audit is the library's own stand-alone audit (``method.audit``), once per access
mode. Nothing is shared between audits: each draws its own pseudo-users, external marks
or null triggers from its own key. Within one audit, the model's answers are memoised
(by image hash) so that its top-K and label-only runs read the answers its full run got,
as wrapping a real deployment in ``TopK``/``LabelOnly`` would; the first access mode
queries the model exactly as a stand-alone audit does. The cells of one experiment that
audit the same plain victims (no countermeasure, output-level ones) read the answers one
of them got from the model (:mod:`.answer_book`): the same queries, not asked twice.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import COMPUTE_VERSION
from ..datasets import LabelledImages
from ..keys import Key
from ..methods import registry
from ..methods.base import AuditData, MarkedData
from ..resume_folder import keep_progress_in
from ..rng import derive_bytes
from .answer_book import AnswerBook, book_folder
from .audit_progress import AuditProgress
from .cells import Cell, audit_revision, digest, identity
from .victims import partial_folder
from .world import (
    Owner,
    clean_indices,
    held_out_indices,
    load_split,
    owner_key,
    owners_of,
    seed_hex,
    test_indices,
)

ProgressFactory = Callable[[str, int], Callable[[int], None]]

# Countermeasure stages whose cells audit the plain (cached) victims unchanged.
SHARED_STAGES = ("none", "output")


@dataclass
class AuditRow:
    """One audit's outcome: who was audited, on which model, with which access."""

    access: str
    model: str  # "marked" or "clean"
    owner: int
    member: bool
    p_value: float
    decision: bool
    queries: int
    effect: float
    label: int | None
    evidence: bytes  # the verdict's evidence, zlib-compressed JSON (anyone can re-check p)


@dataclass
class CellResult:
    """Everything a cell produced: its rows, the models' accuracy, and where time went."""

    cell_id: str
    method_name: str
    method: str
    recipe: str
    countermeasure: str
    seed: int
    marked_accuracy: float | None
    clean_accuracy: float
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    audits: list[AuditRow] = field(default_factory=list)


@dataclass
class World:
    """A cell's owners, what each would publish, and the marked victim's training data
    (None when no member's data is trained on)."""

    owners: list[Owner]
    marked: list[MarkedData | None]
    training: LabelledImages | None
    carries_mark: np.ndarray | None = None  # which training images carry a mark


class Clock:
    """Wall time per phase of a cell."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self._last, 3)
        self._last = now

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 3)


def run_cell(
    cell: Cell,
    cache: Path | None = None,
    device: str = "auto",
    progress: ProgressFactory | None = None,
) -> CellResult:
    """Run ``cell``; ``cache`` holds the clean models every cell and run shares.

    Torch runs on the spec's thread count: float results depend on it, and a cell must
    give the same rows in any executor.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(cell.spec.torch_threads)
    try:
        return _run(cell, cache, device, progress)
    finally:
        torch.set_num_threads(threads)


@dataclass
class Prepared:
    """A cell ready to audit: its owners and what they published, its trained models
    ("marked" is None when no member's data was trained on), and the images audits read."""

    method: Any
    world: World
    models: dict[str, Any]
    train: LabelledImages
    test: LabelledImages
    accuracy_indices: np.ndarray
    aux: LabelledImages
    clean_trained: bool
    plain: Any = None  # the marked victim without the countermeasure (accuracy baseline)
    countermeasure: dict[str, Any] = field(default_factory=dict)  # what it reported

    @property
    def num_classes(self) -> int:
        return int(self.train.labels.max()) + 1


def prepare(
    cell: Cell,
    cache: Path | None = None,
    device: str = "auto",
    progress=None,
    clock: Clock | None = None,
) -> Prepared:
    """Mark every owner's data and train the cell's victims (the clean one from the cache
    when it is there)."""
    clock, spec = clock or Clock(), cell.spec
    method = registry.get(cell.method.method)
    train, test = load_split(spec.dataset, "train"), load_split(spec.dataset, "test")
    clean_idx = clean_indices(spec.dataset, cell.recipe, cell.seed)
    acc_idx, aux_idx = test_indices(spec.dataset, cell.seed)
    clock.lap("data")
    world = mark_world(cell, method, train, clean_idx, device, progress, cache)
    clock.lap("mark")
    v = _victims(cell, train, clean_idx, world, cache, device, progress)
    clock.lap("train")
    models = {"marked": v.marked, "clean": v.clean}
    trained = float(v.trained["clean"])
    aux = test.subset(aux_idx)
    return Prepared(method, world, models, train, test, acc_idx, aux, trained, v.plain, v.info)


def _run(cell: Cell, cache: Path | None, device: str, progress) -> CellResult:
    from ..oracle import TorchModuleOracle

    clock = Clock()
    p = prepare(cell, cache, device, progress, clock)
    marked = p.models["marked"]
    saved = AuditProgress(partial_folder(cache), cell.cell_id, p.models)
    books = answer_books(cell, saved.digests, cache, device)
    accuracy = {
        name: _accuracy(model, p, device, books.get(name))
        for name, model in p.models.items()
        if model is not None
    }
    result = CellResult(
        cell_id=cell.cell_id,
        method_name=cell.method_name,
        method=cell.method.method,
        recipe=cell.recipe_name,
        countermeasure=cell.countermeasure.label,
        seed=cell.seed,
        marked_accuracy=accuracy.get("marked"),
        clean_accuracy=accuracy["clean"],
    )
    if marked is not None and p.method.kind == "dataset" and hasattr(p.method, "measure"):
        result.metrics = p.method.measure(
            _probabilities(marked, p.num_classes, device), p.world.marked[0].key, p.aux
        )
    if cell.countermeasure.stage != "none":
        # Books exist only where the plain victims are the cell's own models.
        plain_book = books.get("marked" if p.plain is marked else "clean")
        plain = _accuracy(p.plain, p, device, plain_book)
        cost = None if result.marked_accuracy is None else plain - result.marked_accuracy
        result.metrics["countermeasure"] = {
            **p.countermeasure,
            "stage": cell.countermeasure.stage,
            "plain_accuracy": plain,
            "accuracy_cost": cost,
        }
    clock.lap("measure")
    oracles = {
        name: TorchModuleOracle(model, num_classes=p.num_classes, device=device)
        for name, model in p.models.items()
        if model is not None
    }
    result.audits = audit_all(cell, p, oracles, progress, saved=saved, books=books)
    saved.clear()
    clock.lap("audit")
    result.timings = {**clock.laps, "total": clock.total(), "clean_model_trained": p.clean_trained}
    return result


# ----------------------------------------------------------------------------- marking


def mark_world(
    cell: Cell,
    method,
    train: LabelledImages,
    clean_idx: np.ndarray,
    device: str,
    progress=None,
    cache: Path | None = None,
) -> World:
    """Every owner's key and what they would publish; the members' data in a training set."""
    m, spec = cell.method, cell.spec
    if method.kind == "dataset":  # one publisher: the victim's whole training set
        owners = [
            Owner(u, u < m.members, owner_key(cell.seed, cell.method_name, m, u), -1, np.zeros(0))
            for u in range(m.members + m.never_published)
        ]
        if m.members == 0:
            return World(owners, [None] * len(owners), None)
        clean = train.subset(clean_idx)
        release = cached_release(
            cache,
            cell,
            clean_idx,
            lambda: method.mark(clean, owners[0].key, progress_factory=progress, device=device),
        )
        data = LabelledImages(release.images, release.labels, clean.classes)
        marks = np.asarray(release.carries_mark, dtype=bool)  # over the released images
        return World(owners, [release] + [None] * (len(owners) - 1), data, marks)
    owners = owners_of(spec.dataset, cell.method_name, m, cell.seed, clean_idx)
    marked = [
        method.mark(
            train.images[o.indices],
            o.key,
            ids=[str(i) for i in o.indices],
            publish=m.published(o.member),
        )
        for o in owners
    ]
    members = [(o, mk) for o, mk in zip(owners, marked, strict=True) if o.member]
    if not members:
        return World(owners, marked, None)
    return World(owners, marked, *_training_set(m.placement, train, clean_idx, members))


def cached_release(cache: Path | None, cell: Cell, clean_idx: np.ndarray, make) -> MarkedData:
    """A dataset watermark's release, kept in the cache: it depends on the publisher's key
    and the clean data only, so every recipe training on the same images reuses it."""
    from ..images import to_uint8
    from .victims import locked

    if cache is None:
        return make()
    key = owner_key(cell.seed, cell.method_name, cell.method, 0)
    release_id = digest(
        {
            "purpose": "release",
            "dataset": identity(cell.spec.dataset),
            "clean": digest(clean_idx.tolist()),
            "method": key.method,
            "params": key.params,
            "seed": key.seed,
            "torch_threads": cell.spec.torch_threads,
            "tracemark_version": COMPUTE_VERSION,
        }
        | audit_revision(cell.method)  # e.g. 0.7.0 changed UBW-C's trigger pattern
    )
    path = cache / "releases" / f"{release_id}.npz"
    with locked(path.with_suffix(".lock")):
        if path.exists():
            with np.load(path) as z:
                completed = Key.model_validate_json(str(z["key"]))
                images = z["images"].astype(np.float32) / 255
                return MarkedData(images, z["published"], z["carries_mark"], completed, z["labels"])
        with keep_progress_in(partial_folder(cache)):  # UBW-C's crafting resumes there
            release = make()
        from ..fsutil import atomic_open

        with atomic_open(path, mode=0o600, force=True) as fh:  # it holds the key
            np.savez(
                fh,
                images=to_uint8(release.images),
                labels=release.labels,
                published=release.published,
                carries_mark=release.carries_mark,
                key=np.array(release.key.model_dump_json()),
            )
        return release


def _training_set(
    placement: str,
    train: LabelledImages,
    clean_idx: np.ndarray,
    members: list[tuple[Owner, MarkedData]],
) -> tuple[LabelledImages, np.ndarray]:
    """The marked victim's data: the clean images with the members' published images added
    ("add") or put in place of the clean images they are ("replace"); and which of its
    images carry a mark."""
    images = train.images[clean_idx].copy()
    labels = train.labels[clean_idx].copy()
    marks = np.zeros(len(labels), dtype=bool)
    if placement == "replace":
        for o, mk in members:
            at = np.searchsorted(clean_idx, o.indices[mk.published])
            images[at] = np.stack(mk.images)
            marks[at] = np.asarray(mk.carries_mark, dtype=bool)
        return LabelledImages(images, labels, train.classes), marks
    extra = [np.stack(mk.images) for _, mk in members]
    extra_labels = [np.full(len(x), o.label) for x, (o, _) in zip(extra, members, strict=True)]
    extra_marks = [np.asarray(mk.carries_mark, dtype=bool) for _, mk in members]
    data = LabelledImages(
        np.concatenate([images, *extra]), np.concatenate([labels, *extra_labels]), train.classes
    )
    return data, np.concatenate([marks, *extra_marks])


# ----------------------------------------------------------------------------- training


def _victims(
    cell: Cell,
    train: LabelledImages,
    clean_idx: np.ndarray,
    world: World,
    cache: Path | None,
    device: str,
    progress,
):
    """The cell's victims under its countermeasure (:mod:`.countered`)."""
    from .countered import train_victims

    def bar(name: str):
        return None if progress is None else progress(f"train {name}", cell.recipe.epochs)

    owned = np.concatenate([o.indices for o in world.owners] or [np.zeros(0, dtype=np.int64)])
    trainer_clean = train.subset(np.setdiff1d(clean_idx, owned))

    def held_out(n: int) -> LabelledImages:
        return train.subset(held_out_indices(cell.spec.dataset, cell.seed, clean_idx, n))

    return train_victims(
        cell,
        train.subset(clean_idx),
        world.training,
        world.carries_mark,
        trainer_clean,
        cache,
        device,
        bar,
        held_out,
    )


def _accuracy(model, p: Prepared, device: str, book: AnswerBook | None = None) -> float:
    from ..training import accuracy

    idx = p.accuracy_indices
    images, labels = p.test.images[idx], p.test.labels[idx]
    if book is None:
        return accuracy(model, images, labels, device=device)
    return book.accuracy(images, labels, lambda: accuracy(model, images, labels, device=device))


def answer_books(
    cell: Cell, digests: dict[str, str], cache: Path | None, device: str
) -> dict[str, AnswerBook]:
    """The books of the cell's models that other cells audit too (:mod:`.answer_book`):
    the plain victims, in a spec with output-level countermeasures, whose cells (and the
    one without a countermeasure) all audit them. Elsewhere a book would never be read.
    ``digests``: each model's weights digest, as :class:`.AuditProgress` computed it."""
    stages = {cm.stage for cm in cell.spec.countermeasures}
    if cache is None or "output" not in stages or cell.countermeasure.stage not in SHARED_STAGES:
        return {}
    return {
        name: AnswerBook(book_folder(cache, weights, device), f"{cell.cell_id[:16]}-{name}")
        for name, weights in digests.items()
    }


def _probabilities(model, num_classes: int, device: str) -> Callable[[np.ndarray], np.ndarray]:
    from ..oracle import TorchModuleOracle

    oracle = TorchModuleOracle(model, num_classes=num_classes, device=device)
    return lambda x: oracle.query(x).probs


# ----------------------------------------------------------------------------- auditing


def audit_all(
    cell: Cell,
    p: Prepared,
    oracles: dict[str, Any],
    progress=None,
    accesses: Sequence[str] | None = None,
    saved: AuditProgress | None = None,
    books: dict[str, AnswerBook] | None = None,
) -> list[AuditRow]:
    """Every owner on every model (``oracles``: "marked" and "clean", reached in-process or
    any other way), once per access mode. ``saved``: where each owner's rows are kept as
    they finish, and read back instead of auditing again when a killed run left them.
    ``books``: answers of the same models kept for other cells (:func:`answer_books`)."""
    from ..oracle.memo import AnswerCache

    books = books or {}
    spec, m, method = cell.spec, cell.method, p.method
    accesses = list(accesses or spec.accesses)
    bar = progress("audits", len(oracles) * len(p.world.owners)) if progress else None
    rows = []
    for name, base in oracles.items():
        for owner, marked in zip(p.world.owners, p.world.marked, strict=True):
            done = None if saved is None else saved.load(name, owner.index, AuditRow)
            if done is None or [r.access for r in done] != accesses:
                key = marked.key if marked is not None else owner.key
                data = _audit_data(method, owner, marked, p.train, p.aux)
                changes = {} if owner.member else m.never_options
                options = method.options(**{**m.options, **changes, "alpha": spec.alpha})
                book = books.get(name)
                if book is not None:
                    book.refresh()  # what other cells' workers learned meanwhile
                memo = AnswerCache(base, book)  # read again by this audit's restricted runs
                done = []
                for i, access in enumerate(accesses):
                    oracle = _deployment(cell, memo.view(passthrough=i == 0), access)
                    verdict = method.audit(oracle, key, data, options)
                    done.append(_row(verdict, access, name, owner))
                if book is not None:
                    book.flush()
                if saved is not None:
                    saved.save(name, owner.index, done)
            rows += done
            if bar:
                bar(1)
    return rows


def _audit_data(
    method, owner: Owner, marked: MarkedData | None, train: LabelledImages, aux: LabelledImages
) -> AuditData:
    """What the owner gives an audit: their collection and what they published (their
    class is known), or (dataset keys) labelled test images."""
    if method.kind == "dataset":
        return AuditData(aux=aux, testset=aux)
    return AuditData(
        collection=train.images[owner.indices],
        ids=[str(i) for i in owner.indices],
        published=marked.published,
        images=np.stack(marked.images),
        carries_mark=marked.carries_mark,
        aux=aux,
        testset=aux,
        label=owner.label,
    )


def _deployment(cell: Cell, view, access: str):
    """The model as the audit reaches it: the countermeasure's answers, then the access."""
    from ..oracle.memo import restrict

    cm = cell.countermeasure
    if cm.stage == "output":
        view = cm.wrap(view, derive_bytes(seed_hex(cell.seed), cm.seed_purpose).hex())
    revealed, k = cm.reveal(access, cell.spec.top_k)
    return restrict(view, revealed, k)


def _row(verdict, access: str, model: str, owner: Owner) -> AuditRow:
    evidence = zlib.compress(json.dumps(verdict.evidence).encode(), 6)
    return AuditRow(
        access=access,
        model=model,
        owner=owner.index,
        member=owner.member,
        p_value=float(verdict.p_value),
        decision=bool(verdict.decision),
        queries=int(verdict.queries),
        effect=float(verdict.effect),
        label=verdict.label,
        evidence=evidence,
    )


def evidence_of(row_evidence: bytes) -> dict:
    """A stored audit's evidence (the verdict's raw scores)."""
    return json.loads(zlib.decompress(row_evidence))
