"""Isotope audits on real Fashion-MNIST with the small CNN trained in the session."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ISOTOPE_IMAGES
from tracemark.datasets import LabelledImages
from tracemark.errors import TracemarkError
from tracemark.methods import isotope
from tracemark.methods.isotope.marks import blend
from tracemark.oracle import LabelOnly, TopK, TorchModuleOracle
from tracemark.rng import derive

from helpers import run_cli, seeded, write_pngs

EXTERNALS = 39  # smallest p = 0.025 < alpha = 0.05: cheap enough for tests
ALPHA = 0.05


@pytest.fixture(scope="module")
def aux(fmnist_test) -> LabelledImages:
    idx = derive(seeded("00" * 16, "isotope-aux"), "tests/isotope-aux").choice(
        len(fmnist_test), 400, replace=False
    )
    return fmnist_test.subset(idx)


def _oracle(model):
    return TorchModuleOracle(model, num_classes=10)


def _audit(model, world, user, aux, **kw):
    kw.setdefault("externals", EXTERNALS)
    kw.setdefault("label", world.isotope_classes[user])
    return isotope.audit(
        _oracle(model), world.isotope_keys[user], None, aux, alpha=ALPHA, aux_per_mark=100, **kw
    )


@pytest.mark.parametrize("user", [0, 1])
def test_users_marks_are_detected_on_the_model_trained_with_them(marked_world, aux, user):
    v = _audit(marked_world.model, marked_world, user, aux)
    # A tiny victim (about 1,000 training images): at alpha = 0.05 with 39 externals the
    # user's mark must rank first or second among 40 marks.
    assert v.decision and v.p_value <= ALPHA
    assert v.statistics["rank_among_marks"] <= 2
    assert v.statistics["shift"] > v.statistics["external_shift_mean"]
    assert v.effect > 1.5
    assert v.statistics["approx_gaussian_p_value"] < ALPHA
    assert v.queries == 100 + (EXTERNALS + 1) * 100  # baseline + one pass per mark
    assert len(v.evidence["external_shifts"]) == EXTERNALS


@pytest.mark.parametrize("user", [0, 1])
def test_clean_model_does_not_flag_the_marks(marked_world, aux, user):
    v = _audit(marked_world.clean_model, marked_world, user, aux)
    assert not v.decision and v.p_value > ALPHA


def test_label_discovery_on_the_users_published_images(marked_world, aux):
    user = 0
    oracle = _oracle(marked_world.model)
    found = isotope.discover_label(oracle, marked_world.isotope_images[user])
    assert found.label == marked_world.isotope_classes[user] and found.share > 0.8
    v = isotope.audit(
        oracle,
        marked_world.isotope_keys[user],
        marked_world.isotope_images[user],
        aux.images,  # unlabelled: class y excluded by the model's prediction
        alpha=ALPHA,
        externals=EXTERNALS,
        aux_per_mark=100,
    )
    assert v.label == found.label and "discovered" in v.label_source
    assert v.statistics["aux_exclusion"] == "by the model's prediction"
    assert v.statistics["aux_excluded_as_class_y"] > 0
    assert v.decision


def test_label_is_voted_on_unmarked_images_only(marked_world, aux):
    # A vote that counted marked images could pick the class the mark pushes towards.
    user, w = 0, marked_world
    chosen = w.isotope_chosen[user]
    kw = {"alpha": ALPHA, "externals": 19, "aux_per_mark": 20}
    oracle = _oracle(w.clean_model)
    v = isotope.audit(oracle, w.isotope_keys[user], w.isotope_images[user], aux,
                      carries_mark=chosen, **kw)  # fmt: skip
    assert "unmarked images" in v.label_source
    assert sum(v.statistics["label_votes"]) == int((~chosen).sum())
    assert not any("may carry your mark" in n for n in v.notes)
    with pytest.raises(TracemarkError, match="every one of your images carries the mark"):
        isotope.audit(oracle, w.isotope_keys[user], w.isotope_images[user], aux,
                      carries_mark=np.ones(len(chosen), bool), **kw)  # fmt: skip
    unflagged = isotope.audit(oracle, w.isotope_keys[user], w.isotope_images[user], aux, **kw)
    assert any("may carry your mark" in n for n in unflagged.notes)


def test_top_k_rank_shift_mode(marked_world, aux):
    v = isotope.audit(
        TopK(_oracle(marked_world.model), 3),
        marked_world.isotope_keys[0],
        None,
        aux,
        label=marked_world.isotope_classes[0],
        alpha=ALPHA,
        externals=EXTERNALS,
        aux_per_mark=100,
    )
    assert v.access == "top-K ranks" and "rank" in v.statistics["score"]
    assert v.statistics["shift"] < 0  # the mark lowers (improves) the class's rank
    assert v.decision
    label_only = isotope.audit(
        LabelOnly(_oracle(marked_world.clean_model)),
        marked_world.isotope_keys[0],
        None,
        aux,
        label=marked_world.isotope_classes[0],
        alpha=ALPHA,
        externals=EXTERNALS,
        aux_per_mark=100,
    )
    assert not label_only.decision


def test_paper_procedure_reports_its_rounds(marked_world, aux):
    v = _audit(marked_world.model, marked_world, 0, aux, procedure="paper", round_size=100)
    s = v.statistics
    assert s["procedure"] == "paper" and len(s["round_p_values"]) == 5
    assert v.alpha == 0.1 and "NOT calibrated" in v.test
    assert v.decision == (s["rounds_below_lambda"] > 3)
    assert v.queries == 2 * 5 * 100 + 200  # two marks per round + the pool's baseline


def test_physical_mode_welch_test(marked_world, aux):
    oracle = _oracle(marked_world.model)
    key = marked_world.isotope_keys[0]
    y = marked_world.isotope_classes[0]
    others = aux.images[aux.labels != y]
    # Photos "showing the object": other scenes carrying the mark; and comparable ones without.
    with_mark = blend(others[:60], isotope.key_mark(key), 0.4)
    v = isotope.physical_audit(oracle, with_mark, others[60:120], y, alpha=ALPHA, key=key)
    assert v.decision and v.effect > 0 and "Welch" in v.test
    same = isotope.physical_audit(oracle, others[:60], others[60:120], y, alpha=ALPHA)
    assert same.p_value > 0.01


def test_distinguisher_separates_two_users_marks(marked_world, aux):
    marks = [isotope.key_mark(k) for k in marked_world.isotope_keys]
    result = isotope.distinguish(
        _oracle(marked_world.model),
        marks,
        marked_world.isotope_classes,
        aux.images[:200],
        aux_labels=aux.labels[:200],
        alpha=0.01,
    )
    assert result.all_distinguished()
    assert result.p_values[0, 1] < 0.01 and result.p_values[1, 0] < 0.01


def test_cli_marks_and_audits_an_isotope_user(marked_world, exported_models, aux, tmp_path, capsys):
    key = tmp_path / "iso.key"
    marked_world.isotope_keys[0].save(key)
    user = marked_world.isotope_images[0]
    write_pngs(tmp_path / "mine", user)
    assert run_cli(["mark", key, tmp_path / "mine", tmp_path / "published", "--quiet"]) == 0
    manifest = json.loads((tmp_path / "published.manifest.json").read_text())
    flags = [e["carries_mark"] for e in manifest["files"]]
    assert sum(flags) == ISOTOPE_IMAGES // 2 == manifest["marked_images"]
    model = exported_models / "trained.onnx"
    y = marked_world.isotope_classes[0]
    write_pngs(tmp_path / "aux", aux.images[:150])
    out = tmp_path / "verdict.json"
    capsys.readouterr()
    code = run_cli(
        [
            "audit", key, model, "--marked", tmp_path / "published", "--aux", tmp_path / "aux",
            "--alpha", "0.05", "--externals", "39", "--aux-per-mark", "100", "--json",
            "--quiet", "--evidence", out,
        ],
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    verdict = json.loads(captured.out)
    assert verdict["method"] == "isotope" and verdict["label"] == y and verdict["decision"]
    assert "external_shifts" in json.loads(out.read_text())["evidence"]
    assert run_cli(["audit", key, model, "--quiet"]) == 2
    assert "--aux" in capsys.readouterr().err
    # The paper's procedure (Q rounds of paired t-tests; a vote, not calibrated) and the
    # physical-object mode (marked photos against photos without the mark, Welch).
    common = ["--marked", tmp_path / "published", "--aux", tmp_path / "aux", "--json", "--quiet"]
    args = ["audit", key, model, *common, "--label", str(y), "--procedure", "paper"]
    assert run_cli([*args, "--rounds", "5", "--round-size", "50"]) == 0
    paper = json.loads(capsys.readouterr().out)
    assert "paper's procedure: 5 rounds" in paper["test"] and "NOT calibrated" in paper["test"]
    assert paper["decision"] and paper["label"] == y
    assert paper["queries"] >= 5 * 2 * 50
    # Photos "with the object": other classes' images carrying the mark; "without": other
    # images of the same classes as they are.
    others = aux.images[aux.labels != y][:150]
    mark = isotope.key_mark(marked_world.isotope_keys[0])
    vis = marked_world.isotope_keys[0].typed_params().visibility
    write_pngs(tmp_path / "with", blend(others[:75], mark, vis))
    write_pngs(tmp_path / "without", others[75:])
    args = ["audit", key, model, "--marked", tmp_path / "with", "--aux", tmp_path / "without"]
    args += ["--label", str(y), "--procedure", "physical", "--json", "--quiet"]
    assert run_cli(args) == 0
    physical = json.loads(capsys.readouterr().out)
    assert "Welch" in physical["test"] and physical["queries"] == 150
    assert physical["decision"] and physical["effect"] > 0


def test_cli_distinguish_two_keys(marked_world, aux, tmp_path, capsys):
    from tracemark.training import save_checkpoint

    keys = []
    for i, k in enumerate(marked_world.isotope_keys):
        keys.append(tmp_path / f"user{i}.key")
        k.save(keys[-1])
    model = tmp_path / "model.pt"
    save_checkpoint(marked_world.model, model)
    for c in (0, 1, 3):  # class subfolders: the pairs' classes are excluded by label
        write_pngs(tmp_path / "aux" / str(c), aux.images[aux.labels == c][:40])
    labels = ",".join(str(c) for c in marked_world.isotope_classes)
    capsys.readouterr()
    code = run_cli(["distinguish", model, *keys, "--labels", labels, "--aux", tmp_path / "aux",
                    "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    written = sum(1 for _ in (tmp_path / "aux").rglob("*.png"))
    assert result["all_distinguished"] and result["queries"] == 3 * written  # base + 2 marks
    assert run_cli(["distinguish", model, keys[0], "--labels", "6", "--aux", tmp_path / "aux"]) == 2
    assert "at least two marks" in capsys.readouterr().err
    assert run_cli(["demo", "isotope", "--classes", "1,1", "--quiet"]) == 2
