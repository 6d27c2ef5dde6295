"""The calibrated isotope audit: the key's mark ranked among never-published marks.

A model trained on marked images learns "mark => the owner's class y", so blending the
mark into images of *other* classes raises the model's belief in y. The audit measures
that shift, S(t) = mean over auxiliary images of [p_y(x ⊕ t) − p_y(x)], and ranks it
among the shifts of E *external* marks: fresh draws from the same bank that were never
published. The key's mark is itself one random draw from that bank, so when the model
never saw it, its S is exchangeable with theirs and the rank p-value is exact. The
paper's procedure (:mod:`.paper`) is kept for reproduction only: it is not calibrated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import TracemarkError
from ...keys import Key
from ...options import resolve
from ...stats import SequentialRank, gaussian_p_value, rank_p_value, standardised_gap
from ...verdict import Verdict
from ..base import Progress, build_verdict, check_budget, check_key, check_reachable
from .mark import NAME, external_marks, key_mark
from .options import IsotopeOptions
from .paper import paper_audit
from .params import IsotopeParams
from .scores import (
    AuxPool,
    LabelChoice,
    ShiftNull,
    build_aux_pool,
    describe_mode,
    external_null,
    mark_shift,
    resolve_label,
)


def audit(
    oracle,
    key: Key,
    images: np.ndarray | None,
    aux,
    *,
    label: int | None = None,
    carries_mark: np.ndarray | None = None,
    options: IsotopeOptions | None = None,
    null: ShiftNull | None = None,
    pool: AuxPool | None = None,
    progress: Progress | None = None,
    **changes: Any,
) -> Verdict:
    """Was the model behind ``oracle`` trained on images carrying this key's mark?

    ``images``: the user's images (published, marked or not), used only to find their
    class y when ``label`` is None: the model's vote on those that do not carry the mark
    (``carries_mark``, e.g. ``select_marked(key, ids)``), so that the mark cannot sway it.
    ``aux``: images of the same domain; class y is excluded by label (object with
    ``.images``/``.labels``) or by the model's prediction (plain array). ``options`` (or
    its fields as keywords): :class:`IsotopeOptions`; "calibrated" ranks the mark among
    fresh bank marks (sequentially, or exactly ``fixed``) on ``aux_per_mark`` aux images each;
    "paper" runs the
    published Q-round t-test vote (not calibrated). ``null``/``pool``: precomputed and
    shared between audits of one model and class (the verdict says so).
    """
    options = resolve(IsotopeOptions, options, changes)
    check_key(key, NAME)
    if options.procedure == "calibrated":
        remedy = "raise --externals or --fixed"
        check_reachable(options.cap, options.alpha, "external marks", remedy)
    check_budget(oracle, *most_queries(options, images, aux, label, carries_mark, null, pool))
    start = oracle.queries
    choice = resolve_label(oracle, images, label, carries_mark)
    if options.procedure == "paper":
        return paper_audit(oracle, key, aux, choice, options, start)
    if options.procedure != "calibrated":
        raise TracemarkError("physical mode compares two folders: use physical_audit()")
    y = choice.label
    if pool is None:
        pool = build_aux_pool(oracle, aux, y, options.aux_per_mark, key.seed, options.access)
    elif len(pool.images) == 0:
        raise TracemarkError("the precomputed aux pool is empty")
    params: IsotopeParams = key.typed_params()
    mark_ = key_mark(key)
    user_shift, per_image = mark_shift(oracle, pool, mark_, params.visibility, y)
    notes = list(choice.notes)
    sequential = None
    if options.sequential:
        h = min(options.stop_after, options.cap)
        sequential = SequentialRank(user_shift, h, options.cap, alternative="greater")
    if null is None:
        null = _external_shifts(oracle, pool, key, options.cap, y, progress, sequential)
    elif (null.label, null.aux_size, null.mode) != (y, len(pool.images), pool.mode):
        raise TracemarkError(
            f"the precomputed null was measured for label {null.label} on {null.aux_size} aux "
            f"images ({null.mode}); this audit needs label {y}, {len(pool.images)}, {pool.mode}"
        )
    else:
        notes.append("external marks were shared with other audits (precomputed null)")
        if sequential is not None:  # read the shared draws in order, up to the cap
            n = min(options.cap, len(null.shifts))
            sequential = SequentialRank(user_shift, min(sequential.h, n), n, "greater")
            sequential.add(null.shifts)
    if params.mark == "image":
        notes.append(
            "your mark is your own file, not a bank draw: the rank p-value assumes it behaves "
            "like a natural-bank mark on a model that never saw it (approximately exact)"
        )
    if len(pool.images) < options.aux_per_mark:
        notes.append(f"only {len(pool.images)} aux images outside class {y} were available")
    used = sequential.draws if sequential is not None else len(null.shifts)
    shifts = Shifts(user_shift, per_image, null, pool, mark_.describe(), used, sequential)
    return _verdict(key, options, choice, shifts, notes, oracle.queries - start)


def most_queries(
    options: IsotopeOptions,
    images: np.ndarray | None,
    aux,
    label: int | None,
    carries_mark: np.ndarray | None,
    null: ShiftNull | None = None,
    pool: AuxPool | None = None,
) -> tuple[int, str, str]:
    """The most images an audit with these options and inputs sends, before it sends any:
    (count, how it adds up, what lowers it)."""
    parts: list[str] = []
    most = 0
    if label is None and images is not None:
        vote = len(images) - (0 if carries_mark is None else int(np.sum(carries_mark)))
        most += vote
        parts.append(f"{vote} to find your class")
    aux_n = len(getattr(aux, "images", aux)) if aux is not None else 0
    labelled = getattr(aux, "labels", None) is not None
    if options.procedure == "paper":
        size, rounds = 2 * options.round_size, options.rounds
        pooled = 0 if pool is not None else (min(size, aux_n) if labelled else aux_n)
        n = min(options.round_size, size)
        most += pooled + 2 * rounds * n
        parts.append(f"{pooled} aux images, then {rounds} rounds of 2 x {n}")
        return most, ", ".join(parts), "lower --rounds"
    per_mark = options.aux_per_mark if pool is None else len(pool.images)
    pooled = 0 if pool is not None else (min(per_mark, aux_n) if labelled else aux_n)
    externals = 0 if null is not None else options.cap
    most += pooled + (1 + externals) * per_mark
    parts.append(
        f"{pooled} aux images, then your mark and up to {externals:,} external marks on "
        f"{per_mark} of them each"
    )
    return most, ", ".join(parts), "lower --externals (or --fixed) or --aux-per-mark"


def _external_shifts(
    oracle,
    pool: AuxPool,
    key: Key,
    cap: int,
    label: int,
    progress: Progress | None,
    sequential: SequentialRank | None,
) -> ShiftNull:
    """Shifts of up to ``cap`` external marks, drawn a batch at a time and stopped as
    soon as ``sequential`` stops (external e is the same draw whatever the batches)."""
    params: IsotopeParams = key.typed_params()
    start, drawn, size = oracle.queries, 0, 1 if sequential is None else sequential.h
    parts = []
    while drawn < cap and not (sequential is not None and sequential.done):
        marks = external_marks(key, min(size, cap - drawn), start=drawn)
        for m in marks:
            null = external_null(oracle, pool, [m], params.visibility, label, progress)
            parts.append(null.shifts)
            drawn += 1
            if sequential is not None and sequential.add(null.shifts):
                break
        size = min(2 * size, 64)
    shifts = np.concatenate(parts)
    return ShiftNull(shifts, label, len(pool.images), pool.mode, oracle.queries - start)


@dataclass
class Shifts:
    """The key's mark's shift (overall and per aux image) beside the externals' shifts."""

    user: float
    per_image: np.ndarray
    null: ShiftNull
    pool: AuxPool
    mark: str  # what the key's mark is
    used: int  # the external marks the p-value ranks the key's among
    sequential: SequentialRank | None = None

    @property
    def sign(self) -> float:
        """Rank shifts are reported as ranks (lower is more), probability shifts as they are."""
        return 1.0 if self.pool.mode == "probability" else -1.0


def _verdict(key, options, choice: LabelChoice, s: Shifts, notes, queries: int) -> Verdict:
    params: IsotopeParams = key.typed_params()
    pool, shifts = s.pool, s.null.shifts[: s.used]
    p_gauss, z = gaussian_p_value(s.user, shifts, "greater")
    if s.sequential is None:
        p_value = rank_p_value(s.user, shifts, "greater")
        rule = {"rule": "fixed"}
        how = f"{len(shifts)} never-published bank marks"
    else:
        q = s.sequential
        p_value = q.p_value()
        stopped = "stopped early" if q.extreme >= q.h else "reached its cap"
        rule = {
            "rule": "sequential (Besag-Clifford)",
            "stop_after": q.h,
            "cap": q.n_max,
            "at_least_as_large": q.extreme,
            "trace": [list(t) for t in q.trace],
        }
        how = (
            f"never-published bank marks, sequential (Besag-Clifford, h = {q.h}, cap "
            f"{q.n_max}): {stopped} after {q.draws}"
        )
    statistics = {
        "procedure": "calibrated",
        **rule,
        "score": describe_mode(pool.mode),
        "shift": s.sign * s.user,
        "external_shift_mean": s.sign * float(shifts.mean()),
        "external_shift_sd": float(shifts.std(ddof=1)) if len(shifts) > 1 else 0.0,
        "externals": len(shifts),
        "rank_among_marks": 1 + int(np.count_nonzero(shifts > s.user)),
        "approx_gaussian_p_value": p_gauss,
        "approx_gaussian_z": z,
        "aux_images": len(pool.images),
        "aux_considered": pool.considered,
        "aux_excluded_as_class_y": pool.excluded,
        "aux_exclusion": pool.how,
        "visibility": params.visibility,
        "mark": s.mark,
        **choice.info,
    }
    direction = "raises" if pool.mode == "probability" else "lowers (improves) the rank of"
    return build_verdict(
        NAME,
        key,
        options,
        p_value=p_value,
        queries=queries,
        evidence={
            "user_per_image_shift": (s.sign * s.per_image).tolist(),
            "external_shifts": (s.sign * s.null.shifts).tolist(),
        },
        label=choice.label,
        label_source=choice.source,
        effect=standardised_gap(s.user, shifts),
        effect_description=f"how much more your mark {direction} class {choice.label} than "
        "external marks do, in their standard deviations",
        access=pool.mode if pool.mode == "probability" else "top-K ranks",
        test=(
            f"calibrated isotope test: rank of your mark's shift S among {how}, on "
            f"{len(pool.images)} aux images (exact); Gaussian p = {p_gauss:.3g} is an "
            "approximation"
        ),
        statistics=statistics,
        notes=notes,
    )
