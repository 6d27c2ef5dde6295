"""A real tracker audit on Fashion-MNIST with a small CNN trained in this session, and the
size of its null on cheap models (the false-positive rate is measured, not assumed)."""

import numpy as np
import pytest
from scipy.stats import binom

from conftest import TRACKER_PUBLISHED
from tracemark.errors import BudgetExceededError, TracemarkError
from tracemark.keys import Key
from tracemark.methods import tracker
from tracemark.oracle import CallableOracle, LabelOnly, TorchModuleOracle
from tracemark.rng import derive, derive_bytes
from tracemark.stats import sequential_rank_p_value

from helpers import assert_at_level, assert_uniform_on_the_grid, seeded

N_PSEUDO = 100
ALPHA = 0.01


def audit(world, oracle, u, **kw):
    """User u's stand-alone audit: their whole collection, the key's published choice."""
    kw.setdefault("label", world.classes[u])
    kw.setdefault("n_pseudo", N_PSEUDO)
    kw.setdefault("alpha", ALPHA)
    return tracker.audit(
        oracle,
        world.keys[u],
        world.collections[u],
        ids=world.collection_ids[u],
        published=TRACKER_PUBLISHED,
        **kw,
    )


def audit_all(world, model, users=None, **kw):
    oracle = TorchModuleOracle(model, num_classes=10)
    users = range(len(world.keys)) if users is None else users
    return [audit(world, oracle, u, **kw) for u in users]


def test_members_detected_nonmembers_not(marked_world):
    verdicts = audit_all(marked_world, marked_world.model)
    m = marked_world.members
    for v, c in zip(verdicts[:m], marked_world.classes, strict=False):
        assert v.decision, v.summary()
        assert v.label == c and v.label_source == "given"
        assert v.statistics["design"] == "randomised publication"
        assert v.effect > 0  # below the null mean
    # Non-members are null audits: two or more flags of 6 at alpha = 0.01 has
    # probability below 0.0015 for a valid test.
    assert sum(v.decision for v in verdicts[m:]) <= 1, [v.p_value for v in verdicts[m:]]


def test_clean_model_accuses_nobody(marked_world):
    verdicts = audit_all(marked_world, marked_world.clean_model)
    # 9 null audits at alpha = 0.01: two or more flags has probability below 0.0035.
    assert sum(v.decision for v in verdicts) <= 1, [v.p_value for v in verdicts]


def test_majority_vote_label(marked_world):
    # Without a label, every set (the user's and each pseudo-user's) picks its own majority.
    oracle = TorchModuleOracle(marked_world.model, num_classes=10)
    for u in range(marked_world.members):
        v = audit(marked_world, oracle, u, label=None)
        assert v.label_source.startswith("majority vote")
        assert v.statistics["pseudo_user_labels"] == "own majority vote"
        assert v.decision, v.summary()


def test_verdict_fields_queries_and_evidence(marked_world):
    oracle = TorchModuleOracle(marked_world.model, num_classes=10)
    k = TRACKER_PUBLISHED
    v = audit(marked_world, oracle, 1, n_pseudo=None, fixed=N_PSEUDO)  # the fixed test
    assert v.label_source == "given" and v.label == marked_world.classes[1]
    assert v.queries == k + N_PSEUDO * k == oracle.queries
    assert len(v.evidence["null_scores"]) == N_PSEUDO and len(v.evidence["user_losses"]) == k
    assert v.statistics["collection_size"] == v.statistics["pool_size"] == 90
    assert v.statistics["rule"] == "fixed"
    # Anyone can recompute the p-value from the evidence.
    null = np.array(v.evidence["null_scores"])
    user = np.mean(v.evidence["user_losses"])
    assert v.p_value == (1 + np.sum(null <= user)) / (N_PSEUDO + 1)


def test_sequential_verdict_records_its_rule_draws_and_queries(marked_world):
    from tracemark.stats import sequential_rank_p_value

    k = TRACKER_PUBLISHED
    for u in (1, 5):  # a member (goes to the cap) and a never-published owner (stops early)
        oracle = TorchModuleOracle(marked_world.model, num_classes=10)
        v = audit(marked_world, oracle, u)
        s = v.statistics
        assert s["rule"].startswith("sequential") and s["cap"] == N_PSEUDO
        drawn = len(v.evidence["null_scores"])
        assert s["pseudo_users_drawn"] == drawn >= s["n_pseudo_users"]
        assert v.queries == k + drawn * k == oracle.queries
        null = np.array(v.evidence["null_scores"])
        user = np.mean(v.evidence["user_losses"])
        p, used = sequential_rank_p_value(user, null, s["stop_after"], N_PSEUDO, "less")
        assert (p, used) == (v.p_value, s["n_pseudo_users"])  # re-checkable from the evidence
    assert marked_world.members > 1  # u = 1 is a member, u = 5 is not
    data = v.model_dump(mode="json")
    for field in ("method", "decision", "p_value", "alpha", "label", "effect", "queries"):
        assert field in data


def test_audit_regenerates_exactly_what_was_published(marked_world):
    # The audit queries the key's regeneration of the published set; the CLI user's
    # published PNG files are those very images, so the model sees what it trained on.
    w = marked_world
    chosen = tracker.choose_published(w.keys[0], w.collection_ids[0], TRACKER_PUBLISHED)
    again = tracker.mark(
        w.collections[0][chosen], w.keys[0], ids=np.array(w.collection_ids[0])[chosen].tolist()
    )
    np.testing.assert_array_equal(again, w.marked[0])


def test_same_audit_twice_is_identical(marked_world):
    a, b = (audit_all(marked_world, marked_world.model, users=[3])[0] for _ in range(2))
    assert a == b


def test_label_only_proxy(marked_world):
    verdicts = audit_all(marked_world, marked_world.clean_model, users=[0, 4, 8], access="label")
    assert all("0/1-loss" in v.access for v in verdicts)
    # 3 null audits at alpha = 0.01: two or more flags has probability below 0.0003 for a
    # valid test (one flag, 3%, is a valid test's bad luck: the label-only size itself is
    # checked on 300 owners in test_null_is_at_level_with_a_holdout_as_small_as_...).
    assert sum(v.decision for v in verdicts) <= 1, [v.p_value for v in verdicts]
    oracle = LabelOnly(TorchModuleOracle(marked_world.model, num_classes=10))
    v = audit(marked_world, oracle, 0)
    assert v.access.startswith("label") and v.statistics["score"] == "zero-one"
    assert v.statistics["user_mean_loss"] == 0.0  # every member image predicted right


def test_design_follows_what_was_published(marked_world):
    w, oracle = marked_world, TorchModuleOracle(marked_world.model, num_classes=10)
    key, x, ids = w.keys[4], w.collections[4], w.collection_ids[4]
    chosen = tracker.choose_published(key, ids, TRACKER_PUBLISHED)
    kw = {"ids": ids, "label": w.classes[4], "n_pseudo": 20, "alpha": 0.05}
    same = tracker.audit(oracle, key, x, published=chosen, **kw)
    assert same == tracker.audit(oracle, key, x, published=TRACKER_PUBLISHED, **kw)
    everything = tracker.audit(oracle, key, x, published=None, **kw)
    assert everything.statistics["design"] == "mark randomisation"
    assert everything.statistics["set_size"] == everything.statistics["pool_size"] == 90
    # A hand-picked subset is not the key's choice: pseudo-users re-mark it alone.
    picked = np.zeros(len(ids), dtype=bool)
    picked[:TRACKER_PUBLISHED] = True
    hand = tracker.audit(oracle, key, x, published=picked, **kw)
    assert hand.statistics["design"] == "mark randomisation"
    assert hand.statistics["pool_size"] == TRACKER_PUBLISHED
    assert any("not the key's random choice" in n for n in hand.notes)


def test_audit_input_errors(marked_world):
    w = marked_world
    key, x, ids = w.keys[0], w.collections[0], w.collection_ids[0]
    oracle = TorchModuleOracle(w.model, num_classes=10, budget=100)
    with pytest.raises(BudgetExceededError):
        tracker.audit(oracle, key, x, ids=ids, published=30, label=4, n_pseudo=N_PSEUDO)
    oracle = TorchModuleOracle(w.model, num_classes=10)
    with pytest.raises(TracemarkError, match="smallest possible p-value"):
        tracker.audit(oracle, key, x, ids=ids, published=30, n_pseudo=50, alpha=0.01)
    with pytest.raises(TracemarkError, match="cannot publish 91"):
        tracker.audit(oracle, key, x, ids=ids, published=91, n_pseudo=N_PSEUDO)
    with pytest.raises(TracemarkError, match="entries for 90"):
        tracker.audit(oracle, key, x, ids=ids, published=np.ones(5, bool), n_pseudo=N_PSEUDO)
    with pytest.raises(TracemarkError, match="ids given"):
        tracker.audit(oracle, key, x, ids=ids[:5], n_pseudo=N_PSEUDO)
    with pytest.raises(TracemarkError, match="its own id"):
        tracker.audit(oracle, key, x[:2], ids=["a", "a"], n_pseudo=N_PSEUDO)
    with pytest.raises(TracemarkError, match="outside"):
        tracker.audit(oracle, key, x, ids=ids, published=30, label=12)
    with pytest.raises(TracemarkError, match="isotope"):
        tracker.audit(oracle, Key.generate("isotope"), x, n_pseudo=N_PSEUDO)


def test_choose_published_is_uniform_and_order_free():
    key = Key.generate("tracker")
    ids = [f"img{i:03d}.png" for i in range(40)]
    chosen = tracker.choose_published(key, ids, 10)
    assert chosen.sum() == 10
    shuffled = ids[::-1]
    assert set(np.array(shuffled)[tracker.choose_published(key, shuffled, 10)]) == set(
        np.array(ids)[chosen]
    )
    # Over many keys each image is published with probability 10/40.
    counts = sum(
        tracker.choose_published(
            Key(method="tracker", seed=derive_bytes(seeded("00" * 16, "keys"), "k", s).hex()),
            ids,
            10,
        ).astype(int)
        for s in range(400)
    )
    lo, hi = binom.ppf([0.0005, 0.9995], 400, 0.25)
    assert lo <= counts.min() and counts.max() <= hi, counts


# ---------------------------------------------------------------------- size of the null


def _null_p_values(oracle_for, images, n: int, k: int, m: int, hand_picked=False, **kw):
    """p-values of ``n`` never-trained owners, each holding k + m images and a fresh key.

    ``hand_picked``: the owner published k images of their own choosing (the first k of
    the collection, not the key's choice) and kept m back: the mark-randomisation design.
    With ``fixed`` = N, returns (fixed p-values, the default sequential rule's p-values
    read off the same N draws: pseudo-user u is the same draw whatever the rule)."""
    p, sequential = [], []
    for i in range(n):
        rng = derive(seeded("00" * 16, "null-owner"), "tests/null-owner", k, m, i)
        key = Key(method="tracker", params={"compress": False}, seed=rng.bytes(32).hex())
        collection = images[rng.choice(len(images), size=k + m, replace=False)]
        published = k
        if hand_picked:
            published = np.arange(k + m) < k
            if np.array_equal(published, tracker.choose_published(key, range(k + m), k)):
                published = np.roll(published, 1)  # the key's choice would be the other design
        kw = {"n_pseudo": 19, **kw} if "fixed" not in kw else {"n_pseudo": None, **kw}
        v = tracker.audit(
            oracle_for(), key, collection, published=published, alpha=0.05,
            include_evidence="fixed" in kw, **kw,
        )  # fmt: skip
        assert v.statistics["design"] == (
            "mark randomisation" if hand_picked else "randomised publication"
        )
        p.append(v.p_value)
        if "fixed" in kw:
            owner, null = v.statistics["user_mean_loss"], v.evidence["null_scores"]
            sequential.append(sequential_rank_p_value(owner, null, 10, alternative="less")[0])
    return (np.array(p), np.array(sequential)) if "fixed" in kw else np.array(p)


@pytest.mark.parametrize(
    "mode", [{"label": 3}, {"label": None}, {"label": 3, "access": "label"}],
    ids=["given-label", "majority-vote", "label-only"],
)  # fmt: skip
@pytest.mark.long
@pytest.mark.parametrize("design", ["randomised", "hand-picked"])
def test_null_is_at_level_with_a_holdout_as_small_as_the_published_set(
    fmnist_test, centroid_model, mode, design
):
    # The measured failure: K = M (the README's own advice) flagged a third of clean models.
    # Hand-picked sets (mark randomisation) re-mark the published images alone.
    images = fmnist_test.images[fmnist_test.labels == 3]
    oracle = lambda: CallableOracle(centroid_model, num_classes=10)  # noqa: E731
    hand = design == "hand-picked"
    fixed, sequential = _null_p_values(
        oracle, images, 500, 10, 10, hand_picked=hand, fixed=19, **mode
    )
    how = (
        "label-only"
        if mode.get("access")
        else "majority vote"
        if mode["label"] is None
        else "probs"
    )
    name = f"tracker {design}, {how}"
    assert_at_level(fixed, 0.05, f"{name}, fixed 19")
    assert_at_level(sequential, 0.05, f"{name}, sequential")  # Besag-Clifford, h 10, cap 19
    if mode.get("access") != "label":  # 0/1 losses tie: only the level is checked there
        assert_uniform_on_the_grid(fixed, 19)


@pytest.mark.long
def test_null_is_at_level_with_views(fmnist_test, centroid_model):
    # Views are one fixed function applied alike to the owner's set and every
    # pseudo-user's: the size holds with the most views, fixed and sequential.
    images = fmnist_test.images[fmnist_test.labels == 3]
    oracle = lambda: CallableOracle(centroid_model, num_classes=10)  # noqa: E731
    fixed, sequential = _null_p_values(
        oracle, images, 500, 10, 10, fixed=19, label=3, views="flip-shift4"
    )
    assert_at_level(fixed, 0.05, "tracker randomised, probs, 10 views, fixed 19")
    assert_at_level(sequential, 0.05, "tracker randomised, probs, 10 views, sequential")
    assert_uniform_on_the_grid(fixed, 19)


@pytest.mark.long
def test_null_is_at_level_on_a_trained_clean_model(marked_world, fmnist_test):
    images = fmnist_test.images[fmnist_test.labels == 2]
    oracle = TorchModuleOracle(marked_world.clean_model, num_classes=10)
    p = _null_p_values(lambda: oracle, images, 500, 10, 20, label=2)
    assert_at_level(p, 0.05, "tracker randomised, trained clean CNN, sequential")


def test_instance_baseline_scores_each_published_image(marked_world):
    # The instance-based baseline scores single images; how much weaker it is than the
    # set-based audit is a research figure of one victim (the demo measures it: FPR at
    # 100% TPR 0.332 against 0.01, docs/results.md), not a property every victim has: a
    # victim that memorises every member image separates them one by one too (seed 2).
    oracle = TorchModuleOracle(marked_world.model, num_classes=10)
    m = marked_world.members
    member_x = np.concatenate(marked_world.marked[:m])
    member_y = np.repeat(marked_world.classes[:m], [len(x) for x in marked_world.marked[:m]])
    non_x = np.concatenate(marked_world.marked[m:])
    non_y = np.repeat(marked_world.classes[m:], [len(x) for x in marked_world.marked[m:]])
    m_loss = tracker.instance_scores(oracle, member_x, member_y)
    n_loss = tracker.instance_scores(oracle, non_x, non_y)
    assert m_loss.shape == (len(member_x),) and n_loss.shape == (len(non_x),)
    assert np.isfinite(m_loss).all() and (m_loss >= 0).all()
    # Trained-on images have lower losses, on average and for the median image.
    assert m_loss.mean() < n_loss.mean() and np.median(m_loss) < np.median(n_loss)


def test_the_sequential_audit_detects_with_margin_where_the_fixed_99_sits_at_its_floor(
    marked_world,
):
    """Issue 28's acceptance 5: the fixed test with 99 pseudo-users can at best reach
    p = 0.01 = alpha (a member is flagged only when it ranks first); the default
    sequential test (cap 10/alpha = 1,000) shows how far below alpha the members lie.
    The margin is the members' median (one member of another seed's victim sat at
    p = 0.005, flagged but within 5x of alpha: a per-member margin held on one model)."""
    oracle = TorchModuleOracle(marked_world.model, num_classes=10)
    p_values = []
    for u in range(marked_world.members):
        fixed = audit(marked_world, oracle, u, n_pseudo=None, fixed=99)
        assert fixed.p_value >= 0.01  # the floor: 1 / (99 + 1)
        new = audit(marked_world, oracle, u, n_pseudo=None)
        assert new.statistics["cap"] == 1000
        assert new.decision, (u, new.p_value, new.effect)
        p_values.append(new.p_value)
    assert np.median(p_values) <= ALPHA / 5, p_values  # a margin of 5x


def test_views_query_every_set_alike_and_the_evidence_rechecks(marked_world):
    """With views, the owner's set and every pseudo-user's are queried under the same
    views and scored over all their answers; the verdict says so, counts them, and its
    p-value is recomputed from the evidence."""
    k, views = TRACKER_PUBLISHED, 6  # flip-shift2
    oracle = TorchModuleOracle(marked_world.model, num_classes=10)
    v = audit(marked_world, oracle, 1, n_pseudo=None, fixed=N_PSEUDO, views="flip-shift2")
    assert v.statistics["views"] == "flip-shift2" and v.statistics["view_count"] == views
    assert "x 6 views (flip-shift2)" in v.test
    assert v.queries == k * views * (1 + N_PSEUDO) == oracle.queries
    losses = np.array(v.evidence["user_losses"])
    assert losses.shape == (k * views,)
    null = np.array(v.evidence["null_scores"])
    assert v.p_value == (1 + np.sum(null <= losses.mean())) / (N_PSEUDO + 1)
    # The first K answers are the identity view: the plain audit's own losses.
    plain = audit(marked_world, oracle, 1, n_pseudo=None, fixed=N_PSEUDO)
    np.testing.assert_allclose(losses[:k], plain.evidence["user_losses"], rtol=1e-6)
    assert "views" not in plain.statistics  # verdicts without views read as before


def test_views_keep_detecting_members_and_accuse_no_clean_model(marked_world):
    clean = audit_all(marked_world, marked_world.clean_model, views="flip")
    # 9 null audits at alpha = 0.01: two or more flags has probability below 0.0035.
    assert sum(v.decision for v in clean) <= 1, [v.p_value for v in clean]
    members = audit_all(marked_world, marked_world.model, range(marked_world.members), views="flip")
    assert all(v.decision for v in members), [v.p_value for v in members]
