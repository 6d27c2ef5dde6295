"""The isotope paper's own verifier, kept for reproduction: Q rounds of paired t-tests.

Each round compares the y scores of aux images carrying the key's mark with the same
images carrying that round's external mark; the verifier says "trained on" when more than
delta·Q rounds have p < lambda. The tracker paper (Appendix D) measured 35.8% false
positives for it, and docs/results.md measures it here: it is not calibrated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...keys import Key
from ...rng import derive
from ...stats import deciding_round_p_value, paired_greater
from ...verdict import Verdict
from ..base import build_verdict, check_key
from .mark import NAME, PURPOSE_PAPER_EXTERNAL, external_marks, key_mark
from .marks import Mark
from .options import IsotopeOptions
from .params import IsotopeParams
from .scores import AuxPool, LabelChoice, build_aux_pool, describe_mode, mark_scores

PURPOSE_PAPER_SAMPLE = "isotope/paper/sample"


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


def paper_audit(
    oracle,
    key: Key,
    aux,
    label: LabelChoice,
    options: IsotopeOptions,
    start: int,
) -> Verdict:
    """The paper's procedure: a vote over Q rounds of paired t-tests (not calibrated)."""
    params: IsotopeParams = check_key(key, NAME)
    q, n = options.rounds, options.round_size
    pool = build_aux_pool(oracle, aux, label.label, 2 * n, key.seed, options.access)
    externals = external_marks(key, q, PURPOSE_PAPER_EXTERNAL)
    p_values, diffs = paper_rounds(
        oracle, pool, key_mark(key), externals, params.visibility, label.label, n, key.seed
    )
    deciding, counted, decision = paper_vote(p_values, options.lam, options.delta)
    return build_verdict(
        NAME,
        key,
        options,
        p_value=deciding,
        queries=oracle.queries - start,
        evidence={"round_mean_differences": diffs.tolist()},
        decision=decision,
        alpha=options.lam,
        label=label.label,
        label_source=label.source,
        effect=float(np.mean(diffs)) * (1.0 if pool.mode == "probability" else -1.0),
        effect_description="mean paired difference of the y score, your mark minus external",
        access=pool.mode if pool.mode == "probability" else "top-K ranks",
        test=(
            f"paper's procedure: {q} rounds of paired one-sided t-tests; decides when more "
            f"than {options.delta:g}·{q} rounds have p < {options.lam:g}. NOT calibrated: the "
            "p-value shown is the deciding round's and its false-positive rate is far above lambda"
        ),
        statistics={
            "procedure": "paper",
            "score": describe_mode(pool.mode),
            "round_p_values": p_values.tolist(),
            "rounds_below_lambda": counted,
            "rounds": q,
            "round_size": min(n, len(pool.images)),
            "lambda": options.lam,
            "delta": options.delta,
            "aux_images": len(pool.images),
            "aux_exclusion": pool.how,
            **label.info,
        },
        notes=[
            "the paper's procedure is kept for reproduction; use the calibrated procedure "
            "for a decision whose false-positive rate holds"
        ],
    )
