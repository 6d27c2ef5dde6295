"""The command line end to end: keygen, mark, train/export, audit; and its error handling."""

import json
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tracemark.images import read_manifest
from tracemark.keys import Key

from helpers import assert_a_plot_is_drawn, render_in_chromium, run_cli, tree_hashes, write_pngs


def test_keygen_writes_private_key_and_prints_commitment(tmp_path, capsys):
    key = tmp_path / "me.key"
    assert run_cli(["keygen", "-o", key, "--param", "r=0.8", "--param", "eps=0.0157"]) == 0
    out = capsys.readouterr().out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    data = json.loads(key.read_text())
    assert data["params"]["r"] == 0.8 and data["seed"] not in out
    assert "commitment" in out
    assert run_cli(["keygen", "-o", key]) == 2
    assert "--force" in capsys.readouterr().err
    assert run_cli(["key-info", key, "--json"]) == 0
    shown = capsys.readouterr().out
    info = json.loads(shown)
    assert data["seed"] not in shown and "seed" not in info and len(info["commitment"]) == 64
    assert run_cli(["key-info", key]) == 0  # the human-readable form hides it too
    human = capsys.readouterr()
    assert data["seed"] not in human.out + human.err and info["commitment"] in human.out


def test_keygen_rejects_bad_params_clearly(tmp_path, capsys):
    assert run_cli(["keygen", "-o", tmp_path / "k", "--param", "r=2"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "invalid tracker parameters" in err and "params.r: Input should be less than 1" in err
    assert "Traceback" not in err and not (tmp_path / "k").exists()


def test_mark_folder_manifest_and_no_overwrite(tmp_path, fmnist_test, capsys):
    src = tmp_path / "photos"
    write_pngs(src / "holiday", fmnist_test.images[:5])
    write_pngs(src, fmnist_test.images[5:7], prefix="top")
    (src / "notes.txt").write_text("not an image")
    originals = tree_hashes(src)
    assert run_cli(["keygen", "-o", tmp_path / "k.json"]) == 0
    out = tmp_path / "published"
    assert run_cli(["mark", tmp_path / "k.json", src, out, "--quiet"]) == 0
    assert tree_hashes(src) == originals
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(
        p.relative_to(src).as_posix() for p in src.rglob("*.png")
    )
    manifest = read_manifest(tmp_path / "published.manifest.json")
    assert len(manifest["files"]) == 7 and manifest["method"] == "tracker"
    secret = json.loads((tmp_path / "k.json").read_text())["seed"]
    assert secret not in (tmp_path / "published.manifest.json").read_text()
    assert "seed" not in json.dumps(manifest)
    written = tree_hashes(out)
    assert {e["marked"]: e["marked_sha256"] for e in manifest["files"]} == written
    capsys.readouterr()
    # Second run refuses and leaves everything as it was.
    before = tree_hashes(out)
    assert run_cli(["mark", tmp_path / "k.json", src, out, "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert tree_hashes(out) == before
    # Same key, same ids -> byte-identical files with --force.
    assert run_cli(["mark", tmp_path / "k.json", src, out, "--quiet", "--force"]) == 0
    assert tree_hashes(out) == before
    # Writing into the source folder is refused.
    assert run_cli(["mark", tmp_path / "k.json", src, src / "marked", "--quiet"]) == 2


def test_mark_publishes_the_keys_choice_and_lists_the_collection(tmp_path, fmnist_test):
    from tracemark.keys import load_key
    from tracemark.methods import tracker

    src = tmp_path / "photos"
    write_pngs(src, fmnist_test.images[:8])
    assert run_cli(["keygen", "-o", tmp_path / "k.json"]) == 0
    out = tmp_path / "published"
    assert run_cli(["mark", tmp_path / "k.json", src, out, "--publish", "3", "--quiet"]) == 0
    manifest = read_manifest(tmp_path / "published.manifest.json")
    chosen = tracker.choose_published(
        load_key(tmp_path / "k.json"), [e["source"] for e in manifest["files"]], 3
    )
    assert [e["published"] for e in manifest["files"]] == chosen.tolist()
    assert manifest["published_images"] == 3 and manifest["collection_images"] == 8
    assert sorted(p.name for p in out.iterdir()) == sorted(
        e["marked"] for e in manifest["files"] if e["published"]
    )
    assert run_cli(["mark", tmp_path / "k.json", src, tmp_path / "x", "--publish", "9"]) == 2


@pytest.fixture(scope="module")
def exported(exported_models):
    return exported_models


@pytest.mark.parametrize("model_name", ["trained.onnx", "trained.pt"])
def test_cli_audit_detects_training(marked_world, exported, model_name, capsys):
    args = [
        "audit",
        marked_world.cli_key,
        exported / model_name,
        "--marked",
        marked_world.cli_marked,
    ]
    args += ["--originals", marked_world.cli_originals, "--label", str(marked_world.classes[0])]
    args += ["--n-pseudo", "100", "--json", "--quiet"]
    assert run_cli(args) == 0
    v = json.loads(capsys.readouterr().out)
    assert v["method"] == "tracker" and v["decision"] is True
    assert v["p_value"] == pytest.approx(1 / 101) and v["alpha"] == 0.01
    assert v["label"] == marked_world.classes[0]
    assert v["queries"] == 30 + 100 * 30
    assert v["effect"] > 0
    assert v["statistics"]["design"] == "randomised publication"
    assert v["statistics"]["collection_size"] == 90


def test_cli_audit_clean_model_exit_zero_and_readable(marked_world, exported, capsys, tmp_path):
    args = [
        "audit",
        marked_world.cli_key,
        exported / "clean.ckpt",
        "--marked",
        marked_world.cli_marked,
    ]
    # No --label: each set is scored under its own majority vote.
    args += ["--originals", marked_world.cli_originals, "--n-pseudo", "100", "--quiet"]
    args += ["--evidence", tmp_path / "e.json"]
    assert run_cli(args) == 0
    out = capsys.readouterr().out
    assert "no evidence" in out and "p-value" in out
    full = json.loads((tmp_path / "e.json").read_text())
    stats = full["statistics"]
    assert full["decision"] is False and stats["rule"].startswith("sequential")
    # every pseudo-user queried is in the evidence, up to the cap of 100
    assert len(full["evidence"]["null_scores"]) == stats["pseudo_users_drawn"] <= 100
    assert full["queries"] == 30 * (1 + stats["pseudo_users_drawn"])
    assert full["label_source"].startswith("majority vote")


def test_cli_audit_errors_are_clear(marked_world, exported, tmp_path, capsys):
    base = [
        "audit",
        marked_world.cli_key,
        exported / "trained.onnx",
        "--marked",
        marked_world.cli_marked,
    ]
    assert run_cli([*base, "--originals", tmp_path / "nowhere", "--quiet"]) == 2
    # The old holdout null is refused, with what to do instead.
    assert run_cli([*base, "--holdout", marked_world.cli_originals, "--quiet"]) == 2
    assert "--originals" in " ".join(capsys.readouterr().err.split())  # rich wraps lines
    # A published file with no original in --originals.
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted(marked_world.cli_originals.iterdir())[:2]:
        (few / f.name).write_bytes(f.read_bytes())
    assert run_cli([*base, "--originals", few, "--quiet"]) == 2
    assert "has no original" in " ".join(capsys.readouterr().err.split())
    assert (
        run_cli(
            [
                "audit",
                tmp_path / "nokey",
                exported / "trained.onnx",
                "--marked",
                tmp_path,
                "--originals",
                marked_world.cli_originals,
            ]
        )
        == 2
    )
    (tmp_path / "junk.onnx").write_bytes(np.random.default_rng(0).bytes(100))
    assert (
        run_cli(
            [
                "audit",
                marked_world.cli_key,
                tmp_path / "junk.onnx",
                "--marked",
                marked_world.cli_marked,
                "--originals",
                marked_world.cli_originals,
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


def test_every_help_text_is_shown_whole():
    """Rich reads ``[...]`` in help as markup and drops it; every option's help must survive."""
    import re

    import typer.main
    from typer.testing import CliRunner

    from tracemark.cli import app

    def normalise(text: str) -> str:
        return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))

    root = typer.main.get_command(app)
    runner = CliRunner()
    checked = 0
    for name, command in root.commands.items():
        shown = runner.invoke(app, [name, "--help"], env={"COLUMNS": "400"}).output
        for param in command.params:
            if param.help and not getattr(param, "hidden", False):
                expected = normalise(param.help.replace("\\[", "["))
                assert expected in normalise(shown), (name, param.name)
                checked += 1
    assert checked > 50


def test_audit_report_page_reads_for_a_person_in_a_real_browser(
    marked_world, exported, tmp_path, capsys
):
    """`audit --report`: one self-contained page (no script, no link out) that headless
    Chromium renders with the verdict in words and the plots drawn."""
    page = tmp_path / "audit.html"
    args = ["audit", marked_world.cli_key, exported / "trained.pt", "--marked"]
    args += [marked_world.cli_marked, "--originals", marked_world.cli_originals]
    args += ["--label", str(marked_world.classes[0]), "--quiet", "--json", "--report", page]
    assert run_cli(args) == 0
    v = json.loads(capsys.readouterr().out)
    text = page.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert text.count("data:image/png;base64,") == 2  # null distribution, sequential growth
    dom, shot = render_in_chromium(page, tmp_path / "audit.png")
    words = " ".join(dom.split())
    assert "The model was TRAINED ON your marked data" in words
    assert f"audits (p = {v['p_value']:.4g})" in words and "would happen in about 1 of" in words
    assert "What this verdict does not say" in words
    assert Key.model_validate_json(Path(marked_world.cli_key).read_text()).commitment() in words
    assert_a_plot_is_drawn(shot)
    # the page is never written over without --force, and refused before any query
    assert run_cli(args) == 2
    assert "report page" in capsys.readouterr().err


def test_mark_measures_what_marking_does_and_previews_it(tmp_path, fmnist_test, capsys):
    src = tmp_path / "photos"
    write_pngs(src, fmnist_test.images[:6])
    assert run_cli(["keygen", "-o", tmp_path / "k.json", "-p", "compress=false"]) == 0
    out, preview = tmp_path / "published", tmp_path / "preview.png"
    # a preview shows the originals: never inside the folder you publish
    bad = ["mark", tmp_path / "k.json", src, out, "--quiet", "--preview", out / "p.png"]
    assert run_cli(bad) == 2 and not out.exists()
    assert "folder you publish" in " ".join(capsys.readouterr().err.split())
    args = ["mark", tmp_path / "k.json", src, out, "--quiet", "--preview", preview]
    assert run_cli(args) == 0
    shown = " ".join(capsys.readouterr().out.split())
    manifest = read_manifest(tmp_path / "published.manifest.json")
    entries = [e for e in manifest["files"] if e.get("carries_mark")]
    assert len(entries) == 6
    for e in entries:  # PSNR of the written 8-bit files, recomputed here from them
        a = np.asarray(Image.open(src / e["source"]), dtype=np.float64) / 255
        b = np.asarray(Image.open(out / e["marked"]), dtype=np.float64) / 255
        assert e["psnr"] == pytest.approx(10 * np.log10(1 / np.mean((a - b) ** 2)), abs=0.01)
        assert 0 < e["ssim"] < 1
    summary = manifest["stealth"]
    assert summary["images"] == 6
    assert summary["psnr_mean"] == pytest.approx(np.mean([e["psnr"] for e in entries]), abs=1e-3)
    assert summary["ssim_min"] == min(e["ssim"] for e in entries)
    assert f"stealth: 6 marked images: PSNR {summary['psnr_mean']:.1f} dB mean" in shown
    with Image.open(preview) as im:  # 4 rows of original | marked | difference
        scale = 256 // 28
        assert im.size == (scale * (3 * 28 + 8), scale * 4 * (28 + 4))
        assert len(np.unique(np.asarray(im))) > 10
    # greyscale images with the compressed palette: a key known to carry no signal
    assert run_cli(["keygen", "-o", tmp_path / "c.json"]) == 0
    assert run_cli(["mark", tmp_path / "c.json", src, tmp_path / "o2", "--quiet"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: this key's compressed palette carries no signal on greyscale" in err
