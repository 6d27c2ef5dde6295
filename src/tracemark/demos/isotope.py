"""End-to-end Data Isotopes demo on Fashion-MNIST: measured TPR and FPR, two procedures.

Users each own a share p of one class's training images and blend their own
natural-image mark into it (one user per class). A small CNN is trained on the data
with the users' marks; a second, clean model on the same images without them. Then:

- the users' marks are audited on the trained model (true positives);
- never-published marks (fresh keys, never blended into anything) are audited on the
  same model, each under a class, as false-positive trials;
- every mark, the users' included, is audited on the clean model;

under the calibrated procedure (rank of S among external marks) and under the paper's
procedure (Q rounds of paired t-tests), so the difference in false positives shows.

Cost sharing: each mark is blended once into every auxiliary image and queried once;
the shift S of every class is read off those probabilities (class y's shift uses the
aux images not labelled y). The statistics, external marks and tests are those of
:func:`tracemark.methods.isotope.audit`; only the queries are shared between audits.
Every audit also runs with top-K and label-only access (shifts of the rank of y, as
the audit scores restricted answers; label-only is rank 1 or 2), from the same answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from ..datasets import load_fashion_mnist
from ..keys import Key
from ..methods import isotope
from ..methods.isotope.marks import blend
from ..rng import derive, derive_bytes, derive_int
from ..stats import detection_rate, gaussian_p_value, paired_greater, rank_p_value
from .common import (
    AnswerCache,
    access_block,
    access_name,
    check_accesses,
    epoch_callback,
    restrict,
)

DEMO_SEED = "69736f746f70652d64656d6f2d736565"  # fixed: the demo is reproducible


@dataclass(frozen=True)
class IsotopeDemoConfig:
    """Sizes of the demo. ``quick()`` is the small version used by the tests."""

    # One user per class, in the classes where a small CNN learns marks at all: on
    # trousers (1) and bags (8) shape alone separates the class and the mark is never
    # picked up (measured: docs/methods/isotope.md). `tracemark demo isotope --classes`
    # changes it.
    classes: tuple[int, ...] = (2, 3, 4, 6, 7)
    never_published: int = 100
    per_class: int = 1000  # training images per class
    fraction: float = 0.1  # p: share of each user's class that carries their mark
    visibility: float = 0.4  # α
    epochs: int = 10
    batch_size: int = 32
    weight_decay: float = 5e-4
    externals: int = 99
    aux_images: int = 500
    alpha: float = 0.05
    rounds: int = 5
    round_size: int = 250
    lam: float = 0.1
    delta: float = 0.6
    accuracy_images: int = 10_000  # test images the reported accuracy is measured on
    # Every audit runs once per access mode: full probabilities (shifts of p_y), the
    # top-k labels (shifts of y's rank) and the top-1 label. The model is queried once
    # (see demos.common).
    accesses: tuple[str, ...] = ("probabilities", "topk", "label")
    top_k: int = 5
    seed: str = DEMO_SEED

    @classmethod
    def quick(cls) -> IsotopeDemoConfig:
        return cls(
            classes=(2, 6),
            never_published=20,
            per_class=50,
            fraction=0.25,
            epochs=8,
            externals=19,
            aux_images=100,
            round_size=40,
            accuracy_images=1000,  # a sample of the test set is enough for a smoke test
        )


@dataclass
class MarkResult:
    mark: str  # "user-<class>" or "never-<j>"
    published: bool
    label: int
    model: str
    procedure: str
    p_value: float
    approx_gaussian_p_value: float | None
    shift: float | None
    decision: bool


Stage = Callable[[str], None]


def _keys(config: IsotopeDemoConfig, kind: str, count: int) -> list[Key]:
    params = {"visibility": config.visibility, "fraction": config.fraction}
    return [
        Key(
            method="isotope",
            params=params,
            seed=derive_bytes(config.seed, f"demo/isotope/{kind}-key", i).hex(),
        )
        for i in range(count)
    ]


def _training_set(config: IsotopeDemoConfig, train, user_keys: list[Key]):
    """Balanced training images; each user's class gets their mark on a share p."""
    rng = derive(config.seed, "demo/isotope/split")
    idx = np.concatenate(
        [
            rng.choice(np.flatnonzero(train.labels == c), config.per_class, replace=False)
            for c in range(10)
        ]
    )
    x, y = train.images[idx], train.labels[idx]
    marked = x.copy()
    for key, c in zip(user_keys, config.classes, strict=True):
        rows = np.flatnonzero(y == c)
        # The user's images are their class's images; they mark a share p of them.
        out, _ = isotope.mark(x[rows], key, ids=[int(i) for i in idx[rows]])
        marked[rows] = out
    return x, marked, y


def run_isotope_demo(
    config: IsotopeDemoConfig | None = None,
    stage: Stage | None = None,
    progress_factory=None,
) -> dict:
    """Run the demo and return measured rates for both procedures and per-mark results."""
    from ..oracle import TorchModuleOracle
    from ..training import accuracy

    config = config or IsotopeDemoConfig()
    accesses = check_accesses(config.accesses, config.top_k)
    say = stage or (lambda _msg: None)
    t0 = time.perf_counter()
    train, test = load_fashion_mnist(split="train"), load_fashion_mnist(split="test")
    users = _keys(config, "user", len(config.classes))
    never = _keys(config, "never", config.never_published)
    auditor = _keys(config, "auditor", 1)[0]
    say(f"marking a share {config.fraction} of {len(users)} classes, one user per class")
    x_clean, x_marked, y = _training_set(config, train, users)
    aux_idx = derive(config.seed, "demo/isotope/aux").choice(
        len(test), config.aux_images, replace=False
    )
    aux_x, aux_y = test.images[aux_idx], test.labels[aux_idx]

    marks = {f"user-{c}": isotope.key_mark(k) for k, c in zip(users, config.classes, strict=True)}
    marks |= {f"never-{j}": isotope.key_mark(k) for j, k in enumerate(never)}
    externals = isotope.external_marks(auditor, config.externals)
    paper_externals = isotope.external_marks(auditor, config.rounds, isotope.PURPOSE_PAPER_EXTERNAL)
    labels = {f"user-{c}": c for c in config.classes}
    labels |= {f"never-{j}": j % 10 for j in range(config.never_published)}

    all_marks = list(marks.values()) + externals + paper_externals
    results: dict[str, list[MarkResult]] = {a: [] for a in accesses}
    reads: dict[str, list[str]] = {a: [] for a in accesses}  # what the audits read
    queries: dict[str, dict[str, int]] = {a: {} for a in accesses}
    summary: dict = {"config": asdict(config), "models": {}}
    for name, x in (("trained-with-marks", x_marked), ("clean", x_clean)):
        say(f"training a small CNN ({name}) on {len(x)} images for {config.epochs} epochs")
        model = _train(config, name, x, y, progress_factory)
        # One model, queried once: every access mode reads its memoised answers.
        cache = AnswerCache(TorchModuleOracle(model, num_classes=10))
        for i, access in enumerate(accesses):
            oracle = restrict(cache.view(passthrough=i == 0), access, config.top_k)
            label = access_name(access, config.top_k)
            say(f"querying {len(all_marks)} marks on {len(aux_x)} aux images ({name}, {label})")
            bar = (
                progress_factory(f"{name} ({label}): marks", len(all_marks))
                if progress_factory
                else None
            )
            base, scores, mode = _mark_scores(oracle, aux_x, all_marks, config.visibility, bar)
            shifts = {
                "marks": np.stack(scores[: len(marks)]),
                "externals": np.stack(scores[len(marks) : len(marks) + len(externals)]),
                "paper": np.stack(scores[len(marks) + len(externals) :]),
            }
            results[access] += _audit_marks(config, name, list(marks), labels, base, shifts, aux_y)
            reads[access].append("probability" if mode == "probability" else "top-K ranks")
            queries[access][name] = oracle.queries
        summary["models"][name] = {
            "test_accuracy": accuracy(
                model, test.images[: config.accuracy_images], test.labels[: config.accuracy_images]
            ),
            "queries": queries[accesses[0]][name],
            "model_queries": cache.model_queries,
        }
    _summarise(summary, config, accesses, results, reads, queries, aux_y)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["marks"] = [asdict(r) for r in results[accesses[0]]]
    return summary


def _summarise(summary: dict, config, accesses, results, reads, queries, aux_y) -> None:
    """Rates (the first access mode's, then each mode's) and the query cost of one audit."""
    summary["rates"] = _rates(results[accesses[0]], config)
    summary["rates_access"] = accesses[0]
    # What one stand-alone audit of a mark would cost with these settings (the demo shares
    # queries between audits): the unmarked aux images, then the mark and every external.
    aux_not_y = float(np.mean([np.count_nonzero(aux_y != c) for c in range(10)]))
    summary["query_cost_per_audit"] = {
        "calibrated": round((config.externals + 2) * aux_not_y),
        "paper": 2 * config.rounds * config.round_size,
    }
    summary["by_access"] = {
        a: _access_rates(results[a], reads[a], summary["query_cost_per_audit"], queries[a])
        for a in accesses
    }


def _train(config: IsotopeDemoConfig, name: str, x: np.ndarray, y: np.ndarray, progress_factory):
    """The demo's small CNN, trained on ``x`` (seeded by the model's name)."""
    from ..models import build_model
    from ..training import TrainConfig, train_model

    model = build_model("small-cnn", in_channels=1, num_classes=10)
    cfg = TrainConfig(
        epochs=config.epochs,
        augment=False,
        batch_size=config.batch_size,
        weight_decay=config.weight_decay,
        seed=derive_int(config.seed, "demo/isotope/train", name),
    )
    return train_model(
        model, x, y, cfg, progress=epoch_callback(progress_factory, name, config.epochs)
    )


def _mark_scores(oracle, aux_x: np.ndarray, marks: list, visibility: float, bar):
    """The aux images' score matrix, unmarked and with each mark blended in, and the mode."""
    base_response = oracle.query(aux_x)
    mode = isotope.score_mode(base_response, "auto")
    base = _score_matrix(base_response, mode)
    scores = []
    for m in marks:
        scores.append(_score_matrix(oracle.query(blend(aux_x, m, visibility)), mode))
        if bar:
            bar(1)
    return base, scores, mode


def _score_matrix(response, mode) -> np.ndarray:
    """(N, C) belief in every class, as the audit scores it: p_c, or minus c's rank.

    Column c is :func:`tracemark.methods.isotope.class_scores` for class c, so the
    shifts below are those :func:`tracemark.methods.isotope.audit` computes.
    """
    return np.stack(
        [isotope.class_scores(response, c, mode) for c in range(response.num_classes)], axis=1
    )


def _audit_marks(config, model_name, names, labels, base, probs, aux_y) -> list[MarkResult]:
    """Both procedures for every mark, from the shared scores (probabilities, or minus
    ranks with restricted access; see :func:`_score_matrix`)."""
    out = []
    external_shifts: dict[int, np.ndarray] = {}  # per class: the same for every mark of it
    for i, name in enumerate(names):
        y = labels[name]
        keep = aux_y != y  # aux images not of class y (labels known here)
        b = base[keep, y]

        def shift(p: np.ndarray, b=b, keep=keep, y=y) -> float:
            return float((p[keep, y] - b).mean())

        s_user = shift(probs["marks"][i])
        if y not in external_shifts:
            external_shifts[y] = np.array([shift(p) for p in probs["externals"]])
        s_ext = external_shifts[y]
        p_exact = rank_p_value(s_user, s_ext, "greater")
        p_gauss = gaussian_p_value(s_user, s_ext, "greater")[0]
        published = name.startswith("user-")
        out.append(
            MarkResult(
                mark=name,
                published=published,
                label=y,
                model=model_name,
                procedure="calibrated",
                p_value=p_exact,
                approx_gaussian_p_value=p_gauss,
                shift=s_user,
                decision=p_exact <= config.alpha,
            )
        )
        # The paper's rounds: fresh samples, a fresh external mark per round.
        pool = np.flatnonzero(keep)
        round_p = []
        for r in range(config.rounds):
            rng = derive(config.seed, "demo/isotope/paper-round", name, r)
            idx = rng.choice(pool, min(config.round_size, len(pool)), replace=False)
            round_p.append(paired_greater(probs["marks"][i][idx, y], probs["paper"][r][idx, y]))
        deciding, _, vote = isotope.paper_vote(np.array(round_p), config.lam, config.delta)
        out.append(
            MarkResult(
                mark=name,
                published=published,
                label=y,
                model=model_name,
                procedure="paper",
                p_value=deciding,
                approx_gaussian_p_value=None,
                shift=None,
                decision=vote,
            )
        )
    return out


def _rates(results: list[MarkResult], config: IsotopeDemoConfig) -> dict:
    def pick(model: str, procedure: str, published: bool | None) -> list[MarkResult]:
        return [
            r
            for r in results
            if r.model == model
            and r.procedure == procedure
            and (published is None or r.published == published)
        ]

    rates: dict = {"alpha": config.alpha}
    for proc in ("calibrated", "paper"):
        users = pick("trained-with-marks", proc, True)
        never = pick("trained-with-marks", proc, False)
        clean = pick("clean", proc, None)
        rates[proc] = {
            "tpr_users": float(np.mean([r.decision for r in users])),
            "fpr_never_published": float(np.mean([r.decision for r in never])),
            "fpr_clean_model_all_marks": float(np.mean([r.decision for r in clean])),
            "users": len(users),
            "never_published": len(never),
            "clean_model_marks": len(clean),
        }
    # The Gaussian approximation, at the same alpha (reported, not used to decide).
    approx = {}
    for key, (model, published) in {
        "tpr_users": ("trained-with-marks", True),
        "fpr_never_published": ("trained-with-marks", False),
        "fpr_clean_model_all_marks": ("clean", None),
    }.items():
        p = np.array([r.approx_gaussian_p_value for r in pick(model, "calibrated", published)])
        approx[key] = detection_rate(p, config.alpha)
    rates["calibrated_gaussian_approx"] = approx
    return rates


def _access_rates(
    results: list[MarkResult], reads: list[str], cost: dict, queries: dict[str, int]
) -> dict:
    """One access mode's rates: the calibrated procedure's, and the paper's beside them."""

    def groups(procedure: str) -> dict[str, list[MarkResult]]:
        pick = [r for r in results if r.procedure == procedure]
        return {
            "tpr": [r for r in pick if r.model == "trained-with-marks" and r.published],
            "fpr": [r for r in pick if r.model == "trained-with-marks" and not r.published],
            "fpr_clean_model": [r for r in pick if r.model == "clean"],
        }

    def rate(g: list[MarkResult]) -> float | None:
        return float(np.mean([r.decision for r in g])) if g else None

    calibrated = groups("calibrated")
    return access_block(
        reads,
        flagged={k: sum(r.decision for r in g) for k, g in calibrated.items()},
        trials={k: len(g) for k, g in calibrated.items()},
        queries_per_audit=cost["calibrated"],
        queries=queries,
        procedure="calibrated",
        paper={k: rate(g) for k, g in groups("paper").items()},
    )
