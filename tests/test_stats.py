"""Rank p-values are valid under the null; detection metrics match hand computations."""

import numpy as np
import pytest
from scipy import stats as sps

from tracemark.errors import TracemarkError
from tracemark.stats import (
    detection_rate,
    fpr_at_tpr,
    rank_p_value,
    roc_auc,
    smallest_p_value,
    standardised_gap,
    tpr_at_fpr,
)


def test_rank_p_value_hand_computed():
    null = np.array([0.1, 0.2, 0.3, 0.4])
    assert rank_p_value(0.25, null, "less") == pytest.approx(3 / 5)
    assert rank_p_value(0.05, null, "less") == pytest.approx(1 / 5)
    assert rank_p_value(0.2, null, "less") == pytest.approx(3 / 5)  # ties count against us
    assert rank_p_value(0.35, null, "greater") == pytest.approx(2 / 5)
    assert smallest_p_value(999) == pytest.approx(0.001)
    with pytest.raises(TracemarkError):
        rank_p_value(0.1, np.array([]))
    with pytest.raises(TracemarkError):
        rank_p_value(float("nan"), null)


def test_rank_p_values_are_uniform_under_the_null():
    # Observed score exchangeable with the null draws: p must be (discrete) uniform.
    rng = np.random.default_rng(1)
    n_null, trials = 199, 4000
    draws = rng.standard_normal((trials, n_null + 1))
    p = np.array([rank_p_value(d[0], d[1:], "less") for d in draws])
    for alpha in (0.01, 0.05, 0.1, 0.5):
        rate = np.mean(p <= alpha)
        # One-sided binomial check at 1e-4: the rate is not above alpha.
        assert (
            sps.binomtest(int(np.sum(p <= alpha)), trials, alpha, alternative="greater").pvalue
            > 1e-4
        ), (alpha, rate)
    ks = sps.kstest(p, "uniform")
    assert ks.pvalue > 1e-3


def test_rank_p_values_stay_valid_with_heavy_ties():
    # 0/1-loss set means take few values: ties must make the test conservative, never liberal.
    rng = np.random.default_rng(2)
    trials = 3000
    draws = rng.binomial(5, 0.1, size=(trials, 100)) / 5
    p = np.array([rank_p_value(d[0], d[1:], "less") for d in draws])
    for alpha in (0.01, 0.05, 0.2):
        assert np.mean(p <= alpha) <= alpha + 3 * np.sqrt(alpha / trials)


def test_rank_p_value_detects_a_shift():
    rng = np.random.default_rng(3)
    null = rng.standard_normal(999)
    assert rank_p_value(-5.0, null, "less") == pytest.approx(0.001)


def test_metrics_hand_computed():
    pos = np.array([0.9, 0.8, 0.4])
    neg = np.array([0.7, 0.3, 0.2, 0.1, 0.5])
    # All positives caught only at threshold 0.4: negatives >= 0.4 are 0.7, 0.5 -> FPR 2/5.
    assert fpr_at_tpr(pos, neg, 1.0) == pytest.approx(0.4)
    assert tpr_at_fpr(pos, neg, 0.0) == pytest.approx(2 / 3)
    assert tpr_at_fpr(pos, neg, 0.2) == pytest.approx(2 / 3)
    # AUC: pairs (p > n): 0.9:5, 0.8:5, 0.4:3 -> 13/15.
    assert roc_auc(pos, neg) == pytest.approx(13 / 15)
    assert detection_rate(np.array([0.001, 0.02, 0.5]), 0.01) == pytest.approx(1 / 3)
    assert standardised_gap(3.0, np.array([1.0, 2.0, 3.0])) == pytest.approx(1.0)
