"""Size tests with the power to see a false-positive rate of 2 alpha, for the isotope and
UBW audits (the tracker's are in test_tracker_audit.py).

Each draws at least 500 null audits at alpha = 0.05 on a model that never saw the marks (a
nearest-centroid classifier, which no one trained; the never-published triggers run on
the suite's clean CNN): a valid
test flags at most the binomial 0.999 quantile of them (41 of 500), and against a true
rate of 0.10 that bound is exceeded with probability about 0.9. The fixed rank test's
p-values, uniform on {1, ..., N + 1} / (N + 1) when scores do not tie, also pass a
chi-square test of their counts.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom, chisquare

from tracemark.keys import Key
from tracemark.methods import isotope
from tracemark.methods.ubw.verify import verify
from tracemark.oracle import CallableOracle, TorchModuleOracle
from tracemark.oracle.memo import AnswerCache, restrict
from tracemark.rng import derive, derive_bytes
from tracemark.stats import margin_paired_ttest, sequential_rank_p_value

from helpers import assert_at_level, assert_uniform_on_the_grid, seeded

pytestmark = pytest.mark.long

ALPHA = 0.05
TRIALS = 500
EXTERNALS = 19  # the fixed test's grid: p in {1, ..., 20} / 20


@pytest.fixture(scope="module")
def aux(fmnist_test):
    idx = derive(seeded("00" * 16, "size-aux"), "tests/size-aux").permutation(len(fmnist_test))
    return fmnist_test.subset(idx[:300])


def _isotope_key(i: int) -> Key:
    seed = derive_bytes(seeded("00" * 16, "size-isotope"), "tests/size-isotope", i).hex()
    return Key(method="isotope", seed=seed)


def _isotope_nulls(base, aux, trials: int, accesses, aux_per_mark: int):
    """Fixed-19 p-values per access mode, and the default sequential rule's p-values read
    off the same draws (external mark e is the same draw whatever the rule)."""
    fixed = {a: [] for a in accesses}
    sequential = {a: [] for a in accesses}
    for i in range(trials):
        key, label = _isotope_key(i), i % 10
        memo = AnswerCache(base)  # one audit's answers, read again by its restricted runs
        for j, access in enumerate(accesses):
            oracle = restrict(memo.view(passthrough=j == 0), access, 5)
            v = isotope.audit(
                oracle, key, None, aux, label=label, alpha=ALPHA, fixed=EXTERNALS,
                externals=None, aux_per_mark=aux_per_mark,
            )  # fmt: skip
            sign = 1.0 if v.statistics["score"] == "probability of y" else -1.0
            user = sign * v.statistics["shift"]
            null = sign * np.asarray(v.evidence["external_shifts"])
            fixed[access].append(v.p_value)
            sequential[access].append(sequential_rank_p_value(user, null, 10)[0])
    return fixed, sequential


def test_calibrated_isotope_audits_are_at_level_with_every_access(centroid_model, aux):
    accesses = ["probabilities", "topk", "label"]
    oracle = CallableOracle(centroid_model, num_classes=10)
    fixed, sequential = _isotope_nulls(oracle, aux, TRIALS, accesses, aux_per_mark=20)
    for access in accesses:
        assert_at_level(fixed[access], ALPHA, f"isotope calibrated {access}, fixed 19")
        assert_at_level(sequential[access], ALPHA, f"isotope calibrated {access}, sequential")
    assert_uniform_on_the_grid(fixed["probabilities"], EXTERNALS)  # continuous scores


# ----------------------------------------------------------------------------- UBW


def test_the_margin_test_is_at_level_on_its_boundary():
    """UBW's probability test: H0 is P_b <= P_p + tau. At the boundary (the mean drop in
    the label's probability is exactly tau) the one-sided t-test rejects at rate alpha,
    and below it less: 2,000 simulated verifications of m = 100 images each."""
    rng = derive(seeded("00" * 16, "size-margin"), "tests/size-margin")
    tau, m, n = 0.25, 100, 2000
    at, below = [], []
    for _ in range(n):
        benign = rng.uniform(0.6, 1.0, m)
        drop = tau + rng.normal(0, 0.15, m)  # mean drop exactly tau: the boundary
        at.append(margin_paired_ttest(benign, benign - drop, tau)[0])
        below.append(margin_paired_ttest(benign, benign - (drop - 0.05), tau)[0])
    at, below = np.array(at), np.array(below)
    assert_at_level(at, ALPHA, "ubw margin t-test at its boundary (simulated)")
    assert np.sum(at <= ALPHA) >= binom.ppf(0.001, n, ALPHA)  # exact there, not conservative
    assert np.sum(below <= ALPHA) < np.sum(at <= ALPHA)
    # At the boundary the t statistic is t-distributed: its p-values are uniform.
    assert chisquare(np.histogram(at, bins=10, range=(0, 1))[0]).pvalue > 0.001


@pytest.fixture(scope="module")
def ubw_clean(marked_world, fmnist_test):
    return TorchModuleOracle(marked_world.clean_model, num_classes=10), fmnist_test


@pytest.mark.parametrize("null_triggers", [0, 19], ids=["default", "19-triggers"])
def test_never_published_ubw_triggers_are_not_verified_on_the_clean_model(ubw_clean, null_triggers):
    """100 UBW-C keys (each its own pattern, drawn from the key, at places the key draws)
    on the suite's clean model, calibrated against never-published patches as UBW-C always
    is: up to 10/alpha (the default) or 19 of them. (A binomial bound on 100 audits sees
    only gross failures; the margin test's level is checked with 2,000 simulations above,
    and the calibration's point, a model that reacts to any patch, in
    test_ubw_calibration.py.)"""
    oracle, test = ubw_clean
    p = []
    for i in range(100):
        seed = derive_bytes(seeded("00" * 16, "size-ubw"), "tests/size-ubw", i).hex()
        key = Key(method="ubw", seed=seed, params={"num_classes": 10, "variant": "ubw-c"})
        v = verify(oracle, key, test, alpha=ALPHA, m=50, null_triggers=null_triggers)
        assert v.statistics["null_triggers"] == (null_triggers or round(10 / ALPHA))
        p.append(v.p_value)
    p = np.array(p)
    assert np.sum(p <= ALPHA) <= binom.ppf(0.999, len(p), ALPHA)
