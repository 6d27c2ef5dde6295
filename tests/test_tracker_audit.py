"""A real tracker audit on Fashion-MNIST with a small CNN trained in this session."""

import numpy as np
import pytest

from tracemark.errors import BudgetExceededError, TracemarkError
from tracemark.methods import tracker
from tracemark.oracle import LabelOnly, TorchModuleOracle

N_PSEUDO = 100
ALPHA = 0.01


@pytest.fixture(scope="module")
def holdout(fmnist_test):
    return fmnist_test.subset(np.arange(5000))


def audit_all(world, model, holdout, users=None, **kw):
    """Audit users with their class given and pseudo-users from that class of ``holdout``."""
    oracle = TorchModuleOracle(model, num_classes=10)
    users = range(len(world.keys)) if users is None else users
    return [
        tracker.audit(
            oracle,
            world.keys[u],
            world.marked[u],
            holdout,
            label=world.classes[u],
            n_pseudo=N_PSEUDO,
            alpha=ALPHA,
            **kw,
        )
        for u in users
    ]


def test_members_detected_nonmembers_not(marked_world, holdout):
    verdicts = audit_all(marked_world, marked_world.model, holdout)
    m = marked_world.members
    for v, c in zip(verdicts[:m], marked_world.classes, strict=False):
        assert v.decision, v.summary()
        assert v.p_value == pytest.approx(1 / (N_PSEUDO + 1))
        assert v.label == c and v.label_source == "given"
        assert v.effect > 0  # below the null mean (its sd is inflated by a long right tail)
    nonmember_flags = [v.decision for v in verdicts[m:]]
    assert sum(nonmember_flags) <= 1, [v.p_value for v in verdicts[m:]]


def test_clean_model_accuses_nobody(marked_world, holdout):
    verdicts = audit_all(marked_world, marked_world.clean_model, holdout)
    assert sum(v.decision for v in verdicts) <= 1, [v.p_value for v in verdicts]
    assert min(v.p_value for v in verdicts[: marked_world.members]) > ALPHA


def test_majority_vote_label_with_own_unpublished_photos(marked_world, fmnist_test):
    # A flat pool of images like the user's: each set is scored under its own majority vote.
    oracle = TorchModuleOracle(marked_world.model, num_classes=10)
    for u in (0, 3, 4):
        c = marked_world.classes[u]
        own_photos = fmnist_test.images[fmnist_test.labels == c][:500]
        v = tracker.audit(
            oracle, marked_world.keys[u], marked_world.marked[u], own_photos, n_pseudo=N_PSEUDO
        )
        assert v.label_source.startswith("majority vote")
        assert v.statistics["pseudo_user_labels"] == "own majority vote"
        assert v.decision == (u < marked_world.members), v.summary()


def test_labelled_holdout_needs_the_users_class(marked_world, holdout):
    oracle = TorchModuleOracle(marked_world.model, num_classes=10)
    with pytest.raises(TracemarkError, match="needs --label"):
        tracker.audit(
            oracle, marked_world.keys[0], marked_world.marked[0], holdout, n_pseudo=N_PSEUDO
        )


def test_verdict_fields_queries_and_evidence(marked_world, holdout):
    oracle = TorchModuleOracle(marked_world.model, num_classes=10)
    k = len(marked_world.marked[1])
    v = tracker.audit(
        oracle, marked_world.keys[1], marked_world.marked[1], holdout, label=6, n_pseudo=N_PSEUDO
    )
    assert v.label_source == "given" and v.label == 6
    assert v.queries == k + N_PSEUDO * k == oracle.queries
    assert len(v.evidence["null_scores"]) == N_PSEUDO and len(v.evidence["user_losses"]) == k
    # Anyone can recompute the p-value from the evidence.
    null = np.array(v.evidence["null_scores"])
    user = np.mean(v.evidence["user_losses"])
    assert v.p_value == (1 + np.sum(null <= user)) / (N_PSEUDO + 1)
    data = v.model_dump(mode="json")
    for field in ("method", "decision", "p_value", "alpha", "label", "effect", "queries"):
        assert field in data


def test_same_audit_twice_is_identical(marked_world, holdout):
    a, b = (audit_all(marked_world, marked_world.model, holdout, users=[3])[0] for _ in range(2))
    assert a == b


def test_label_only_proxy_is_valid(marked_world, holdout):
    verdicts = audit_all(
        marked_world, marked_world.clean_model, holdout, users=[0, 4, 8], access="label"
    )
    assert all("0/1-loss" in v.access for v in verdicts)
    assert not any(v.decision for v in verdicts)
    oracle = LabelOnly(TorchModuleOracle(marked_world.model, num_classes=10))
    v = tracker.audit(
        oracle, marked_world.keys[0], marked_world.marked[0], holdout, label=4, n_pseudo=N_PSEUDO
    )
    assert v.access.startswith("label") and v.statistics["score"] == "zero-one"
    assert v.statistics["user_mean_loss"] == 0.0  # every member image predicted right


def test_audit_input_errors(marked_world, holdout):
    oracle = TorchModuleOracle(marked_world.model, num_classes=10, budget=100)
    key, x = marked_world.keys[0], marked_world.marked[0]
    with pytest.raises(BudgetExceededError):
        tracker.audit(oracle, key, x, holdout, label=4, n_pseudo=N_PSEUDO)
    oracle = TorchModuleOracle(marked_world.model, num_classes=10)
    with pytest.raises(TracemarkError, match="smallest possible p-value"):
        tracker.audit(oracle, key, x, holdout, label=4, n_pseudo=50, alpha=0.01)
    with pytest.raises(TracemarkError, match="same size"):
        tracker.audit(oracle, key, x, holdout.images[:, :20, :20], n_pseudo=N_PSEUDO)
    with pytest.raises(TracemarkError, match="no images of class"):
        tracker.audit(
            oracle, key, x, holdout.subset(holdout.labels != 4), label=4, n_pseudo=N_PSEUDO
        )
    with pytest.raises(TracemarkError, match="outside"):
        tracker.audit(oracle, key, x, holdout, label=12)


def test_instance_baseline_is_weaker_than_set_based(marked_world):
    from tracemark.stats import fpr_at_tpr

    oracle = TorchModuleOracle(marked_world.model, num_classes=10)
    m = marked_world.members
    member_x = np.concatenate(marked_world.marked[:m])
    member_y = np.repeat(marked_world.classes[:m], [len(x) for x in marked_world.marked[:m]])
    non_x = np.concatenate(marked_world.marked[m:])
    non_y = np.repeat(marked_world.classes[m:], [len(x) for x in marked_world.marked[m:]])
    m_loss = tracker.instance_scores(oracle, member_x, member_y)
    n_loss = tracker.instance_scores(oracle, non_x, non_y)
    assert m_loss.mean() < n_loss.mean()
    assert fpr_at_tpr(-m_loss, -n_loss) > 0  # single images overlap; sets do not
