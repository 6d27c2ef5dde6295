"""End-to-end MembershipTracker demo on Fashion-MNIST, with measured TPR and FPR.

Simulated users each hold a collection of their own images of one class, and publish
the key's random choice of half of it, marked. A small CNN is trained on a subset that
includes the *member* users' published images; a second, clean model is trained on the
same subset without them. Every member user and every *non-member* user (whose marked
images were never trained on) is then audited against both models, so the
false-positive rate is measured, not assumed.

Each audit is the stand-alone audit a user runs (``tracemark audit``): the user gives
their class and their whole collection, and the audit draws its own pseudo-users from
that collection with the user's key. Nothing is shared between audits.

Every audit runs once per access mode (full probabilities; top-K labels and scores;
the top-1 label): the restricted audits score the 0/1 loss of the top-1 label, so
top-K and label-only give the same verdicts. The demo runs in two phases,
:func:`prepare_tracker_demo` (mark, train) and :func:`audit_tracker_world`, so the
same models can be audited through other oracles (e.g. over HTTP).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from ..datasets import LabelledImages, load_fashion_mnist
from ..errors import TracemarkError
from ..keys import Key
from ..methods import tracker
from ..oracle.base import Oracle
from ..rng import derive, derive_bytes, derive_int
from ..stats import detection_rate, fpr_at_tpr, roc_auc, tpr_at_fpr
from .common import (
    AnswerCache,
    access_block,
    access_name,
    check_accesses,
    epoch_callback,
    restrict,
)

DEMO_SEED = "74726163656d61726b2d64656d6f2d31"  # fixed: the demo is reproducible


@dataclass(frozen=True)
class TrackerDemoConfig:
    """Sizes of the demo. ``quick()`` is the small version used by the tests."""

    members: int = 10
    nonmembers: int = 100
    images_per_user: int = 40  # published, chosen by the key from the collection
    collection_size: int = 120  # each user's images of their class; the rest stay private
    train_size: int = 1500
    epochs: int = 40
    n_pseudo: int = 199
    alpha: float = 0.01
    # Fashion-MNIST is greyscale: the authors' compressed colours (c/8 + 128) all map to
    # greys within 0.50-0.63, so every user's stripes look alike and nothing marks a set
    # as theirs. The uncompressed palette keeps the bands distinct.
    compress: bool = False
    # The victim is trained to fit its data, as real models are. On a 2-core CPU budget
    # that means a small training set, many epochs and no augmentation: pad-4 crops of
    # 28-pixel images shift 1-row stripes away entirely, so a few epochs never fit them.
    augment: bool = False
    batch_size: int = 64
    accuracy_images: int = 10_000  # test images the reported accuracy is measured on
    # Every audit runs once per access mode: full probabilities, the top-k labels with
    # their scores, the top-1 label. The model is queried once (see demos.common).
    accesses: tuple[str, ...] = ("probabilities", "topk", "label")
    top_k: int = 5
    seed: str = DEMO_SEED

    @classmethod
    def quick(cls) -> TrackerDemoConfig:
        return cls(
            members=3,
            nonmembers=5,
            images_per_user=30,
            collection_size=60,
            train_size=600,
            epochs=25,
            batch_size=32,  # enough SGD steps to fit a small set
            n_pseudo=100,
            accuracy_images=1000,  # a sample of the test set is enough for a smoke test
        )


@dataclass
class UserResult:
    user: int
    member: bool
    true_class: int
    model: str
    label: int
    p_value: float
    effect: float
    decision: bool


Stage = Callable[[str], None]


def _split_users(
    labels: np.ndarray, config: TrackerDemoConfig
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, list[int]]:
    """Disjoint image sets: member users' and non-member users' collections, and the
    training pool (which holds none of any user's images, published or not)."""
    rng = derive(config.seed, "demo/tracker/split")
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(10)]
    cursor = [0] * 10
    users, classes = [], []
    for u in range(config.members + config.nonmembers):
        c = u % 10
        users.append(by_class[c][cursor[c] : cursor[c] + config.collection_size])
        cursor[c] += config.collection_size
        classes.append(c)
    used = np.concatenate(users)
    remaining = np.setdiff1d(np.arange(len(labels)), used)
    pool = rng.choice(remaining, size=config.train_size, replace=False)
    return users[: config.members], users[config.members :], pool, classes


@dataclass
class TrackerWorld:
    """Everything the demo audits: the users' keys and collections, and the trained models.

    ``collections[u]`` is user u's images (ids: their training-set indices),
    ``marked[u]`` the published marked ones, ``classes[u]`` their class; users
    ``0 .. members - 1`` are members (their published images were trained on).
    ``models`` maps "trained-on-members" and "clean" to torch modules.
    """

    config: TrackerDemoConfig
    keys: list[Key]
    collections: list[np.ndarray]
    collection_ids: list[list[int]]
    marked: list[np.ndarray]
    classes: list[int]
    members: int
    test: LabelledImages
    models: dict[str, Any]
    seconds: float = 0.0

    @property
    def users(self) -> int:
        return len(self.marked)


def prepare_tracker_demo(
    config: TrackerDemoConfig | None = None,
    stage: Stage | None = None,
    progress_factory=None,
) -> TrackerWorld:
    """Mark every user's images and train the two models (the demo's first phase)."""
    config = config or TrackerDemoConfig()
    check_accesses(config.accesses, config.top_k)
    if not 1 <= config.images_per_user <= config.collection_size:
        raise TracemarkError(
            f"each user publishes {config.images_per_user} of {config.collection_size} images: "
            "images_per_user must be between 1 and collection_size"
        )
    say = stage or (lambda _msg: None)
    t0 = time.perf_counter()
    train, test = load_fashion_mnist(split="train"), load_fashion_mnist(split="test")
    members, nonmembers, pool, classes = _split_users(train.labels, config)
    n_users = config.members + config.nonmembers
    params = {"compress": config.compress}
    keys = [
        Key(
            method="tracker",
            params=params,
            seed=derive_bytes(config.seed, "demo/tracker/user-key", u).hex(),
        )
        for u in range(n_users)
    ]
    say(
        f"marking {config.images_per_user} of {config.collection_size} images for each of "
        f"{n_users} users"
    )
    ids = [[int(i) for i in idx] for idx in members + nonmembers]
    collections = [train.images[idx] for idx in members + nonmembers]
    marked, published = zip(
        *(
            tracker.mark_collection(x, keys[u], ids[u], config.images_per_user)
            for u, x in enumerate(collections)
        ),
        strict=True,
    )
    member_x = np.concatenate(marked[: config.members])
    member_y = np.concatenate(
        [train.labels[idx][mask] for idx, mask in zip(members, published, strict=False)]
    )
    x_clean, y_clean = train.images[pool], train.labels[pool]

    models = {}
    for name, (x, y) in {
        "trained-on-members": (
            np.concatenate([x_clean, member_x]),
            np.concatenate([y_clean, member_y]),
        ),
        "clean": (x_clean, y_clean),
    }.items():
        say(f"training a small CNN ({name}) on {len(x)} images for {config.epochs} epochs")
        models[name] = _train(config, name, x, y, progress_factory)

    return TrackerWorld(
        config=config,
        keys=keys,
        collections=collections,
        collection_ids=ids,
        marked=list(marked),
        classes=classes,
        members=config.members,
        test=test,
        models=models,
        seconds=round(time.perf_counter() - t0, 1),
    )


def _train(config: TrackerDemoConfig, name: str, x: np.ndarray, y: np.ndarray, progress_factory):
    """The demo's small CNN, trained on ``x`` (seeded by the model's name)."""
    from ..models import build_model
    from ..training import TrainConfig, train_model

    model = build_model("small-cnn", in_channels=1, num_classes=10)
    train_cfg = TrainConfig(
        epochs=config.epochs,
        augment=config.augment,
        batch_size=config.batch_size,
        seed=derive_int(config.seed, "demo/tracker/train", name),
    )
    return train_model(
        model, x, y, train_cfg, progress=epoch_callback(progress_factory, name, config.epochs)
    )


def audit_tracker_world(
    world: TrackerWorld,
    oracles: dict[str, Oracle] | None = None,
    accesses: Sequence[str] | None = None,
    stage: Stage | None = None,
    progress_factory=None,
) -> dict:
    """Audit every user against every model once per access mode (the second phase).

    ``oracles``: how to reach each model (e.g. an ``HttpOracle`` serving it); models
    not given are queried in-process. ``accesses``: defaults to the config's. Each
    model is queried once: the restricted audits read its memoised answers through
    ``TopK``/``LabelOnly`` wrappers (see :mod:`tracemark.demos.common`). ``rates``,
    ``users`` and each model's ``queries`` are the first access's (full probabilities
    by default); ``by_access`` has every access's TPR and FPR.
    """
    from ..oracle import TorchModuleOracle
    from ..training import accuracy

    config = world.config
    accesses = check_accesses(config.accesses if accesses is None else accesses, config.top_k)
    unknown = set(oracles or {}) - set(world.models)
    if unknown:
        raise TracemarkError(
            f"no model named {sorted(unknown)}; the models are {list(world.models)}"
        )
    say = stage or (lambda _msg: None)
    t0 = time.perf_counter()
    test = world.test
    results: dict[str, list[UserResult]] = {a: [] for a in accesses}
    image_losses: dict[int, list[float]] = {}  # per-image losses on the trained model
    reads: dict[str, list[str]] = {a: [] for a in accesses}  # the verdicts' access strings
    costs: dict[str, list[int]] = {a: [] for a in accesses}  # queries of a stand-alone audit
    queries: dict[str, dict[str, int]] = {a: {} for a in accesses}
    summary: dict = {"config": asdict(replace(config, accesses=accesses)), "models": {}}
    for name, model in world.models.items():
        given = (oracles or {}).get(name)
        if given is None:
            given = TorchModuleOracle(model, num_classes=10)
        cache = AnswerCache(given)
        test_acc = accuracy(
            model, test.images[: config.accuracy_images], test.labels[: config.accuracy_images]
        )
        for i, access in enumerate(accesses):
            oracle = restrict(cache.view(passthrough=i == 0), access, config.top_k)
            label = access_name(access, config.top_k)
            say(f"auditing {world.users} users against the {name} model ({label})")
            found, losses = _audit_users(world, name, oracle, label, progress_factory)
            results[access] += [r for r, _, _ in found]
            reads[access] += [v for _, v, _ in found]
            costs[access] += [c for _, _, c in found]
            queries[access][name] = oracle.queries
            if i == 0 and name == "trained-on-members":
                image_losses = losses
        summary["models"][name] = {
            "test_accuracy": test_acc,
            "queries": queries[accesses[0]][name],
            "model_queries": cache.model_queries,
        }

    first = results[accesses[0]]
    summary["rates"] = _rates(first, config, image_losses)
    summary["rates_access"] = accesses[0]
    summary["by_access"] = {
        a: _access_rates(results[a], reads[a], costs[a], queries[a]) for a in accesses
    }
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["users"] = [asdict(r) for r in first]
    return summary


def _audit_users(
    world: TrackerWorld, name: str, oracle: Oracle, label: str, progress_factory
) -> tuple[list[tuple[UserResult, str, int]], dict[int, list[float]]]:
    """Every user's audit on one model through ``oracle``.

    Returns (result, the verdict's access string, the queries a stand-alone audit
    would spend) per user, and each user's per-image losses.
    """
    config = world.config
    found, losses = [], {}
    advance = (
        progress_factory(f"{name} ({label}): users", world.users) if progress_factory else None
    )
    for u in range(world.users):
        # The stand-alone audit a user runs: their class, their whole collection.
        c = world.classes[u]
        verdict = tracker.audit(
            oracle,
            world.keys[u],
            world.collections[u],
            ids=world.collection_ids[u],
            published=config.images_per_user,
            label=c,
            alpha=config.alpha,
            n_pseudo=config.n_pseudo,
        )
        if advance:
            advance(1)
        losses[u] = verdict.evidence["user_losses"]
        result = UserResult(
            user=u,
            member=u < world.members,
            true_class=c,
            model=name,
            label=int(verdict.label),
            p_value=verdict.p_value,
            effect=verdict.effect,
            decision=verdict.decision,
        )
        found.append((result, verdict.access, verdict.queries))
    return found, losses


def run_tracker_demo(
    config: TrackerDemoConfig | None = None,
    stage: Stage | None = None,
    progress_factory=None,
) -> dict:
    """Run the demo and return its measured rates and per-user results."""
    t0 = time.perf_counter()
    world = prepare_tracker_demo(config, stage, progress_factory)
    summary = audit_tracker_world(world, stage=stage, progress_factory=progress_factory)
    summary["timings_s"] = {"prepare": world.seconds, "audit": summary["seconds"]}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary


def _pick(results: list[UserResult], model: str, member: bool | None) -> list[UserResult]:
    return [r for r in results if r.model == model and (member is None or r.member == member)]


def _access_rates(
    results: list[UserResult],
    reads: list[str],
    costs: list[int],
    queries: dict[str, int],
) -> dict:
    """One access mode's TPR (members), FPR (non-members) and FPR on the clean model."""
    groups = {
        "tpr": _pick(results, "trained-on-members", True),
        "fpr": _pick(results, "trained-on-members", False),
        "fpr_clean_model": _pick(results, "clean", None),
    }
    pos = -np.array([r.p_value for r in groups["tpr"]])
    neg = -np.array([r.p_value for r in groups["fpr"]])
    return access_block(
        reads,
        flagged={k: sum(r.decision for r in g) for k, g in groups.items()},
        trials={k: len(g) for k, g in groups.items()},
        queries_per_audit=float(np.mean(costs)) if costs else 0.0,
        queries=queries,
        set_based_auc=roc_auc(pos, neg) if len(pos) and len(neg) else None,
    )


def _rates(
    results: list[UserResult], config: TrackerDemoConfig, image_losses: dict[int, list[float]]
) -> dict:
    """TPR/FPR at alpha, research metrics, and the instance-based baseline."""

    def pick(model: str, member: bool | None) -> list[UserResult]:
        return _pick(results, model, member)

    a = config.alpha
    tm, tn = pick("trained-on-members", True), pick("trained-on-members", False)
    clean_all = pick("clean", None)
    rates = {
        "alpha": a,
        "tpr_members": detection_rate(np.array([r.p_value for r in tm]), a),
        "fpr_nonmembers": detection_rate(np.array([r.p_value for r in tn]), a),
        "fpr_clean_model_all_users": detection_rate(np.array([r.p_value for r in clean_all]), a),
        "members": len(tm),
        "nonmembers": len(tn),
        "clean_model_users": len(clean_all),
    }
    # Rank users by p-value (calibrated per class); lower p = more likely trained on.
    pos, neg = -np.array([r.p_value for r in tm]), -np.array([r.p_value for r in tn])
    rates["set_based"] = {
        "fpr_at_100_tpr": fpr_at_tpr(pos, neg, 1.0),
        "tpr_at_1pct_fpr": tpr_at_fpr(pos, neg, 0.01),
        "auc": roc_auc(pos, neg),
    }
    # Instance-based membership inference on the same images, for comparison: each
    # image's own loss under its class, which the audits already computed.
    m_loss = np.concatenate([image_losses[u] for u in range(config.members)])
    n_loss = np.concatenate([image_losses[u] for u in range(config.members, len(image_losses))])
    rates["instance_based"] = {
        "fpr_at_100_tpr": fpr_at_tpr(-m_loss, -n_loss, 1.0),
        "tpr_at_1pct_fpr": tpr_at_fpr(-m_loss, -n_loss, 0.01),
        "auc": roc_auc(-m_loss, -n_loss),
    }
    return rates
