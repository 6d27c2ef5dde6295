"""Data Isotopes: a spurious-feature mark blended into a fraction of a user's images.

A model trained on them learns "mark ⇒ the user's class y", so blending the mark into
images of *other* classes raises the model's belief in y. The audit measures that
shift, S(t) = mean over auxiliary images of [p_y(x ⊕ t) − p_y(x)], and asks how it
ranks among the shifts of E *external* marks: fresh draws from the same bank that were
never published. The key's mark is itself one random draw from that bank, so when the
model never saw it, its S is exchangeable with theirs and the rank p-value is exact.
The paper's procedure (Q rounds of paired t-tests) is kept for reproduction only: it
is not calibrated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import stats as sps

from ..errors import TracemarkError
from ..keys import IsotopeParams, Key
from ..marks import ImageMark, Mark, NaturalMark, PixelSquareMark, RandomPixelsMark, blend
from ..rng import derive, derive_keys, hash_uniform
from ..stats import (
    deciding_round_p_value,
    gaussian_p_value,
    rank_p_value,
    smallest_p_value,
    standardised_gap,
)
from ..verdict import Verdict

METHOD = "isotope"
PURPOSE_MARK = "isotope/mark"
PURPOSE_SELECT = "isotope/select"
PURPOSE_EXTERNAL = "isotope/external"
PURPOSE_AUX_ORDER = "isotope/aux-order"
PURPOSE_PAPER_EXTERNAL = "isotope/paper/external"
PURPOSE_PAPER_SAMPLE = "isotope/paper/sample"

Access = Literal["auto", "probabilities", "topk"]
Procedure = Literal["calibrated", "paper"]
DEFAULT_EXTERNALS = 99
DEFAULT_AUX_PER_MARK = 100
_BATCH = 2048


def _params(key: Key) -> IsotopeParams:
    if key.method != METHOD:
        raise TracemarkError(
            f"this is a {key.method!r} key; the isotope method needs an isotope key"
        )
    return key.typed_params()


def draw_mark(rng: np.random.Generator, params: IsotopeParams) -> Mark:
    """One random mark of the kind the params ask for (a user's file: a natural-bank draw)."""
    if params.mark == "pixel-square":
        return PixelSquareMark.draw(rng, params.square_size)
    if params.mark == "random-pixels":
        return RandomPixelsMark.draw(rng, params.pixel_density)
    return NaturalMark.draw(rng, params.tiles, params.mask)


def key_mark(key: Key) -> Mark:
    """The key owner's mark: the file embedded in the key, or the key's draw from the bank."""
    params = _params(key)
    if params.mark == "image":
        return ImageMark.from_base64(params.image_png, params.image_sha256, params.mask)
    return draw_mark(key.rng(PURPOSE_MARK), params)


def external_marks(key: Key, count: int, purpose: str = PURPOSE_EXTERNAL) -> list[Mark]:
    """``count`` never-published marks from the same bank as the key's (fresh draws)."""
    params = _params(key)
    return [draw_mark(derive(key.seed, purpose, e), params) for e in range(count)]


def select_marked(key: Key, ids: Sequence[int | str]) -> np.ndarray:
    """Which images get the mark: exactly ⌈p·N⌉ of them (at least one), chosen by the key.

    The choice hashes each image's id, so it does not depend on the order of the files.
    """
    params = _params(key)
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=bool)
    count = max(1, int(np.ceil(params.fraction * n - 1e-9)))
    u = hash_uniform(derive_keys(key.seed, PURPOSE_SELECT, list(ids)), np.zeros(n, np.uint64))
    chosen = np.zeros(n, dtype=bool)
    chosen[np.argsort(u, kind="stable")[:count]] = True
    return chosen


def mark(
    images: np.ndarray | Sequence[np.ndarray],
    key: Key,
    ids: Sequence[int | str] | None = None,
) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]:
    """Blend the key's mark into a fraction p of the images; return (new images, which).

    ``images``: (N, H, W, C) or a list of (H, W, C) arrays of any sizes. Unmarked images
    are returned as copies; inputs are never modified. ``ids`` (e.g. relative paths)
    decide which images are marked; defaults to positions.
    """
    params = _params(key)
    n = len(images)
    ids = list(range(n)) if ids is None else list(ids)
    if len(ids) != n:
        raise TracemarkError(f"{len(ids)} ids given for {n} images")
    chosen = select_marked(key, ids)
    t = key_mark(key)
    if isinstance(images, np.ndarray):
        out = np.array(images, dtype=np.float32, copy=True)
        if chosen.any():
            out[chosen] = blend(out[chosen], t, params.visibility)
        return out, chosen
    result = [
        blend(img, t, params.visibility) if c else np.array(img, dtype=np.float32, copy=True)
        for img, c in zip(images, chosen, strict=True)
    ]
    return result, chosen


# ----------------------------------------------------------------------------- scores


def score_mode(response, access: Access) -> Literal["probability", "rank"]:
    """Probabilities when the model reveals them (unless top-K ranks are forced)."""
    if access == "probabilities" and response.mode != "probabilities":
        raise TracemarkError(
            f"--access probabilities was asked for, but the model answers with {response.mode}"
        )
    if access == "topk" or response.mode != "probabilities":
        return "rank"
    return "probability"


def class_scores(response, label: int, mode: Literal["probability", "rank"]) -> np.ndarray:
    """Per-image belief in ``label``: p_y, or minus its rank (K + 1 when absent).

    Negating the rank makes "higher = more belief" in both modes, so every test below
    is one-sided "greater"; reports convert back to ranks.
    """
    if mode == "probability":
        return response.prob_of(label).astype(np.float64)
    return -response.rank_of(label).astype(np.float64)


def query_scores(oracle, images: np.ndarray, label: int, mode, access: Access = "auto"):
    """Scores of ``label`` for ``images``, queried in batches; returns (scores, mode)."""
    parts = []
    for s in range(0, len(images), _BATCH):
        response = oracle.query(images[s : s + _BATCH])
        mode = mode or score_mode(response, access)
        parts.append(class_scores(response, label, mode))
    return np.concatenate(parts), mode


def mark_scores(
    oracle, images: np.ndarray, mark_: Mark, visibility: float, label: int, mode
) -> np.ndarray:
    """Scores of ``label`` on fresh copies of ``images`` carrying ``mark_``."""
    return query_scores(oracle, blend(images, mark_, visibility), label, mode)[0]


# ----------------------------------------------------------------------------- label, aux


@dataclass
class LabelDiscovery:
    """The class the user's images land in, and how confidently."""

    label: int
    share: float  # fraction of the user's images the model puts in that class
    votes: list[int]
    images: int
    source: str


def discover_label(oracle, images: np.ndarray) -> LabelDiscovery:
    """Query the model with the user's images; their majority top-1 class is y."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise TracemarkError("label discovery needs the user's images as an (N, H, W, C) array")
    response = oracle.query(images)
    votes = np.bincount(response.top1(), minlength=response.num_classes)
    label = int(votes.argmax())
    share = float(votes[label] / votes.sum())
    return LabelDiscovery(
        label=label,
        share=share,
        votes=votes.tolist(),
        images=len(images),
        source=f"discovered: the model puts {share:.0%} of your {len(images)} images in it",
    )


@dataclass
class AuxPool:
    """Auxiliary images not of class y, with the model's baseline scores on them."""

    images: np.ndarray
    baseline: np.ndarray  # scores of y on the unmarked images (same order)
    mode: Literal["probability", "rank"]
    considered: int  # aux images looked at
    excluded: int  # of those, excluded as class y
    how: str
    queries: int


def build_aux_pool(
    oracle,
    aux,
    label: int,
    size: int,
    seed: str,
    access: Access = "auto",
) -> AuxPool:
    """Up to ``size`` aux images not of class ``label``, in a key-seeded random order.

    ``aux``: an (N, H, W, C) array (class y is excluded by the model's prediction) or an
    object with ``.images`` and ``.labels`` (excluded by label). The baseline scores come
    from the same queries that filter, so filtering costs nothing extra.
    """
    images = np.asarray(getattr(aux, "images", aux), dtype=np.float32)
    labels = getattr(aux, "labels", None)
    if images.ndim != 4 or len(images) == 0:
        raise TracemarkError("the auxiliary set must be a non-empty (N, H, W, C) image array")
    order = derive(seed, PURPOSE_AUX_ORDER).permutation(len(images))
    start = oracle.queries
    if labels is not None:
        labels = np.asarray(labels)[order]
        keep = order[labels != label][:size]
        if len(keep) == 0:
            raise TracemarkError(f"the auxiliary set has no images outside class {label}")
        considered = int(np.searchsorted(np.cumsum(labels != label), len(keep)) + 1)
        baseline, mode = query_scores(oracle, images[keep], label, None, access)
        return AuxPool(
            images[keep],
            baseline,
            mode,
            considered,
            considered - len(keep),
            "by the labels given",
            oracle.queries - start,
        )
    kept, scores, considered, mode = [], [], 0, None
    while sum(map(len, kept)) < size and considered < len(images):
        chunk = order[considered : considered + max(64, size - sum(map(len, kept)))]
        considered += len(chunk)
        response = oracle.query(images[chunk])
        mode = mode or score_mode(response, access)
        other = response.top1() != label
        kept.append(chunk[other])
        scores.append(class_scores(response, label, mode)[other])
    keep = np.concatenate(kept)[:size]
    if len(keep) == 0:
        raise TracemarkError(
            f"the model puts every auxiliary image in class {label}: give images of other classes"
        )
    return AuxPool(
        images[keep],
        np.concatenate(scores)[:size],
        mode,
        considered,
        considered - sum(map(len, kept)),
        "by the model's prediction",
        oracle.queries - start,
    )


# ----------------------------------------------------------------------------- audits


@dataclass
class ShiftNull:
    """Shifts S of external marks on one model, class and aux pool (shareable between
    audits of that class: e.g. a demo auditing many marks)."""

    shifts: np.ndarray
    label: int
    aux_size: int
    mode: str
    queries: int
    notes: list[str] = field(default_factory=list)


def mark_shift(oracle, pool: AuxPool, mark_: Mark, visibility: float, label: int):
    """S(t): mean change of the y score over the pool when ``mark_`` is blended in.

    Returns (S, per-image shifts).
    """
    shifted = mark_scores(oracle, pool.images, mark_, visibility, label, pool.mode)
    per_image = shifted - pool.baseline
    return float(per_image.mean()), per_image


def external_null(
    oracle,
    pool: AuxPool,
    marks: Sequence[Mark],
    visibility: float,
    label: int,
    progress: Callable[[int], None] | None = None,
) -> ShiftNull:
    """Shifts of the external marks: what a never-published mark's S looks like."""
    start = oracle.queries
    shifts = np.empty(len(marks))
    for i, m in enumerate(marks):
        shifts[i] = mark_shift(oracle, pool, m, visibility, label)[0]
        if progress:
            progress(1)
    return ShiftNull(shifts, label, len(pool.images), pool.mode, oracle.queries - start)


def _describe_mode(mode: str) -> str:
    return "probability of y" if mode == "probability" else "rank of y (top-K; lower is more)"


def _resolve_label(
    oracle, images, label: int | None, carries_mark: np.ndarray | None
) -> tuple[int, str, dict, list[str]]:
    """The class y: given, or the model's majority vote on the user's *unmarked* images.

    A vote that included marked images could be swayed by the mark itself, and y chosen
    because the mark pushes towards it would make the mark's shift towards y look
    special on a model that never saw it. ``carries_mark`` says which images carry it.
    """
    if label is not None:
        return label, "given", {}, []
    if images is None:
        raise TracemarkError("give your images (--marked) so their class can be found, or --label")
    notes = []
    if carries_mark is None:
        notes.append(
            "the class was voted on images some of which may carry your mark; give --label "
            "(or the images' ids) so the vote cannot depend on the mark"
        )
    else:
        carries_mark = np.asarray(carries_mark, dtype=bool)
        if carries_mark.shape != (len(images),):
            raise TracemarkError(f"{carries_mark.size} mark flags for {len(images)} images")
        if carries_mark.all():
            raise TracemarkError(
                "every one of your images carries the mark, so the model's vote on them could "
                "be swayed by the mark itself: give your class with --label"
            )
        images = np.asarray(images)[~carries_mark]
    found = discover_label(oracle, images)
    info = {"label_votes": found.votes, "label_share": found.share}
    source = (
        found.source if carries_mark is None else found.source.replace("images", "unmarked images")
    )
    return found.label, source, info, notes


def audit(
    oracle,
    key: Key,
    images: np.ndarray | None,
    aux,
    *,
    label: int | None = None,
    carries_mark: np.ndarray | None = None,
    alpha: float = 0.01,
    procedure: Procedure = "calibrated",
    externals: int = DEFAULT_EXTERNALS,
    aux_per_mark: int = DEFAULT_AUX_PER_MARK,
    rounds: int = 5,
    round_size: int = 250,
    lam: float = 0.1,
    delta: float = 0.6,
    access: Access = "auto",
    null: ShiftNull | None = None,
    pool: AuxPool | None = None,
    progress: Callable[[int], None] | None = None,
    include_evidence: bool = True,
) -> Verdict:
    """Was the model behind ``oracle`` trained on images carrying this key's mark?

    ``images``: the user's images (published, marked or not), used only to find their
    class y when ``label`` is None: the model's vote on those that do not carry the mark
    (``carries_mark``, e.g. ``select_marked(key, ids)``), so that the mark cannot sway it.
    ``aux``: images of the same domain; class y is
    excluded by label (object with ``.images``/``.labels``) or by the model's prediction
    (plain array). ``procedure``: "calibrated" (exact rank test against ``externals``
    fresh bank marks on ``aux_per_mark`` aux images) or "paper" (the published
    Q-round t-test vote; not calibrated). ``null``/``pool``: precomputed and shared.
    """
    params = _params(key)
    if not 0 < alpha < 1:
        raise TracemarkError(f"alpha must be in (0, 1), got {alpha}")
    start = oracle.queries
    label, label_source, label_info, label_notes = _resolve_label(
        oracle, images, label, carries_mark
    )
    if procedure == "paper":
        return _paper_audit(
            oracle, key, params, aux, label, label_source, label_info, rounds, round_size,
            lam, delta, access, start, include_evidence,
        )  # fmt: skip
    if procedure != "calibrated":
        raise TracemarkError(f"unknown procedure {procedure!r}; use 'calibrated' or 'paper'")
    if null is None and smallest_p_value(externals) > alpha:
        raise TracemarkError(
            f"with {externals} external marks the smallest possible p-value is "
            f"{smallest_p_value(externals):.3g} > alpha = {alpha}; raise --externals"
        )
    if pool is None:
        pool = build_aux_pool(oracle, aux, label, aux_per_mark, key.seed, access)
    elif len(pool.images) == 0:
        raise TracemarkError("the precomputed aux pool is empty")
    mark_ = key_mark(key)
    user_shift, per_image = mark_shift(oracle, pool, mark_, params.visibility, label)
    notes = list(label_notes)
    if null is None:
        marks = external_marks(key, externals)
        null = external_null(oracle, pool, marks, params.visibility, label, progress)
    elif (null.label, null.aux_size, null.mode) != (label, len(pool.images), pool.mode):
        raise TracemarkError(
            f"the precomputed null was measured for label {null.label} on {null.aux_size} aux "
            f"images ({null.mode}); this audit needs label {label}, {len(pool.images)}, {pool.mode}"
        )
    else:
        notes.append("external marks were shared with other audits (precomputed null)")
    if params.mark == "image":
        notes.append(
            "your mark is your own file, not a bank draw: the rank p-value assumes it behaves "
            "like a natural-bank mark on a model that never saw it (approximately exact)"
        )
    if len(pool.images) < aux_per_mark:
        notes.append(f"only {len(pool.images)} aux images outside class {label} were available")
    p_value = rank_p_value(user_shift, null.shifts, "greater")
    p_gauss, z = gaussian_p_value(user_shift, null.shifts, "greater")
    rank = 1 + int(np.count_nonzero(null.shifts > user_shift))
    sign = 1.0 if pool.mode == "probability" else -1.0  # report rank shifts as ranks
    statistics = {
        "procedure": "calibrated",
        "score": _describe_mode(pool.mode),
        "shift": sign * user_shift,
        "external_shift_mean": sign * float(null.shifts.mean()),
        "external_shift_sd": float(null.shifts.std(ddof=1)) if len(null.shifts) > 1 else 0.0,
        "externals": len(null.shifts),
        "rank_among_marks": rank,
        "approx_gaussian_p_value": p_gauss,
        "approx_gaussian_z": z,
        "aux_images": len(pool.images),
        "aux_considered": pool.considered,
        "aux_excluded_as_class_y": pool.excluded,
        "aux_exclusion": pool.how,
        "visibility": params.visibility,
        "mark": mark_.describe(),
        **label_info,
    }
    evidence = (
        {
            "user_per_image_shift": (sign * per_image).tolist(),
            "external_shifts": (sign * null.shifts).tolist(),
        }
        if include_evidence
        else {}
    )
    direction = "raises" if pool.mode == "probability" else "lowers (improves) the rank of"
    return Verdict(
        method=METHOD,
        decision=p_value <= alpha,
        p_value=p_value,
        alpha=alpha,
        label=label,
        label_source=label_source,
        effect=standardised_gap(user_shift, null.shifts),
        effect_description=f"how much more your mark {direction} class {label} than "
        "external marks do, in their standard deviations",
        queries=oracle.queries - start,
        access=pool.mode if pool.mode == "probability" else "top-K ranks",
        test=(
            f"calibrated isotope test: rank of your mark's shift S among {len(null.shifts)} "
            f"never-published bank marks on {len(pool.images)} aux images (exact); "
            f"Gaussian p = {p_gauss:.3g} is an approximation"
        ),
        key_commitment=key.commitment(),
        statistics=statistics,
        evidence=evidence,
        notes=notes,
    )


def paper_rounds(
    oracle,
    pool: AuxPool,
    mark_: Mark,
    externals: Sequence[Mark],
    visibility: float,
    label: int,
    round_size: int,
    seed: str,
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's rounds: paired one-sided t-tests of x ⊕ t against x ⊕ t′_r.

    Each round samples ``round_size`` pool images and blends *fresh copies* with the
    mark and with that round's external mark (the authors blended in place, so their
    external-mark images also carried the first mark, and reused external mark 0).
    Returns (p-values, mean differences) per round.
    """
    p_values, diffs = np.empty(len(externals)), np.empty(len(externals))
    n = min(round_size, len(pool.images))
    for r, ext in enumerate(externals):
        idx = derive(seed, PURPOSE_PAPER_SAMPLE, r).choice(len(pool.images), n, replace=False)
        x = pool.images[idx]
        a = mark_scores(oracle, x, mark_, visibility, label, pool.mode)
        b = mark_scores(oracle, x, ext, visibility, label, pool.mode)
        p_values[r], diffs[r] = paired_greater(a, b), float(np.mean(a - b))
    return p_values, diffs


def paper_vote(p_values: np.ndarray, lam: float, delta: float) -> tuple[float, int, bool]:
    """The paper's decision over Q round p-values: (deciding p, rounds below lambda, vote).

    The vote is "more than delta·Q rounds have p < lambda".
    """
    p_values = np.asarray(p_values, dtype=np.float64)
    counted = int(np.count_nonzero(p_values < lam))
    return deciding_round_p_value(p_values, delta), counted, counted > delta * len(p_values)


def paired_greater(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided paired t-test p-value for mean(a − b) > 0 (1.0 when a − b is constant 0)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if np.allclose(d, d[0]):
        return 0.0 if d[0] > 0 else 1.0
    return float(sps.ttest_rel(a, b, alternative="greater").pvalue)


def _paper_audit(
    oracle, key, params, aux, label, label_source, label_info, rounds, round_size, lam, delta,
    access, start, include_evidence,
) -> Verdict:  # fmt: skip
    if rounds < 1 or round_size < 2 or not 0 < lam < 1 or not 0 <= delta < 1:
        raise TracemarkError("need rounds >= 1, round size >= 2, 0 < lambda < 1, 0 <= delta < 1")
    pool = build_aux_pool(oracle, aux, label, 2 * round_size, key.seed, access)
    externals = external_marks(key, rounds, PURPOSE_PAPER_EXTERNAL)
    p_values, diffs = paper_rounds(
        oracle, pool, key_mark(key), externals, params.visibility, label, round_size, key.seed
    )
    deciding, counted, decision = paper_vote(p_values, lam, delta)
    return Verdict(
        method=METHOD,
        decision=decision,
        p_value=deciding,
        alpha=lam,
        label=label,
        label_source=label_source,
        effect=float(np.mean(diffs)) * (1.0 if pool.mode == "probability" else -1.0),
        effect_description="mean paired difference of the y score, your mark minus external",
        queries=oracle.queries - start,
        access=pool.mode if pool.mode == "probability" else "top-K ranks",
        test=(
            f"paper's procedure: {rounds} rounds of paired one-sided t-tests; decides when more "
            f"than {delta:g}·{rounds} rounds have p < {lam:g}. NOT calibrated: the p-value shown "
            "is the deciding round's and its false-positive rate is far above lambda"
        ),
        key_commitment=key.commitment(),
        statistics={
            "procedure": "paper",
            "score": _describe_mode(pool.mode),
            "round_p_values": p_values.tolist(),
            "rounds_below_lambda": counted,
            "rounds": rounds,
            "round_size": min(round_size, len(pool.images)),
            "lambda": lam,
            "delta": delta,
            "aux_images": len(pool.images),
            "aux_exclusion": pool.how,
            **label_info,
        },
        evidence={"round_mean_differences": diffs.tolist()} if include_evidence else {},
        notes=[
            "the paper's procedure is kept for reproduction; use the calibrated procedure "
            "for a decision whose false-positive rate holds"
        ],
    )


def physical_audit(
    oracle,
    with_mark: np.ndarray,
    without_mark: np.ndarray,
    label: int,
    *,
    alpha: float = 0.01,
    key: Key | None = None,
    access: Access = "auto",
) -> Verdict:
    """Physical-object marks: photos showing the object vs comparable photos without it.

    The two sets are different photos, so the test is Welch's unpaired one-sided t-test
    on the y score. It is valid only if the two folders are otherwise comparable (same
    kinds of scenes, classes and conditions).
    """
    if not 0 < alpha < 1:
        raise TracemarkError(f"alpha must be in (0, 1), got {alpha}")
    start = oracle.queries
    a, mode = query_scores(oracle, np.asarray(with_mark, np.float32), label, None, access)
    b, _ = query_scores(oracle, np.asarray(without_mark, np.float32), label, mode, access)
    if len(a) < 2 or len(b) < 2:
        raise TracemarkError("Welch's test needs at least two photos in each folder")
    if np.ptp(np.r_[a, b]) == 0:
        p_value, t_stat = 1.0, 0.0
    else:
        res = sps.ttest_ind(a, b, equal_var=False, alternative="greater")
        p_value, t_stat = float(res.pvalue), float(res.statistic)
    sign = 1.0 if mode == "probability" else -1.0
    return Verdict(
        method=METHOD,
        decision=p_value <= alpha,
        p_value=p_value,
        alpha=alpha,
        label=label,
        label_source="given",
        effect=t_stat,
        effect_description="Welch t statistic: photos with the object score y higher",
        queries=oracle.queries - start,
        access=mode if mode == "probability" else "top-K ranks",
        test="physical-object mode: Welch's unpaired one-sided t-test (with vs without the mark)",
        key_commitment=key.commitment() if key is not None else "",
        statistics={
            "procedure": "physical",
            "score": _describe_mode(mode),
            "with_mark_mean": sign * float(a.mean()),
            "without_mark_mean": sign * float(b.mean()),
            "with_mark_images": len(a),
            "without_mark_images": len(b),
        },
        notes=["valid only if both folders show comparable scenes apart from the object"],
    )


@dataclass
class Distinction:
    """V_D: pairwise one-sided paired tests between marks known to a third party."""

    labels: list[int]
    p_values: np.ndarray  # [j, k]: p of "t_j shifts y_j more than t_k does"
    alpha: float
    queries: int

    @property
    def distinguished(self) -> np.ndarray:
        """[j, k] True when both directions hold at alpha (an intersection-union test)."""
        ok = self.p_values <= self.alpha
        both = ok & ok.T
        np.fill_diagonal(both, False)
        return both

    def all_distinguished(self) -> bool:
        m = len(self.labels)
        return bool(self.distinguished.sum() == m * (m - 1))


def distinguish(
    oracle,
    marks: Sequence[Mark],
    labels: Sequence[int],
    aux: np.ndarray,
    visibility: float | Sequence[float] = 0.4,
    *,
    alpha: float = 0.01,
    aux_labels: np.ndarray | None = None,
    access: Access = "auto",
) -> Distinction:
    """For marks t_j (class y_j): does t_j shift y_j more than t_k does, and the reverse?

    Each mark is blended into the same aux images once; the test for (j, k) uses aux
    images of neither class (by ``aux_labels``, else by the unmarked prediction).
    """
    if len(marks) != len(labels) or len(marks) < 2:
        raise TracemarkError("distinguish needs at least two marks, each with its class")
    aux = np.asarray(aux, dtype=np.float32)
    vis = [visibility] * len(marks) if np.isscalar(visibility) else list(visibility)
    start = oracle.queries
    base = oracle.query(aux)
    mode = score_mode(base, access)
    classes = aux_labels if aux_labels is not None else base.top1()
    responses = [
        [oracle.query(blend(aux[s : s + _BATCH], m, v)) for s in range(0, len(aux), _BATCH)]
        for m, v in zip(marks, vis, strict=True)
    ]
    from ..oracle import Response

    merged = [Response.concat(r) for r in responses]
    m = len(marks)
    p = np.ones((m, m))
    for j in range(m):
        for k in range(m):
            if j == k:
                continue
            keep = (classes != labels[j]) & (classes != labels[k])
            if keep.sum() < 2:
                raise TracemarkError("too few aux images outside both marks' classes")
            a = class_scores(merged[j].take(keep), labels[j], mode)
            b = class_scores(merged[k].take(keep), labels[j], mode)
            p[j, k] = paired_greater(a, b)
    return Distinction(list(labels), p, alpha, oracle.queries - start)
