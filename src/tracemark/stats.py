"""Statistics on plain arrays: p-values and detection metrics. No model code here."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from .errors import TracemarkError


def rank_p_value(
    observed: float, null: np.ndarray, alternative: Literal["less", "greater"] = "greater"
) -> float:
    """Exact Monte-Carlo p-value of ``observed`` against null draws exchangeable with it.

    ``(1 + #{null at least as extreme}) / (N + 1)``: valid (never anti-conservative)
    for any N, ties counted against the observer.
    """
    null = np.asarray(null, dtype=np.float64).ravel()
    if null.size == 0:
        raise TracemarkError("the null distribution is empty")
    if not np.all(np.isfinite(null)) or not np.isfinite(observed):
        raise TracemarkError("non-finite score in a rank test")
    if alternative == "greater":
        extreme = np.count_nonzero(null >= observed)
    elif alternative == "less":
        extreme = np.count_nonzero(null <= observed)
    else:
        raise ValueError(f"alternative must be 'less' or 'greater', not {alternative!r}")
    return float((1 + extreme) / (null.size + 1))


SEQUENTIAL_STOP = 10  # Besag-Clifford h: stop once this many null draws are as extreme


class SequentialRank:
    """Besag and Clifford's sequential Monte Carlo p-value (Biometrika 78, 1991).

    Null draws exchangeable with the observed score arrive one at a time (or in batches,
    read in order). The test stops at the ``h``-th draw at least as extreme as the
    observed one, after ``L`` draws, with p = h / L; or after ``n_max`` draws with
    ``g < h`` such draws, with p = (g + 1) / (n_max + 1). Under the null the observed
    score's rank among the draws is uniform, and this p-value is valid at every level,
    P(p <= u) <= u, with ties counted against the observer. An innocent model (p spread
    over [0, 1]) stops after about h (1 + ln(n_max / h)) draws; a model that learned the
    mark goes on to ``n_max`` and reaches p = 1 / (n_max + 1). Draws past the stopping
    point (the rest of a batch) are ignored, so batching changes the cost, not the p-value.
    """

    def __init__(
        self,
        observed: float,
        h: int,
        n_max: int,
        alternative: Literal["less", "greater"] = "greater",
    ) -> None:
        if h < 1 or n_max < h:
            raise TracemarkError(f"need 1 <= h <= n_max, got h = {h}, n_max = {n_max}")
        if alternative not in ("less", "greater"):
            raise ValueError(f"alternative must be 'less' or 'greater', not {alternative!r}")
        if not np.isfinite(observed):
            raise TracemarkError("non-finite score in a rank test")
        self.observed, self.h, self.n_max, self.alternative = observed, h, n_max, alternative
        self.draws = 0  # draws read (the stopping point, once done)
        self.extreme = 0  # of them at least as extreme as the observed score
        self.trace: list[tuple[int, int]] = []  # (draws, extreme) after each batch

    @property
    def done(self) -> bool:
        return self.extreme >= self.h or self.draws >= self.n_max

    def wanted(self) -> int:
        """How many more draws could matter (0 once the test has stopped)."""
        return 0 if self.done else self.n_max - self.draws

    def add(self, null: np.ndarray) -> bool:
        """Read draws in order until the test stops; return whether it has."""
        null = np.asarray(null, dtype=np.float64).ravel()[: self.wanted()]
        if not np.all(np.isfinite(null)):
            raise TracemarkError("non-finite score in a rank test")
        hits = null >= self.observed if self.alternative == "greater" else null <= self.observed
        cumulative = self.extreme + np.cumsum(hits)
        stop = np.flatnonzero(cumulative >= self.h)
        used = int(stop[0]) + 1 if stop.size else null.size
        self.draws += used
        self.extreme = int(cumulative[used - 1]) if used else self.extreme
        self.trace.append((self.draws, self.extreme))
        return self.done

    def p_value(self) -> float:
        """The p-value once stopped (h / L, or (g + 1) / (n_max + 1) at the cap)."""
        if not self.done:
            raise TracemarkError("the sequential test has not stopped yet")
        if self.extreme >= self.h:
            return self.h / self.draws
        return (self.extreme + 1) / (self.n_max + 1)


def sequential_rank_p_value(
    observed: float,
    null: np.ndarray,
    h: int,
    n_max: int | None = None,
    alternative: Literal["less", "greater"] = "greater",
) -> tuple[float, int]:
    """Besag-Clifford p-value of ``observed`` against ``null`` draws read in order
    (see :class:`SequentialRank`); returns (p-value, draws used). ``n_max`` defaults
    to every draw given."""
    null = np.asarray(null, dtype=np.float64).ravel()
    test = SequentialRank(observed, h, null.size if n_max is None else n_max, alternative)
    test.add(null)
    return test.p_value(), test.draws


def sequential_cap(alpha: float, resolution: float = 10.0) -> int:
    """The draws a sequential test may use so that p can fall ``resolution`` times below
    ``alpha``: ceil(resolution / alpha) (1,000 at 0.01)."""
    return max(1, math.ceil(resolution / alpha - 1e-9))


def smallest_p_value(n_null: int) -> float:
    """The smallest p-value a rank test against ``n_null`` draws can return."""
    return 1.0 / (n_null + 1)


def calibration_size(alpha: float) -> int:
    """The fewest null draws whose rank test can reach ``alpha`` (99 at 0.01)."""
    n = max(1, math.ceil(1 / alpha) - 1)
    while smallest_p_value(n) > alpha:  # 1/alpha can round below the true count
        n += 1
    return n


def standardised_gap(observed: float, null: np.ndarray) -> float:
    """(observed - mean(null)) / sd(null): an effect size in null standard deviations."""
    null = np.asarray(null, dtype=np.float64)
    sd = float(null.std(ddof=1)) if null.size > 1 else 0.0
    return float((observed - null.mean()) / max(sd, 1e-12))


def _labels_scores(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    positives, negatives = np.ravel(positives), np.ravel(negatives)
    if positives.size == 0 or negatives.size == 0:
        raise TracemarkError("need at least one positive and one negative score")
    y = np.r_[np.ones(positives.size), np.zeros(negatives.size)]
    return y, np.r_[positives, negatives].astype(np.float64)


def fpr_at_tpr(positives: np.ndarray, negatives: np.ndarray, tpr: float = 1.0) -> float:
    """Smallest false-positive rate at which at least ``tpr`` of positives are caught.

    Scores: higher means "more likely trained on". ``tpr=1`` is the tracker paper's
    headline FPR@100%TPR.
    """
    y, s = _labels_scores(positives, negatives)
    fpr, tpr_curve, _ = roc_curve(y, s, drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr_curve, tpr - 1e-12, side="left")])


def tpr_at_fpr(positives: np.ndarray, negatives: np.ndarray, fpr: float) -> float:
    """Largest true-positive rate with false-positive rate at most ``fpr``."""
    y, s = _labels_scores(positives, negatives)
    fpr_curve, tpr_curve, _ = roc_curve(y, s, drop_intermediate=False)
    ok = fpr_curve <= fpr + 1e-12
    return float(tpr_curve[ok].max()) if ok.any() else 0.0


def roc_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn)."""
    y, s = _labels_scores(positives, negatives)
    return float(roc_auc_score(y, s))


def detection_rate(p_values: np.ndarray, alpha: float) -> float:
    """Fraction of audits deciding "trained on" at level ``alpha``."""
    p = np.asarray(p_values, dtype=np.float64)
    return float(np.mean(p <= alpha)) if p.size else float("nan")


def gaussian_p_value(
    observed: float, null: np.ndarray, alternative: Literal["less", "greater"] = "greater"
) -> tuple[float, float]:
    """APPROXIMATE p-value and z-score of ``observed`` against a normal fit to ``null``.

    Reaches below 1/(N+1) with few null draws, but is only as good as the normal fit
    to the null's tail: report it beside the exact rank p-value, never instead of it.
    """
    from scipy.stats import norm

    null = np.asarray(null, dtype=np.float64).ravel()
    if null.size < 2:
        raise TracemarkError("a Gaussian approximation needs at least two null draws")
    z = standardised_gap(observed, null)
    return float(norm.sf(z) if alternative == "greater" else norm.cdf(z)), z


def deciding_round_p_value(p_values: np.ndarray, delta: float) -> float:
    """The round p-value that decides "more than delta·Q rounds below lambda".

    More than ⌊delta·Q⌋ rounds lie below lambda exactly when the (⌊delta·Q⌋ + 1)-th
    smallest round p-value does, so that order statistic summarises the vote.
    """
    p = np.sort(np.asarray(p_values, dtype=np.float64).ravel())
    if p.size == 0:
        raise TracemarkError("no rounds to vote on")
    needed = int(np.floor(delta * p.size + 1e-9)) + 1
    return float(p[needed - 1]) if needed <= p.size else 1.0


def margin_paired_ttest(
    benign: np.ndarray, triggered: np.ndarray, tau: float = 0.25
) -> tuple[float, float, float]:
    """UBW's verification test: H0 P_b = P_p + tau against H1 P_b > P_p + tau (paired).

    Returns (p-value, t statistic, mean(P_b - P_p)). It is scipy's
    ``ttest_rel(benign, triggered + tau, alternative="greater")``; when every paired
    difference is identical the t statistic is infinite and the p-value is 0 or 1 by
    the sign of that difference (scipy would return NaN).
    """
    from scipy.stats import ttest_rel

    b = np.asarray(benign, dtype=np.float64).ravel()
    p = np.asarray(triggered, dtype=np.float64).ravel()
    if b.shape != p.shape:
        raise TracemarkError(f"paired samples differ in length: {b.size} and {p.size}")
    if b.size < 2:
        raise TracemarkError("the paired t-test needs at least two images")
    if not (np.isfinite(b).all() and np.isfinite(p).all()):
        raise TracemarkError("the paired t-test got NaN or infinite probabilities")
    diff = b - (p + tau)
    delta_p = float(np.mean(b - p))
    if np.ptp(diff) <= 1e-12 * max(1.0, float(np.abs(diff).max())):
        mean = float(diff.mean())
        if mean > 0:
            return 0.0, float("inf"), delta_p
        return 1.0, (float("-inf") if mean < 0 else 0.0), delta_p
    res = ttest_rel(b, p + tau, alternative="greater")
    return float(res.pvalue), float(res.statistic), delta_p


def margin_flip_test(
    flips: np.ndarray, control_flips: np.ndarray, tau: float = 0.25
) -> tuple[float, float]:
    """Exact (conservative) test that labels flip under a trigger more than ``tau`` more
    often than under a control: H0 q_T <= q_C + tau against H1 q_T > q_C + tau.

    The label-only analogue of UBW's margin t-test. At level a it rejects when the
    flips under the trigger are improbable, P(Binomial(m, U + tau) >= k_T) <= a/2, where
    U is the exact (Clopper-Pearson) upper (1 - a/2) bound on the control's flip rate;
    by the union bound its size is at most a whatever the dependence between the two.
    The p-value is the smallest such a (found by bisection). Returns (p, U at p).
    """
    from scipy.stats import beta, binom

    f = np.asarray(flips, dtype=bool).ravel()
    g = np.asarray(control_flips, dtype=bool).ravel()
    if f.shape != g.shape or f.size == 0:
        raise TracemarkError(
            f"paired flips must be non-empty and equal in length: {f.size}, {g.size}"
        )
    if not 0 <= tau < 1:
        raise TracemarkError(f"tau must be in [0, 1), got {tau}")
    m, k_t, k_c = f.size, int(f.sum()), int(g.sum())

    def upper(a: float) -> float:
        return 1.0 if k_c == m else float(beta.ppf(1 - a / 2, k_c + 1, m - k_c))

    def rejects(a: float) -> bool:
        q0 = min(1.0, upper(a) + tau)
        return float(binom.sf(k_t - 1, m, q0)) <= a / 2

    if not rejects(1.0):
        return 1.0, upper(1.0)
    lo, hi = -300.0, 0.0  # log10 of a: rejects(10**hi) holds, rejects(10**lo) is checked
    if rejects(10.0**lo):
        return 10.0**lo, upper(10.0**lo)
    for _ in range(80):
        mid = (lo + hi) / 2
        if rejects(10.0**mid):
            hi = mid
        else:
            lo = mid
    return 10.0**hi, upper(10.0**hi)


def paired_greater(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided paired t-test p-value for mean(a − b) > 0 (scipy's ``ttest_rel``).

    When every difference is the same, the p-value is 0 if it is positive and 1
    otherwise (scipy would return NaN).
    """
    from scipy.stats import ttest_rel

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if np.allclose(d, d[0]):
        return 0.0 if d[0] > 0 else 1.0
    return float(ttest_rel(a, b, alternative="greater").pvalue)


def welch_greater(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Welch's unpaired one-sided t-test that mean(a) > mean(b): (p-value, t statistic).

    (1, 0) when every value is the same (scipy would return NaN).
    """
    from scipy.stats import ttest_ind

    if np.ptp(np.r_[a, b]) == 0:
        return 1.0, 0.0
    res = ttest_ind(a, b, equal_var=False, alternative="greater")
    return float(res.pvalue), float(res.statistic)
