"""The sequential exact test (Besag and Clifford 1991) on plain arrays: its size and its
stopping time, by simulation (10^5 null audits each), and its p-values by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom, chisquare

from tracemark.errors import TracemarkError
from tracemark.rng import derive
from tracemark.stats import SequentialRank, sequential_cap, sequential_rank_p_value

from helpers import TEST_SEED, seeded

H, CAP = 10, 1000  # the tracker's defaults at alpha = 0.01
TRIALS = 100_000


def _null_audits(n: int, discrete: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """p-values and draws of ``n`` simulated null audits: the observed score and every
    draw exchangeable (i.i.d.), read in batches of doubling size as the tracker reads them.
    ``discrete``: scores on a coarse grid, so ties are frequent (label-only losses)."""
    rng = derive(seeded("00" * 16, "sequential"), "tests/sequential", int(discrete), TEST_SEED)
    p, draws = np.empty(n), np.empty(n, dtype=int)
    for i in range(n):
        scores = rng.random(CAP + 1)
        if discrete:
            scores = np.floor(scores * 8)
        test = SequentialRank(scores[0], H, CAP, alternative="less")
        start, size = 1, H
        while not test.add(scores[start : start + size]):
            start, size = start + size, min(size * 2, 80)
        p[i], draws[i] = test.p_value(), test.draws
    return p, draws


@pytest.fixture(scope="module")
def null_audits():
    return _null_audits(TRIALS)


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05, 0.1])
def test_size_is_at_most_alpha(null_audits, alpha):
    # At alpha = 0.01 a test of size 2 alpha flags about 2,000 of 10^5: the 0.999 bound
    # (about 1,100) catches it with certainty, and 1 valid run in 1,000 exceeds it.
    p, _ = null_audits
    flags = int(np.sum(p <= alpha))
    assert flags <= binom.ppf(0.999, TRIALS, alpha), (alpha, flags)


def test_p_values_are_uniform_on_their_attainable_levels(null_audits):
    """Exact, not just conservative: counts in bins whose edges are attainable p-values
    (h / L for L = h/u) follow the uniform distribution's shares (chi-square)."""
    p, _ = null_audits
    edges = np.array([0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    counts = np.diff([np.sum(p <= e) for e in edges])  # bins (a, b]: P(p <= b) = b exactly
    expected = np.diff(edges) * TRIALS
    assert chisquare(counts, expected).pvalue > 1e-3, counts


def test_innocent_audits_stop_after_a_few_dozen_draws(null_audits):
    # E[draws] = h (1 + ln(cap / h)) approximately: 56 for h = 10, cap = 1,000.
    _, draws = null_audits
    assert 50 < draws.mean() < 62, draws.mean()
    assert np.median(draws) <= 25  # half stop within 2.5 h draws
    assert draws.max() <= CAP


def test_ties_make_it_conservative():
    p, _ = _null_audits(20_000, discrete=True)
    for alpha in (0.01, 0.05, 0.1):
        assert np.sum(p <= alpha) <= binom.ppf(0.999, len(p), alpha)


def test_a_member_reaches_the_cap_and_p_far_below_alpha():
    null = np.linspace(1.0, 2.0, CAP)  # every pseudo-user scores worse than the owner
    p, used = sequential_rank_p_value(0.5, null, H, CAP, alternative="less")
    assert used == CAP and p == pytest.approx(1 / (CAP + 1))
    assert sequential_cap(0.01) == 1000 and sequential_cap(0.05) == 200


def test_hand_computed_stops_and_batches_do_not_matter():
    null = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.05, 0.7])  # "greater": >= 0.5 is extreme
    p, used = sequential_rank_p_value(0.5, null, h=3, n_max=7)
    assert (p, used) == (3 / 7, 7)  # the third extreme draw is the 7th
    p, used = sequential_rank_p_value(0.5, null[:4], h=3, n_max=4)
    assert p == pytest.approx((2 + 1) / (4 + 1)) and used == 4  # cap reached with g = 2
    test = SequentialRank(0.5, 2, 7)
    assert not test.add(null[:2]) and test.add(null[2:])
    assert test.draws == 4 and test.p_value() == 2 / 4  # draws past the stop are ignored
    assert test.trace == [(2, 1), (4, 2)]
    with pytest.raises(TracemarkError):
        SequentialRank(0.5, 5, 4)
    with pytest.raises(TracemarkError, match="not stopped"):
        SequentialRank(0.5, 2, 10).p_value()
