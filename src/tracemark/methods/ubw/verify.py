"""Verifying a UBW watermark: does the trigger cost the model its correct answers?

The verification queries m correctly classified test images with and without the
trigger. With probabilities it runs the paper's margin paired t-test (tau = 0.25) on the
true-class probability; with top-K or label-only access it tests whether labels flip
under the trigger more than tau more often than under a never-published control trigger
(an exact, conservative test). A calibration ranks the key's trigger among
never-published triggers of the same kind: always for triggers drawn from the key (blends,
UBW-C's patches), on request for the paper's public corner pattern.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...datasets import LabelledImages
from ...errors import TracemarkError
from ...images import quantize
from ...keys import Key
from ...options import resolve
from ...oracle.response import Response
from ...stats import (
    SEQUENTIAL_STOP,
    SequentialRank,
    margin_flip_test,
    margin_paired_ttest,
    sequential_cap,
)
from ...verdict import Verdict
from ..base import build_verdict, check_budget, check_key, check_reachable, resolve_access
from .key_trigger import NAME, TriggerChoice, Which, make_trigger, uses_public_patch
from .metrics import watermark_metrics
from .options import UbwOptions
from .params import UbwParams
from .triggers import random_positions

PURPOSE_VERIFY_ORDER = "ubw/verify-order"
PURPOSE_VERIFY_POSITIONS = "ubw/verify-positions"

# A flag with the public corner pattern shows training on *a* release carrying it.
CORNER_NOTE = (
    "the corner trigger is the paper's public pattern: a flag means the model was trained "
    "on a release carrying it, not necessarily yours"
)
# Keys made before 0.7.0 carry the paper's public patch pattern, which a model may react to
# more than to random patterns without having seen it (measured: tests/test_ubw_calibration).
PUBLIC_PATCH_NOTE = (
    "this UBW-C key (made before 0.7.0) uses the paper's public patch pattern: a flag means "
    "the model was trained on a release carrying it, or reacts to it more than to random "
    "patterns; the calibration is exact for keys that draw their pattern (watermark again "
    "with tracemark 0.7.0 or later)"
)
# Triggers drawn from the key are always ranked among never-published ones of their kind
# (measured: docs/methods/ubw.md, "Caveat: what a flag shows"): a noise blend costs any
# model true-class probability, so the margin test alone flags clean models; a model
# trained on a UBW-C release loses true-class probability to *any* randomly placed patch,
# so the margin test alone flagged a never-published UBW-C trigger at p = 3.3e-4.
ALWAYS_CALIBRATED = {
    "blended": (
        "blended triggers are always calibrated against never-published noise blends: a "
        "noise blend costs any model true-class probability, so the margin test alone would "
        "flag clean models"
    ),
    "patch": (
        "UBW-C's patch triggers are always calibrated against never-published patches: a "
        "model trained on any UBW-C release loses true-class probability to any randomly "
        "placed patch, so the margin test alone would flag it for keys that published nothing"
    ),
}


def triggered(key: Key, images: np.ndarray, which: Which) -> np.ndarray:
    """8-bit copies of ``images`` carrying the key's trigger, or a never-published one."""
    trigger = make_trigger(key, tuple(images.shape[1:]), which)
    positions = None
    if trigger.placement == "random" and trigger.kind == "patch":
        positions = random_positions(
            key.rng(PURPOSE_VERIFY_POSITIONS), len(images), *images.shape[1:3], trigger.size
        )
    return quantize(trigger.apply(images, positions))


def select_correct(
    oracle,
    key: Key,
    test: LabelledImages,
    m: int,
    exclude: int | None,
    limit: int | None = None,
) -> tuple[np.ndarray, Response, int]:
    """Up to ``m`` test images the model classifies correctly, in a key-derived order.

    Queries in batches of ``m`` until enough are found, looking at no more than ``limit``
    images (what the query budget leaves for the search). Returns (indices, their clean
    responses, number of clean images queried).
    """
    order = key.rng(PURPOSE_VERIFY_ORDER, len(test)).permutation(len(test))
    if exclude is not None:
        order = order[test.labels[order] != exclude]
    chosen: list[np.ndarray] = []
    responses = []
    found, queried = 0, 0
    if limit is not None:
        order = order[:limit]
    while found < m and queried < order.size:
        batch = order[queried : queried + m]
        queried += batch.size
        resp = oracle.query(test.images[batch])
        ok = np.flatnonzero(resp.top1() == test.labels[batch])[: m - found]
        chosen.append(batch[ok])
        responses.append(resp.take(ok))
        found += ok.size
    idx = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    return idx, Response.concat(responses), queried


@dataclass
class Outcome:
    """One verification's test: its p-value, effect and what a verdict says about it."""

    p_value: float
    effect: float
    effect_description: str
    test: str
    access: str
    statistics: dict[str, Any]
    evidence: dict[str, Any]
    statistic: Callable[[Response], float]  # ΔP or the flip rate of one trigger's answers
    notes: list[str] = field(default_factory=list)


def probability_test(
    clean: Response, triggered_: Response, y: np.ndarray, tau: float, what: str
) -> Outcome:
    """The paper's margin paired t-test on the true-class probability."""
    p_b, p_p = clean.prob_of(y), triggered_.prob_of(y)
    p_value, t, delta_p = margin_paired_ttest(p_b, p_p, tau)
    return Outcome(
        p_value=p_value,
        effect=delta_p,
        effect_description="ΔP: mean drop of the true-class probability under " + what,
        test=(
            f"margin paired t-test (one-sided, tau = {tau}) on the true-class probability of "
            f"{len(y)} correctly classified test images with and without {what}"
        ),
        access="probabilities",
        statistics={
            "tau": tau,
            "t": t,
            "delta_p": delta_p,
            "mean_p_benign": float(p_b.mean()),
            "mean_p_triggered": float(p_p.mean()),
        },
        evidence={"p_benign": p_b.tolist(), "p_triggered": p_p.tolist()},
        statistic=lambda resp: float(np.mean(p_b - resp.prob_of(y))),
    )


def flip_test(
    triggered_: Response, control: Response, y: np.ndarray, tau: float, what: str
) -> Outcome:
    """The label-only test: flips under the trigger against flips under a control trigger."""
    flips, control_flips = triggered_.top1() != y, control.top1() != y
    p_value, control_bound = margin_flip_test(flips, control_flips, tau)
    return Outcome(
        p_value=p_value,
        effect=float(flips.mean() - control_flips.mean()),
        effect_description=f"label flip rate under {what} minus under a control trigger",
        test=(
            f"exact margin test on label flips (tau = {tau}) of {len(y)} correctly "
            f"classified test images: {what} vs a never-published control trigger"
        ),
        access="label flips (top-1 only)",
        statistics={
            "tau": tau,
            "flip_rate": float(flips.mean()),
            "control_flip_rate": float(control_flips.mean()),
            "control_flip_upper_bound": control_bound,
        },
        evidence={
            "flipped": flips.astype(int).tolist(),
            "control_flipped": control_flips.astype(int).tolist(),
        },
        statistic=lambda resp: float(np.mean(resp.top1() != y)),
    )


def calibrate(
    oracle, key: Key, images: np.ndarray, own: Response, outcome: Outcome, null_triggers: int
) -> None:
    """Rank the key's trigger among up to ``null_triggers`` never-published ones (same
    statistic), read one at a time with the sequential rank test (Besag and Clifford: a
    model that reacts to any such patch stops after a few dozen); the outcome's p-value
    becomes the larger of the two tests'."""
    mine = outcome.statistic(own)
    test = SequentialRank(mine, min(SEQUENTIAL_STOP, null_triggers), null_triggers, "greater")
    null: list[float] = []
    while not test.done:
        null.append(outcome.statistic(oracle.query(triggered(key, images, len(null)))))
        test.add(np.array(null[-1:]))
    rank_p = test.p_value()
    outcome.statistics |= {
        "margin_test_p_value": outcome.p_value,
        "calibrated_p_value": rank_p,
        "null_triggers": null_triggers,
        "null_triggers_used": test.draws,
        "null_statistic_mean": float(np.mean(null)),
        "null_statistic_max": float(np.max(null)),
    }
    outcome.evidence["null_statistics"] = null
    outcome.p_value = max(outcome.p_value, rank_p)
    outcome.test += (
        f"; calibrated against up to {null_triggers} never-published triggers of the same kind "
        f"(sequential rank test, h = {test.h}: {test.draws} read); p = the larger of the two"
    )


def verify(
    oracle,
    key: Key,
    test: LabelledImages,
    *,
    options: UbwOptions | None = None,
    **changes: Any,
) -> Verdict:
    """Was the model behind ``oracle`` trained on this key's watermarked release?

    ``test``: labelled images the model never trained on (a test split). ``options``
    (or its fields as keywords): :class:`UbwOptions`. ``trigger`` "independent" runs the
    Independent-T negative control with a never-published trigger. Probabilities: margin
    paired t-test on p_y(x) vs p_y(G(x)). Top-K or label only: exact margin test of flips
    under G against flips under a control trigger.

    ``null_triggers`` = J > 0 adds a calibration: the same statistic (ΔP, or the flip
    rate) for J never-published triggers of the same kind at the same places, and the
    rank p-value of the key's trigger among them; the verdict's p-value is then the larger
    of the two (both tests must reject). It guards against models that react to *any*
    such patch (occlusion), at up to J * m more queries (the triggers are read sequentially:
    a model that does not single the key's trigger out stops after a few dozen). Blended
    and UBW-C (patch) keys are always calibrated (J = 10/alpha unless given): a noise
    blend alone fails the margin test on clean models, and a model trained on any UBW-C
    release fails it for any patch.
    """
    options = resolve(UbwOptions, options, changes)
    params: UbwParams = check_key(key, NAME)
    null_triggers = options.null_triggers
    calibrate_by_default = params.trigger in ALWAYS_CALIBRATED and not null_triggers
    if calibrate_by_default:
        null_triggers = sequential_cap(options.alpha)
    if null_triggers:
        check_reachable(null_triggers, options.alpha, "null triggers", "use more")
    if params.image_shape is not None and tuple(test.images.shape[1:]) != params.image_shape:
        raise TracemarkError(
            f"test images are {tuple(test.images.shape[1:])} but the release was "
            f"{tuple(params.image_shape)}; give the test split of the watermarked dataset"
        )
    search = _check_budget(oracle, options, null_triggers)
    start = oracle.queries
    idx, clean, _ = select_correct(
        oracle, key, test, options.m, params.target if params.targeted else None, search
    )
    if idx.size < 2:
        raise TracemarkError(
            f"the model classified only {idx.size} test image(s) correctly; verification "
            "needs at least 2"
        )
    outcome = _test(oracle, key, test, idx, clean, options, null_triggers)
    notes = []
    if idx.size < options.m:
        notes.append(f"only {idx.size} correctly classified test images (asked for {options.m})")
    if options.trigger == "key" and params.trigger == "corner":
        notes.append(CORNER_NOTE)
    if options.trigger == "key" and uses_public_patch(key, params):
        notes.append(PUBLIC_PATCH_NOTE)
    if calibrate_by_default:
        drawn = "blends" if params.trigger == "blended" else "patches"
        notes.append(
            f"{ALWAYS_CALIBRATED[params.trigger]} ({null_triggers} never-published {drawn}, "
            "m queries each)"
        )
    outcome.statistics = {
        "m": int(idx.size),
        "trigger": options.trigger,
        "variant": params.variant,
        "trigger_kind": params.trigger,
        **outcome.statistics,
    }
    outcome.evidence["test_indices"] = idx.tolist()
    return build_verdict(
        NAME,
        key,
        options,
        p_value=outcome.p_value,
        queries=oracle.queries - start,
        evidence=outcome.evidence,
        effect=outcome.effect,
        effect_description=outcome.effect_description,
        access=outcome.access,
        test=outcome.test,
        statistics=outcome.statistics,
        notes=notes,
    )


def _check_budget(oracle, options: UbwOptions, null_triggers: int) -> int | None:
    """Refuse before any query a verification the budget cannot pay for; return how many
    clean test images the search for correctly classified ones may look at (None: any)."""
    m = options.m
    control = options.access != "probabilities"  # label-only answers need a control trigger
    rest = m * (1 + control + null_triggers)
    parts = f"at least {m} clean test images, {m} with the trigger" + (
        f", {m} with a control trigger" * control
    )
    if null_triggers:
        parts += f", up to {null_triggers:,} never-published triggers of {m}"
    check_budget(oracle, m + rest, parts, "lower --m or --null-triggers")
    left = getattr(oracle, "remaining", None)
    if left is None:
        return None
    return max(m, left + int(getattr(oracle, "answers_on_hand", 0)) - rest)


def _test(
    oracle,
    key: Key,
    test: LabelledImages,
    idx: np.ndarray,
    clean: Response,
    options: UbwOptions,
    null_triggers: int,
) -> Outcome:
    """Query the chosen images with the trigger and run the access mode's test."""
    images, y = test.images[idx], test.labels[idx]
    full = resolve_access(options.access, clean) == "full"
    own = oracle.query(triggered(key, images, options.trigger))
    what = "the key's trigger" if options.trigger == "key" else "an independent trigger"
    if full:
        outcome = probability_test(clean, own, y, options.tau, what)
    else:
        control = oracle.query(triggered(key, images, "control"))
        outcome = flip_test(own, control, y, options.tau, what)
    if null_triggers:
        calibrate(oracle, key, images, own, outcome, null_triggers)
    return outcome


def report(
    predict_probs: Callable[[np.ndarray], np.ndarray],
    key: Key,
    test: LabelledImages,
    which: TriggerChoice = "key",
) -> dict[str, float | int]:
    """BA, ASR-A, ASR-C, D_p, D_s, D_c of a model (full probabilities) on ``test``."""
    params: UbwParams = check_key(key, NAME)
    clean = predict_probs(test.images)
    trig = predict_probs(triggered(key, test.images, which))
    return watermark_metrics(clean, trig, test.labels, params.target if params.targeted else None)
