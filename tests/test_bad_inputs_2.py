"""The second bad-input campaign's findings, one test each (finding ids as in the issue).

W: wrong or silently accepted results; D: data loss; H: hang; T: traceback; U: unclear
message. Each test failed on the code before the fix. The models here are untrained:
what is checked is input handling, not power.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tracemark.datasets import load_fashion_mnist
from tracemark.errors import TracemarkError

from helpers import TEST_SEED, run_cli, tree_hashes, write_pngs

SMALL = ("--n-pseudo", "9", "--alpha", "0.2", "--quiet")  # a cheap audit
KEPT_BACK = 16


def _err(capsys) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    """An owner who marked 20 Fashion-MNIST images and published the key's choice of 4,
    20 other images of the same kind, and an untrained model."""
    from tracemark.models import build_model
    from tracemark.training import save_checkpoint

    root = tmp_path_factory.mktemp("owner")
    images = load_fashion_mnist(split="test").images
    start = 40 * TEST_SEED
    write_pngs(root / "photos", images[start : start + 20])
    write_pngs(root / "others", images[start + 20 : start + 40])
    assert run_cli(["keygen", "--out", root / "me.key"]) == 0
    assert run_cli(["mark", root / "me.key", root / "photos", root / "pub", "--publish", "4"]) == 0
    save_checkpoint(build_model("small-cnn", num_classes=10, width=8), root / "model.pt")
    return root


def _copy(owner: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A private copy of the originals, the published folder and its manifest."""
    src, pub = tmp_path / "photos", tmp_path / "pub"
    shutil.copytree(owner / "photos", src)
    shutil.copytree(owner / "pub", pub)
    shutil.copy(owner / "pub.manifest.json", tmp_path / "pub.manifest.json")
    return src, pub, tmp_path / "pub.manifest.json"


def _audit(owner: Path, src: Path, pub: Path, *extra) -> list:
    return ["audit", owner / "me.key", owner / "model.pt", "--marked", pub, "--originals", src,
            *SMALL, *extra]  # fmt: skip


# ------------------------------------------------------ W1, W2: the collection is checked


def test_w1_swapped_kept_back_originals_are_refused_by_name(owner, tmp_path, capsys):
    src, pub, _ = _copy(owner, tmp_path)
    published = {p.name for p in pub.iterdir()}
    kept = sorted(p.name for p in src.iterdir() if p.name not in published)
    assert len(kept) == KEPT_BACK
    for name in kept:  # same names, other images: the forged collection of the finding
        shutil.copy(owner / "others" / name, src / name)
    assert run_cli(_audit(owner, src, pub, "--json")) == 2
    err = _err(capsys)
    assert f"{KEPT_BACK} changed since marking" in err and kept[0] in err
    assert "is not the collection you marked" in err


def test_w1_the_true_collection_audits_and_records_its_digest(owner, tmp_path, capsys):
    src, pub, manifest = _copy(owner, tmp_path)
    digest = json.loads(manifest.read_text())["collection_digest"]
    assert run_cli(_audit(owner, src, pub, "--json")) == 0
    verdict = json.loads(capsys.readouterr().out)
    checked = verdict["statistics"]["inputs_checked"]
    assert checked["collection_digest"] == digest and checked["originals_checked"] == 20
    assert checked["published_regenerated"] == 4
    assert checked["design"] == "randomised publication"


def test_w1_randomised_publication_needs_the_manifest_and_says_where_it_looked(
    owner, tmp_path, capsys
):
    src, pub, manifest = _copy(owner, tmp_path)
    elsewhere = tmp_path / "kept" / "my.manifest.json"
    elsewhere.parent.mkdir()
    manifest.rename(elsewhere)
    assert run_cli(_audit(owner, src, pub)) == 2
    err = _err(capsys)
    assert "needs the marking manifest" in err and str(manifest) in err and "--manifest" in err
    assert run_cli(_audit(owner, src, pub, "--manifest", elsewhere)) == 0


def test_w1_an_edited_manifest_or_another_keys_is_refused(owner, tmp_path, capsys):
    src, pub, manifest = _copy(owner, tmp_path)
    doc = json.loads(manifest.read_text())
    doc["files"][0]["source_sha256"] = hashlib.sha256(b"x").hexdigest()  # digest left as it was
    manifest.write_text(json.dumps(doc))
    assert run_cli(_audit(owner, src, pub)) == 2
    assert "was edited after marking" in _err(capsys)
    assert run_cli(["keygen", "--out", tmp_path / "other.key"]) == 0
    shutil.copy(owner / "pub.manifest.json", manifest)
    other = ["audit", tmp_path / "other.key", *_audit(owner, src, pub)[2:]]
    assert run_cli(other) == 2
    assert "written by another key" in _err(capsys)


def test_w2_an_edited_published_original_is_refused_by_name(owner, tmp_path, capsys):
    src, pub, _ = _copy(owner, tmp_path)
    name = sorted(p.name for p in pub.iterdir())[0]
    pixels = np.array(Image.open(src / name))
    pixels[3, 3] = 255 - pixels[3, 3]  # one pixel retouched
    Image.fromarray(pixels).save(src / name)
    assert run_cli(_audit(owner, src, pub)) == 2
    err = _err(capsys)
    assert "1 changed since marking" in err and name in err


def test_w2_originals_reencoded_as_jpeg_under_their_names_are_refused(owner, tmp_path, capsys):
    src, pub, _ = _copy(owner, tmp_path)
    for path in src.iterdir():
        Image.open(path).save(path, format="JPEG", quality=95)  # same name, other bytes
    assert run_cli(_audit(owner, src, pub)) == 2
    assert "20 changed since marking" in _err(capsys)


def test_w2_unrelated_images_under_the_published_names_are_refused(owner, tmp_path, capsys):
    src, pub, _ = _copy(owner, tmp_path)
    names = sorted(p.name for p in pub.iterdir())
    for name in names:
        shutil.copy(owner / "others" / name, pub / name)
    assert run_cli(_audit(owner, src, pub)) == 2
    err = _err(capsys)
    assert "4 differ from what mark wrote" in err and names[0] in err


def test_w2_without_a_manifest_the_marks_are_regenerated_and_compared(owner, tmp_path, capsys):
    """Every image published (no originals kept back): the manifest is optional, but the
    published files must still carry the key's marks of the originals given."""
    src = tmp_path / "photos"
    shutil.copytree(owner / "photos", src)
    pub = tmp_path / "all"
    assert run_cli(["mark", owner / "me.key", src, pub, "--quiet"]) == 0
    (tmp_path / "all.manifest.json").unlink()
    assert run_cli(_audit(owner, src, pub)) == 0
    capsys.readouterr()
    shutil.copy(owner / "others" / "img0003.png", pub / "img0003.png")
    assert run_cli(_audit(owner, src, pub)) == 2
    err = _err(capsys)
    assert "do not carry this key's mark" in err and "img0003.png" in err


def test_w2_the_python_api_checks_the_collection_too(owner, tmp_path):
    import tracemark

    src, pub, _ = _copy(owner, tmp_path)
    shutil.copy(owner / "others" / "img0019.png", src / "img0019.png")
    with pytest.raises(TracemarkError, match=r"img0019\.png"):
        tracemark.audit(owner / "model.pt", owner / "me.key", pub, originals=src, n_pseudo=9)


# ------------------------------------------------------ D: writes through the one guard


def test_d1_serve_url_file_never_replaces_a_file_it_did_not_write(owner, tmp_path, capsys):
    from tracemark.cli.serve import is_url_file

    copy = tmp_path / "me-copy.key"
    shutil.copy(owner / "me.key", copy)
    before = copy.read_bytes()
    assert run_cli(["serve", owner / "model.pt", "--port", "0", "--url-file", copy]) == 2
    assert "already exists" in _err(capsys)
    assert copy.read_bytes() == before
    earlier = tmp_path / "url.txt"
    earlier.write_text("http://127.0.0.1:8123\n")
    assert is_url_file(earlier) and not is_url_file(copy)


def test_d2_the_access_log_appends_only_to_an_access_log(owner, tmp_path):
    from tracemark.serve import create_app

    photo = tmp_path / "photo.png"
    shutil.copy(owner / "photos" / "img0000.png", photo)
    before = photo.read_bytes()
    with pytest.raises(TracemarkError, match="appends only to its own logs"):
        create_app(owner / "model.pt", access_log=photo)
    assert photo.read_bytes() == before
    log = tmp_path / "access.jsonl"
    log.write_text(json.dumps({"sha256": "0" * 64, "time": "t"}) + "\n")
    create_app(owner / "model.pt", access_log=log)  # an earlier access log is appended to


def _foreign_sqlite(path: Path) -> bytes:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE photos (name TEXT, taken TEXT)")
    db.execute("INSERT INTO photos VALUES ('beach.png', '2026-07-01')")
    db.commit()
    db.close()
    return path.read_bytes()


def test_d3_evaluate_and_report_never_change_another_tools_database(tmp_path, capsys):
    other = tmp_path / "photos.db"
    before = _foreign_sqlite(other)
    assert run_cli(["evaluate", "demo-tracker-quick", "--db", other, "--quiet"]) == 2
    assert "not a tracemark results store" in _err(capsys)
    assert run_cli(["report", other]) == 2
    assert "not a tracemark results store" in _err(capsys)
    assert other.read_bytes() == before  # no tables added, not switched to WAL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos.db"]


def _tiny_store(path: Path) -> None:
    """A results store with one cell of three audits, written as the harness writes it."""
    from tracemark.evaluate.run import AuditRow, CellResult
    from tracemark.evaluate.store import Store

    evidence = zlib.compress(b"{}")
    audits = [
        AuditRow("probabilities", "marked", 0, True, 0.001, True, 10, 2.0, 3, evidence),
        AuditRow("probabilities", "marked", 1, False, 0.5, False, 10, 0.1, 3, evidence),
        AuditRow("probabilities", "clean", 0, True, 0.7, False, 10, -0.2, 3, evidence),
    ]
    cell = CellResult("c" * 64, "tracker", "tracker", "fit", "none", 0, 0.9, 0.91, {}, {}, audits)
    with Store(path) as store:
        spec = {"accesses": ["probabilities"], "alpha": 0.01, "countermeasure": {}, "dataset": {},
                "method": {"method": "tracker"}, "recipe": {}, "seed": 0}  # fmt: skip
        store.add(cell, 0.01, spec)


def test_d4_report_never_replaces_an_earlier_report_without_force(tmp_path, capsys):
    db, out = tmp_path / "r.db", tmp_path / "rep"
    _tiny_store(db)
    out.mkdir()
    (out / "report.md").write_text("my notes\n")
    assert run_cli(["report", db, "-o", out]) == 2
    assert "already exists" in _err(capsys)
    assert (out / "report.md").read_text() == "my notes\n"
    assert run_cli(["report", db, "-o", out, "--force"]) == 0
    assert "TPR" in (out / "report.md").read_text()


def test_d5_keygen_force_never_replaces_a_fifo(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert run_cli(["keygen", "--out", fifo, "--force"]) == 2
    assert "not a regular file (a named pipe)" in _err(capsys)
    assert fifo.is_fifo()


def test_d5_the_guard_refuses_a_device_even_with_force():
    from tracemark.fsutil import check_output

    with pytest.raises(TracemarkError, match="a character device"):
        check_output("/dev/null", force=True)


def test_w6_a_query_log_inside_the_originals_is_refused(owner, tmp_path, capsys):
    src, pub, _ = _copy(owner, tmp_path)
    before = tree_hashes(src)
    assert run_cli(_audit(owner, src, pub, "--query-log", src / "q.jsonl")) == 2
    assert "one of this command's inputs" in _err(capsys)
    assert tree_hashes(src) == before


def test_w8_train_never_writes_the_model_among_its_training_data(owner, tmp_path, capsys):
    data = tmp_path / "data"
    for label in ("0", "1"):
        shutil.copytree(owner / "photos", data / label)
    before = tree_hashes(data)
    assert run_cli(["train", data, data / "0" / "m.pt", "--epochs", "1", "--quiet"]) == 2
    assert "one of this command's inputs" in _err(capsys)
    assert tree_hashes(data) == before


# ------------------------------------------------------ the harness checks its store


def test_w3_a_path_is_never_taken_for_a_shipped_spec(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "null").mkdir()
    assert run_cli(["evaluate", "null", "--quiet"]) == 2
    assert "is a folder, not a spec file" in _err(capsys)
    assert run_cli(["evaluate", "./null-quick", "--quiet"]) == 2
    assert "does not exist" in _err(capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        ("UPDATE audits SET decision = 1 - decision", "decided"),
        ("UPDATE audits SET p_value = 7.5 WHERE owner = 1", "p-value 7.5"),
        ("UPDATE audits SET p_value = 'abc' WHERE owner = 1", "p-value 'abc'"),
        (
            "UPDATE audits SET p_value = 0.6, effect = 0 WHERE owner = 1",
            "does not match the digest",
        ),
        (
            "INSERT INTO audits SELECT 'x', access, model, 9, member, p_value, decision, queries, "
            "effect, label, evidence FROM audits LIMIT 1",
            "belongs to no cell",
        ),
        ("DROP TABLE runs", "no table runs"),
        ("UPDATE cells SET metrics = '{not json'", "metrics is not a JSON object"),  # T4
    ],
)
def test_w4_t4_report_refuses_a_tampered_store(tmp_path, capsys, edit, message):
    db = tmp_path / "r.db"
    _tiny_store(db)
    assert run_cli(["report", db, "--json"]) == 0
    capsys.readouterr()
    with sqlite3.connect(db) as con:
        con.execute(edit)
    con.close()
    tables = set(sqlite3.connect(db).execute("SELECT name FROM sqlite_master"))
    assert run_cli(["report", db, "--json"]) == 2
    err = _err(capsys)
    assert message in err and "Traceback" not in err
    assert set(sqlite3.connect(db).execute("SELECT name FROM sqlite_master")) == tables


def test_w5_report_of_an_empty_file_is_an_error_and_leaves_it_empty(tmp_path, capsys):
    empty = tmp_path / "empty.db"
    empty.touch()
    assert run_cli(["report", empty]) == 2
    assert "is empty" in _err(capsys)
    assert empty.stat().st_size == 0


@pytest.mark.parametrize(
    "where, value, message",
    [
        (("recipes", "r", "epochs"), 1e9, "epochs: Input should be a valid integer"),  # H1
        (("recipes", "r", "epochs"), 10**6, "epochs: Input should be less than or equal"),
        (("methods", "t", "options"), {"n_pseudo": 1e9}, "n_pseudo takes an integer"),
        (("methods", "t", "options"), {"n_pseudo": 10**9}, "n_pseudo must be between"),
        (("seeds",), [2**64], "seeds.0: Input should be less than or equal"),  # T1
    ],
)
def test_h1_t1_spec_numbers_have_types_and_bounds(where, value, message):
    from tracemark.evaluate.spec import parse_spec

    spec = {
        "name": "x",
        "seeds": [0],
        "recipes": {"r": {"epochs": 1}},
        "methods": {"t": {"method": "tracker", "members": 1}},
    }
    target = spec
    for part in where[:-1]:
        target = target[part]
    target[where[-1]] = value
    with pytest.raises(TracemarkError, match=message):
        parse_spec(spec)


def test_t2_a_second_run_on_one_store_is_refused_clearly(tmp_path):
    from tracemark.evaluate.store import Store

    db = tmp_path / "r.db"
    with Store(db), pytest.raises(TracemarkError, match="another `tracemark evaluate`"):
        Store(db)
    Store(db).close()  # free again once the first run closed it


def test_t3_report_out_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    db = tmp_path / "r.db"
    _tiny_store(db)
    (tmp_path / "out.txt").write_text("x")
    assert run_cli(["report", db, "-o", tmp_path / "out.txt"]) == 2
    assert "is a file; give a folder" in _err(capsys)


def test_t5_evaluate_cache_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "cache").write_text("x")
    args = ["evaluate", "demo-tracker-quick", "--db", tmp_path / "r.db", "--cache"]
    assert run_cli([*args, tmp_path / "cache", "--quiet"]) == 2
    assert "is a file; give a folder" in _err(capsys)


# ------------------------------------------------------ smaller


@pytest.mark.parametrize("verb", ["mark", "audit"])
def test_t6_ctrl_c_during_start_up_prints_no_traceback(owner, tmp_path, verb):
    args = {
        "mark": ["mark", owner / "me.key", owner / "photos", tmp_path / "out"],
        "audit": _audit(owner, owner / "photos", owner / "pub"),
    }[verb]
    console = Path(sys.executable).with_name("tracemark")
    proc = subprocess.Popen(
        [console, *map(str, args)],
        stderr=subprocess.PIPE,
        text=True,
        # Python reports each import on stderr as it finishes (PYTHONPROFILEIMPORTTIME)
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
        # A background job inherits SIGINT ignored, and Python then never raises on it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Start-up is tracemark's from the moment tracemark.console has loaded; before that the
    # console script pip wrote is still importing re, and on a loaded machine that moment
    # came after 0.3 s (a traceback from the script's own `import re`)
    for line in proc.stderr:
        if line.rstrip().endswith("| tracemark.console"):
            break
    time.sleep(0.3)  # the command line's imports take about a second more
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert proc.returncode in (130, -signal.SIGINT)


NATIVE_LOAD = """
import signal, sys
sys.path.insert(0, sys.argv[1])
from tracemark.console import NativeLoadFinder
signal.signal(signal.SIGINT, signal.default_int_handler)
if sys.argv[2] == "held":
    sys.meta_path.insert(0, NativeLoadFinder(["slowlib"]))
try:
    import slowlib
except KeyboardInterrupt:
    print("interrupted, loaded:", getattr(sys, "slowlib_loaded", False))
"""


@pytest.mark.parametrize("held", [True, False])
def test_t6_a_ctrl_c_while_a_native_library_loads_waits_until_it_has_loaded(tmp_path, held):
    """The console holds Ctrl-C back during torch's (and the other native libraries')
    first import, since a KeyboardInterrupt inside one can abort the process; the press
    is raised once the library has loaded. (A stand-in library presses Ctrl-C half-way
    through its own loading; without the finder it never finishes.)"""
    (tmp_path / "slowlib").mkdir()
    (tmp_path / "slowlib" / "__init__.py").write_text(
        "import os, signal, sys, time\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.1)\n"
        "sys.slowlib_loaded = True\n"
    )
    mode = "held" if held else "plain"
    run = subprocess.run(
        [sys.executable, "-c", NATIVE_LOAD, str(tmp_path), mode],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.stdout.strip() == f"interrupted, loaded: {held}", run.stderr


@pytest.mark.parametrize("kind", ["device", "huge"])
def test_t7_key_files_are_read_with_a_cap(tmp_path, capsys, kind):
    if kind == "device":
        path = Path("/dev/zero")
    else:
        path = tmp_path / "huge.key"
        with open(path, "wb") as fh:
            fh.truncate(20 << 20)  # sparse: 20 MiB of zeros
    assert run_cli(["key-info", path]) == 2
    err = _err(capsys)
    assert ("not a regular file" if kind == "device" else "larger than") in err


def test_u1_report_reads_without_writing(tmp_path, capsys):
    """A store report reads is opened read-only: it works on a read-only file, and changes
    no byte of the store (root ignores file modes, so the mode alone proves nothing)."""
    from tracemark.evaluate.store import open_store

    db = tmp_path / "r.db"
    _tiny_store(db)
    db.chmod(0o444)
    before = db.read_bytes()
    assert run_cli(["report", db, "--json"]) == 0
    assert db.read_bytes() == before
    with open_store(db) as store, pytest.raises(sqlite3.OperationalError, match="readonly"):
        store._db.execute("DELETE FROM audits")


def test_u2_keygen_over_a_folder_says_it_is_a_folder(tmp_path, capsys):
    assert run_cli(["keygen", "--out", tmp_path]) == 2
    err = _err(capsys)
    assert "is a folder" in err and "pass --force" not in err


def test_u3_a_refusal_names_what_the_path_is(owner, tmp_path, capsys):
    src, pub, _ = _copy(owner, tmp_path)
    assert run_cli(_audit(owner, src, pub, "--evidence", owner / "me.key", "--force")) == 2
    err = _err(capsys)
    assert "one of this command's inputs" in err and "originals" not in err.split("inputs")[0]
    assert run_cli(_audit(owner, src, pub, "--evidence", pub / "e.json")) == 2
    assert "holds your originals" not in _err(capsys)


def test_u4_a_failed_http_audit_without_a_query_log_says_answers_are_lost():
    import httpx

    from tracemark.oracle import HttpOracle

    oracle = HttpOracle(
        "http://127.0.0.1:9",
        model_name="m",
        layout="nchw",
        input_name="x",
        retries=0,
        transport=httpx.MockTransport(lambda r: httpx.Response(500, json={"error": "busy"})),
    )
    with pytest.raises(TracemarkError) as info:
        oracle.query(np.zeros((1, 4, 4, 1), np.float32))
    assert "are in the query log" not in str(info.value) and "No --query-log" in str(info.value)


def test_u5_replay_of_a_file_that_is_not_a_log_does_not_suggest_query_log(owner, tmp_path, capsys):
    src, pub, _ = _copy(owner, tmp_path)
    args = ["replay", owner / "me.key", owner / "me.key", "--marked", pub, "--originals", src]
    assert run_cli(args) == 2
    err = _err(capsys)
    assert "not a tracemark query log" in err and "--query-log" not in err.replace(
        "`tracemark audit --query-log`", ""
    )
