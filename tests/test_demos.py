"""`tracemark demo METHOD --quick --json`: the whole demo path on tiny victims, per method.

Each quick demo marks, trains a victim and a clean model, audits every owner on both with
the stand-alone audit, and reports. Its victims are tiny, so these are tests of the path
and of coarse power, with margins measured over seeds 0-2 (docs/results.md); the audits'
size is tested with 500 or more null audits each in test_size.py and
test_tracker_audit.py, which a demo's 7 to 42 null audits could never do (any bound on
so few is several times alpha). Full-scale power is measured by the full demos.
"""

from __future__ import annotations

import json

import pytest

from helpers import demo_seed_args, run_cli

pytestmark = pytest.mark.long

ACCESSES = ["probabilities", "topk", "label"]


def _check_tracker(result: dict) -> None:
    cells = {e["access"]: e for e in result["cells"]}
    assert list(cells) == ACCESSES
    for e in cells.values():
        assert (e["n_members"], e["n_never_published"], e["n_clean"]) == (3, 5, 8)
        assert e["fpr_never_published"] <= 0.2  # at most 1 of 5
        assert e["fpr_clean"] <= 0.125  # at most 1 of 8
        # a stand-alone audit's queries: the owner's 30 images, and 30 for each pseudo-user:
        # at least h = 10 (the sequential test's stopping count), at most the cap 10/alpha
        assert 30 * 11 <= e["queries_per_audit"] <= 30 * 1001
    full = cells["probabilities"]
    assert full["research"]["set_based"]["auc"] >= 0.8
    assert full["research"]["instance_based"]["auc"] >= 0.9  # members' images were memorised
    assert full["marked_accuracy"] > 0.7
    # Top-K and label-only audits both score the top-1 label's 0/1 loss: the same verdicts.
    rates = ("tpr", "fpr_never_published", "fpr_clean")
    assert {k: cells["topk"][k] for k in rates} == {k: cells["label"][k] for k in rates}
    assert {(e["method"], e["access"], e["n"]) for e in result["null"]} == {
        ("tracker", a, 13) for a in cells
    }


def _check_isotope(result: dict) -> None:
    cells = {e["access"]: e for e in result["cells"]}
    assert list(cells) == ACCESSES
    for e in cells.values():
        assert (e["n_members"], e["n_never_published"], e["n_clean"]) == (2, 20, 22)
        assert e["fpr_never_published"] <= 0.15  # at most 3 of 20 at alpha = 0.05
        assert e["fpr_clean"] <= 0.15
        # the key's mark and up to 10/alpha = 200 externals on 40 aux images each
        assert 40 * 12 <= e["queries_per_audit"] <= 40 * 202 + 40
    # The members' marks stand out from the never-published ones: set-based AUC over the
    # audits (measured 1.0, 0.95, 0.85 on seeds 0, 1, 2, with 2, 1 and 0 of the 2 members
    # flagged at alpha = 0.05: the quick victim is small; chance is 0.5).
    assert cells["probabilities"]["research"]["set_based"]["auc"] >= 0.7
    assert cells["probabilities"]["marked_accuracy"] > 0.6


def _check_ubw(result: dict) -> None:
    watermarks = ("ubw-p", "ubw-c", "badnets")
    cells = {(e["method"], e["access"]): e for e in result["cells"]}
    assert set(cells) == {(w, a) for w in watermarks for a in ACCESSES}
    for e in cells.values():
        # the publisher's key on its victim; 3 never-published triggers on it; all 4 keys
        # (Independent-M, the null triggers) on the clean model of the same recipe
        assert (e["n_members"], e["n_never_published"], e["n_clean"]) == (1, 3, 4)
        nulls = e["fpr_never_published"] * 3 + e["fpr_clean"] * 4
        assert nulls <= 1  # of 7 null audits at alpha 0.01: two or more has p < 0.003
        assert e["clean_accuracy"] > 0.3  # 10 classes: chance is 0.1
        assert set(e["watermark_metrics"]) >= {"BA", "ASR-A", "ASR-C", "D_p", "D_s", "D_c"}
    # BadNets' targeted trigger is learned even by the tiny victims (seeds 0-2).
    assert cells[("badnets", "probabilities")]["tpr"] == 1.0
    for w in watermarks:
        # top-K verification reads the top-1 label: the same test on the same answers
        assert cells[(w, "topk")]["tpr"] == cells[(w, "label")]["tpr"]
    for w in ("ubw-p", "badnets"):
        # the label-flip test also queries a control trigger
        assert (
            cells[(w, "label")]["queries_per_audit"]
            > cells[(w, "probabilities")]["queries_per_audit"]
        )
    for access in ACCESSES:
        # UBW-C is calibrated: every verification also reads never-published patches until
        # 10 cost the model as much as its own (or 10/alpha), m = 30 queries each
        assert cells[("ubw-c", access)]["queries_per_audit"] >= 30 * (2 + 10)


CHECKS = {"tracker": _check_tracker, "isotope": _check_isotope, "ubw": _check_ubw}


@pytest.mark.parametrize("method", list(CHECKS))
def test_quick_demo_json(method, capsys):
    args = ["demo", method, "--quick", "--json", "--quiet", *demo_seed_args()]
    assert run_cli(args) == 0
    CHECKS[method](json.loads(capsys.readouterr().out))
