"""The bad-input campaign's findings, one test each (finding numbers as in the issue).

They must hold: no traceback (every error is a TracemarkError, exit status 2), no hang
past the stated deadline, no file outside OUT touched (originals are hashed before and
after). The models here are untrained: what is checked is input handling, not power.
Property-based tests of the parsers are in test_parsers_fuzz.py.
"""

from __future__ import annotations

import base64
import errno
import http.server
import io
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tracemark.datasets import load_fashion_mnist
from tracemark.errors import TracemarkError
from tracemark.oracle import HttpOracle, QueryLog
from tracemark.oracle.wire import JsonCodec, MalformedAnswer, V2Codec

from helpers import press_ctrl_c_twice, run_cli, tree_hashes, write_pngs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Twelve Fashion-MNIST originals, a tracker key, and untrained 10- and 3-class models."""
    from tracemark.models import build_model
    from tracemark.training import save_checkpoint

    root = tmp_path_factory.mktemp("bad")
    images = load_fashion_mnist(split="test").images[:12]
    write_pngs(root / "src" / "sub", images[:6])
    write_pngs(root / "src", images[6:])
    assert run_cli(["keygen", "--out", root / "me.key"]) == 0
    for name, classes in (("model.pt", 10), ("three.pt", 3)):
        save_checkpoint(build_model("small-cnn", num_classes=classes, width=8), root / name)
    return root


def _fresh(setup, tmp_path) -> tuple[Path, Path]:
    """A private copy of the originals (tests may try to damage them)."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(setup / "src", src)
    return src, setup / "me.key"


SMALL = ("--n-pseudo", "9", "--alpha", "0.2")  # a cheap audit: p >= 0.1 is reachable


def _audit_args(setup, src: Path, out: Path, *extra) -> list:
    model = setup / "model.pt"
    return ["audit", setup / "me.key", model, "--marked", out, "--originals", src, *extra]


# ---------------------------------------------------------------- 1: --query-log


def test_01_query_log_never_cuts_a_file_that_is_not_a_log(tmp_path):
    png = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    with open(png, "ab") as fh:
        fh.write(b"no newline at the end")  # what the old code cut back to the last newline
    before = png.read_bytes()
    with pytest.raises(TracemarkError, match="not a tracemark query log"):
        QueryLog(png, {"endpoint": "http://127.0.0.1:1", "protocol": "v2", "model_name": "m"})
    assert png.read_bytes() == before


# ---------------------------------------------------------------- 2: symlinks in OUT


def test_02_mark_force_never_writes_through_a_link_into_the_originals(setup, tmp_path, capsys):
    src, key = _fresh(setup, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(src / "sub", target_is_directory=True)
    before = tree_hashes(src)
    assert run_cli(["mark", key, src, out, "--force", "--quiet"]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert tree_hashes(src) == before


# ---------------------------------------------------------------- 3: --evidence


def test_03_evidence_never_replaces_a_file_without_force(setup, tmp_path, capsys):
    src, key = _fresh(setup, tmp_path)
    out = tmp_path / "out"
    assert run_cli(["mark", key, src, out, "--quiet"]) == 0
    victim = tmp_path / "precious.key"
    victim.write_text("my other key\n")
    args = _audit_args(setup, src, out, "--evidence", victim, *SMALL, "--quiet")
    assert run_cli(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert victim.read_text() == "my other key\n"
    assert run_cli([*args, "--force"]) == 0  # with --force it is replaced, atomically
    assert json.loads(victim.read_text())["method"] == "tracker"
    evidence_in_src = _audit_args(setup, src, out, "--evidence", src / "x.json", "--quiet")
    assert run_cli(evidence_in_src) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "is inside" in err and "one of this command's inputs" in err


# ---------------------------------------------------------------- 4 and 13: --manifest


@pytest.mark.parametrize("where", ["src", "out"])
def test_04_13_manifest_goes_neither_into_src_nor_into_out(setup, tmp_path, capsys, where):
    src, key = _fresh(setup, tmp_path)
    out = tmp_path / "out"
    target = src / "img0000.png" if where == "src" else out / "manifest.json"
    before = tree_hashes(src)
    assert run_cli(["mark", key, src, out, "--manifest", target, "--force", "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert ("one of this command's inputs" if where == "src" else "folder you publish") in err
    assert tree_hashes(src) == before and not (out / "manifest.json").exists()


# ---------------------------------------------------------------- 5: replay


@pytest.fixture(scope="module")
def logged_audit(setup, tmp_path_factory):
    """A tracker audit of the untrained model over HTTP, with its query log."""
    from tracemark.serve import create_app, serving

    root = tmp_path_factory.mktemp("replay")
    out, log = root / "out", root / "q.jsonl"
    assert run_cli(["mark", setup / "me.key", setup / "src", out, "--quiet"]) == 0
    with serving(create_app(setup / "model.pt")) as url:
        endpoint = f"{url}/v2/models/model"
        args = ["audit", setup / "me.key", endpoint, "--marked", out, "--originals"]
        args += [setup / "src", *SMALL, "--query-log", log, "--json", "--quiet"]
        assert run_cli(args) == 0
    return {"log": log, "out": out, "url": url}


def _replay(setup, world, log, *extra) -> list:
    args = ["replay", log, setup / "me.key", "--marked", world["out"], "--originals"]
    return [*args, setup / "src", *SMALL, "--json", "--quiet", *extra]


def test_05_replay_refuses_an_edited_log_and_names_the_model(setup, logged_audit, tmp_path, capsys):
    capsys.readouterr()
    assert run_cli(_replay(setup, logged_audit, logged_audit["log"])) == 0
    captured = capsys.readouterr()
    verdict = json.loads(captured.out)
    assert any("recorded from http://127.0.0.1" in n for n in verdict["notes"])
    assert "hash chain intact" in captured.err
    # Confident scores pasted over five answers: the chain breaks at the first.
    lines = logged_audit["log"].read_text().splitlines()
    edited = tmp_path / "edited.jsonl"
    for i in range(2, 7):
        record = json.loads(lines[i])
        width = len(record["answer"]["output"])
        record["answer"]["output"] = [1.0] + [0.0] * (width - 1)
        lines[i] = json.dumps(record)
    edited.write_text("\n".join(lines) + "\n")
    assert run_cli(_replay(setup, logged_audit, edited)) == 2
    assert "hash chain is broken" in capsys.readouterr().err
    # A log of another endpoint or model is refused when the replay names the one expected.
    wrong = _replay(setup, logged_audit, logged_audit["log"], "--endpoint", "http://x:1/v2")
    assert run_cli(wrong) == 2
    assert "log of another model" in capsys.readouterr().err
    assert run_cli([*_replay(setup, logged_audit, logged_audit["log"]), "--model-name", "b"]) == 2
    assert "log of another model" in capsys.readouterr().err
    right = logged_audit["url"] + "/v2/models/model"
    assert run_cli(_replay(setup, logged_audit, logged_audit["log"], "--endpoint", right)) == 0


def test_05_a_removed_or_reordered_line_breaks_the_chain(logged_audit, tmp_path):
    lines = logged_audit["log"].read_text().splitlines()
    for name, changed in (
        ("removed", lines[:3] + lines[4:]),
        ("reordered", [lines[0], lines[2], lines[1], *lines[3:]]),
    ):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(changed) + "\n")
        with pytest.raises(TracemarkError, match="hash chain is broken"):
            QueryLog.read(path)


# ---------------------------------------------------------------- 6: huge labels


@pytest.mark.parametrize("label", [10**9, 2**62])
def test_06_a_huge_label_is_refused_before_any_allocation(tmp_path, capsys, label):
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, 2, label], np.int64))
    start = time.monotonic()
    assert run_cli(["watermark", data, tmp_path / "rel.npz", "--quiet"]) == 2
    assert "class indices" in capsys.readouterr().err
    assert time.monotonic() - start < 10
    assert not (tmp_path / "rel.npz").exists()


# ---------------------------------------------------------------- 7: slow loris, Ctrl-C


class _SlowLoris:
    """A server that sends a status line and headers, then one body byte a second."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        try:
            conn.recv(1 << 20)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            conn.sendall(b"Content-Length: 100000\r\n\r\n")
            while not self.stop.is_set():
                conn.sendall(b" ")
                time.sleep(1.0)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_07_timeout_is_a_deadline_for_the_whole_request():
    server = _SlowLoris()
    try:
        oracle = HttpOracle(
            server.url,
            model_name="m",
            layout="nchw",
            input_name="x",
            binary="off",
            timeout=2.0,
            retries=0,
        )
        start = time.monotonic()
        with pytest.raises(TracemarkError, match="no complete answer within 2 s"):
            oracle.query(np.zeros((2, 4, 4, 1), np.float32))
        assert time.monotonic() - start < 6  # one byte a second never reset the clock
        oracle.close()
    finally:
        server.close()


def test_07_a_second_ctrl_c_cuts_requests_in_flight_off():
    # binary="off": straight to the infer request (auto first asks GET /v2 which wire).
    server = _SlowLoris()
    try:
        oracle = HttpOracle(
            server.url,
            model_name="m",
            layout="nchw",
            input_name="x",
            binary="off",
            timeout=60.0,
            retries=0,
        )
        press_ctrl_c_twice(after=0.5)
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            oracle.query(np.zeros((2, 4, 4, 1), np.float32))
        assert time.monotonic() - start < 5  # not the 60 s deadline
        oracle.close()
    finally:
        server.close()


# ---------------------------------------------------------------- 8, 10: server text


def _scripted(handler) -> HttpOracle:
    return HttpOracle(
        "http://127.0.0.1:9",
        model_name="m",
        layout="nchw",
        input_name="x",
        retries=1,
        backoff=0.0,
        headers={"Authorization": "Bearer s3cr3t-t0ken-value"},
        transport=httpx.MockTransport(handler),
    )


def test_08_a_credential_echoed_by_the_server_is_redacted():
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": f"bad {request.headers['authorization']}"})

    with pytest.raises(TracemarkError) as info:
        _scripted(echo).query(np.zeros((1, 4, 4, 1), np.float32))
    assert "s3cr3t" not in str(info.value) and "<redacted>" in str(info.value)


class _EscapeServer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer()

    def _answer(self) -> None:
        body = json.dumps({"error": "\x1b]0;pwned\x07\x1b[31mred\x1b[0m\rgone"}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_10_server_text_is_escaped_before_it_is_printed(setup, tmp_path, capsys):
    src, key = _fresh(setup, tmp_path)
    out = tmp_path / "out"
    assert run_cli(["mark", key, src, out, "--quiet"]) == 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EscapeServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v2/models/m"
        capsys.readouterr()
        args = ["audit", key, url, "--marked", out, "--originals", src, "--quiet"]
        assert run_cli(args) == 2
        err = capsys.readouterr().err
    finally:
        server.shutdown()
    assert "\x1b" not in err and "\x07" not in err and "\r" not in err
    assert "\\x1b" in err and "red" in err


# ---------------------------------------------------------------- 9: plain-http warning


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("[::1]", True),
        ("localhost.attacker.example", False),
        ("127.attacker.example", False),
        ("localhostx", False),
        ("10.0.0.1", False),
    ],
)
def test_09_credentials_over_plain_http_warn_unless_the_host_is_loopback(host, loopback):
    import warnings

    from tracemark.oracle.http import is_loopback

    assert is_loopback(host) is loopback

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        HttpOracle(f"http://{host}:8080", model_name="m", headers={"Authorization": "t"}).close()
    warned = any("plain http" in str(w.message) for w in caught)
    assert warned is not loopback


# ---------------------------------------------------------------- 11, 12: answers


def _v2(data, datatype="FP32", shape=(1, 3)) -> dict:
    return {"outputs": [{"name": "p", "datatype": datatype, "shape": list(shape), "data": data}]}


@pytest.mark.parametrize(
    "data",
    [
        [True, False, False],
        ["0.8", "0.1", "0.1"],
        [10**400, 0, 0],
        [None, 0.5, 0.5],
        [{"a": 1}, 0.5, 0.5],
    ],
)
def test_11_12_garbage_scores_are_errors(data):
    with pytest.raises(MalformedAnswer):
        V2Codec("m").decode(_v2(data), 1)


def test_11_12_json_answers_hold_numbers_and_small_labels_only():
    codec = JsonCodec()
    for preds in ([[10**400, 0.0]], [[True, False]], [{"label": 10**9, "score": 0.5}], ["1e3"]):
        with pytest.raises(MalformedAnswer):
            codec.decode({"predictions": preds}, 1)
    labels = V2Codec("m").decode(
        {"outputs": [{"name": "labels", "datatype": "INT64", "shape": [1, 1], "data": [7]}]}, 1
    )
    assert labels == [{"labels": [7]}]


# ---------------------------------------------------------------- 12: tracebacks


def test_12_a_file_name_that_is_not_utf8_is_a_clear_error(setup, tmp_path, capsys):
    src, key = _fresh(setup, tmp_path)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(os.fsencode(src) + b"/caf\xe9.png")
    assert run_cli(["keygen", "--out", tmp_path / "iso.key", "--method", "isotope"]) == 0
    for k in (key, tmp_path / "iso.key"):
        assert run_cli(["mark", k, src, tmp_path / f"out-{k.stem}", "--quiet"]) == 2
        assert "not valid UTF-8" in capsys.readouterr().err


def _isotope_image_key(tmp_path) -> dict:
    mark = tmp_path / "logo.png"
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(mark)
    path = tmp_path / "iso.key"
    assert run_cli(["keygen", "--out", path, "--method", "isotope", "--mark-file", mark]) == 0
    return json.loads(path.read_text())


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (a bomb, if anyone decoded it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("damage", ["bad base64", "png bomb"])
def test_12_an_isotope_key_with_a_damaged_mark_image_is_a_clear_error(tmp_path, capsys, damage):
    info = _isotope_image_key(tmp_path)
    if damage == "bad base64":
        info["params"]["image_png"] = "not*base64!"
    else:
        bomb = base64.b64encode(_png_declaring(100_000, 100_000)).decode()
        info["params"]["image_png"] = bomb
    path = tmp_path / "damaged.key"
    path.write_text(json.dumps(info))
    path.chmod(0o600)
    assert run_cli(["key-info", path]) == 2
    assert "image_png" in capsys.readouterr().err


@pytest.mark.parametrize(("field", "value"), [("num_classes", "ten"), ("width", 200_000)])
def test_12_a_checkpoint_with_absurd_sizes_is_a_clear_error(setup, tmp_path, capsys, field, value):
    import torch

    payload = torch.load(setup / "model.pt", weights_only=True)
    payload["arch_kwargs"][field] = value
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    start = time.monotonic()
    src, key = _fresh(setup, tmp_path)
    out = tmp_path / "out"
    assert run_cli(["mark", key, src, out, "--quiet"]) == 0
    args = ["audit", key, bad, "--marked", out, "--originals", src, "--quiet"]
    assert run_cli(args) == 2
    assert field in capsys.readouterr().err
    assert time.monotonic() - start < 30


def test_12_size_has_a_cap(setup, tmp_path, capsys):
    src, _ = _fresh(setup, tmp_path)
    args = _audit_args(setup, src, tmp_path / "out", "--size", "100000x100000", "--quiet")
    assert run_cli(args) == 2
    assert "--size takes sides between 1 and" in capsys.readouterr().err


# ---------------------------------------------------------------- 13: inconsistent inputs


def test_13_class_names_must_match_the_model(setup, tmp_path, capsys):
    src, key = _fresh(setup, tmp_path)
    out = tmp_path / "out"
    assert run_cli(["mark", key, src, out, "--quiet"]) == 0
    args = ["audit", key, setup / "three.pt", "--marked", out, "--originals", src]
    assert run_cli([*args, "--class-names", "a,b", *SMALL, "--quiet"]) == 2
    assert "--class-names (2 names)" in capsys.readouterr().err


def test_13_originals_must_not_be_the_published_images(setup, tmp_path, capsys):
    src, key = _fresh(setup, tmp_path)
    out = tmp_path / "out"
    assert run_cli(["mark", key, src, out, "--quiet"]) == 0
    assert run_cli(_audit_args(setup, out, out, "--quiet")) == 2  # --originals = marked
    assert "--originals holds" in capsys.readouterr().err
    assert run_cli(_audit_args(setup, src, out, "--holdout", src, "--quiet")) == 2
    assert "no longer takes a holdout" in capsys.readouterr().err
    iso = tmp_path / "iso.key"
    assert run_cli(["keygen", "--out", iso, "--method", "isotope"]) == 0
    iso_out = tmp_path / "iso-out"
    assert run_cli(["mark", iso, src, iso_out, "--quiet"]) == 0
    model = setup / "model.pt"
    args = ["audit", iso, model, "--marked", iso_out, "--aux", src, "--holdout", src]
    assert run_cli([*args, "--quiet"]) == 2
    assert "take no --holdout" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ubw_release(setup, tmp_path_factory):
    root = tmp_path_factory.mktemp("ubw-bad")
    data = load_fashion_mnist(split="test").subset(np.arange(200))
    x = np.round(data.images * 255).astype(np.uint8)
    np.savez(root / "data.npz", x=x, y=data.labels)
    three = data.labels % 3
    np.savez(root / "three.npz", x=x, y=three)
    for name in ("data", "three"):
        args = ["watermark", root / f"{name}.npz", root / f"{name}-rel.npz"]
        assert run_cli([*args, "--key", root / f"{name}.key", "--quiet"]) == 0
    bad = data.labels.copy()
    bad[0] = 15
    np.savez(root / "test15.npz", x=x, y=bad)
    np.savez(root / "test.npz", x=x, y=data.labels)
    return root


@pytest.mark.parametrize("command", ["verify", "watermark-report"])
def test_13_test_labels_and_key_classes_must_match_the_model(setup, ubw_release, capsys, command):
    model = setup / "model.pt"
    args = [command, model, ubw_release / "data.key", ubw_release / "test15.npz", "--json"]
    assert run_cli(args) == 2
    assert "label 15" in capsys.readouterr().err
    args = [command, model, ubw_release / "three.key", ubw_release / "three.npz", "--json"]
    assert run_cli(args) == 2
    assert "the key (num_classes = 3)" in capsys.readouterr().err


# ---------------------------------------------------------------- 14: smaller gaps


@pytest.mark.parametrize("kind", ["gif", "webp", "apng"])
def test_14_animated_images_are_refused_by_name(setup, tmp_path, capsys, kind):
    src, key = _fresh(setup, tmp_path)
    frames = [Image.fromarray(np.full((28, 28), v, np.uint8)) for v in (0, 128, 255)]
    name = {"gif": "anim.gif", "webp": "anim.webp", "apng": "anim.png"}[kind]
    fmt = {"gif": "GIF", "webp": "WEBP", "apng": "PNG"}[kind]
    frames[0].save(src / name, format=fmt, save_all=True, append_images=frames[1:])
    assert run_cli(["mark", key, src, tmp_path / "out", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "animated (3 frames)" in err and name in err


def test_14_a_still_gif_is_marked_not_skipped(setup, tmp_path):
    src, key = _fresh(setup, tmp_path)
    Image.fromarray(np.full((28, 28), 90, np.uint8)).save(src / "still.gif")
    assert run_cli(["mark", key, src, tmp_path / "out", "--quiet"]) == 0
    assert (tmp_path / "out" / "still.png").exists()


def test_14_a_link_out_of_src_is_refused(setup, tmp_path, capsys):
    src, key = _fresh(setup, tmp_path)
    outside = tmp_path / "elsewhere.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(outside)
    (src / "link.png").symlink_to(outside)
    assert run_cli(["mark", key, src, tmp_path / "out", "--quiet"]) == 2
    assert "outside" in capsys.readouterr().err


def test_14_a_full_disk_says_so(setup, tmp_path, capsys, monkeypatch):
    src, key = _fresh(setup, tmp_path)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("tracemark.fsutil.os.fsync", full)
    assert run_cli(["mark", key, src, tmp_path / "out", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "disk is full" in err and "permissions" not in err
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_14_an_interrupted_mark_resumes_by_running_it_again(setup, tmp_path):
    src, key = _fresh(setup, tmp_path)
    out = tmp_path / "out"
    assert run_cli(["mark", key, src, out, "--quiet"]) == 0
    done = tree_hashes(out)
    manifest = tmp_path / "out.manifest.json"
    manifest.unlink()  # interrupted: some files written, no manifest yet
    for p in sorted(out.rglob("*.png"))[:5]:
        p.unlink()
    assert run_cli(["mark", key, src, out, "--quiet"]) == 0  # no --force needed
    assert tree_hashes(out) == done and manifest.exists()
    # A file that differs is still never replaced without --force.
    first = sorted(out.rglob("*.png"))[0]
    first.write_bytes(b"someone else's file")
    manifest.unlink()
    assert run_cli(["mark", key, src, out, "--quiet"]) == 2
    assert first.read_bytes() == b"someone else's file"


def test_14_a_world_readable_key_warns_in_one_line(setup, tmp_path, capsys):
    key = tmp_path / "open.key"
    key.write_bytes((setup / "me.key").read_bytes())
    key.chmod(0o644)
    assert stat.S_IMODE(key.stat().st_mode) == 0o644
    assert run_cli(["key-info", key]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "UserWarning" not in err and "warnings.warn" not in err


def test_14_a_server_failing_forever_says_how_long_it_will_retry():
    def busy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": "busy"})

    with (
        pytest.warns(UserWarning, match=r"retrying each failed request up to 1 times"),
        pytest.raises(TracemarkError, match="failed 2 times in a row"),
    ):
        _scripted(busy).query(np.zeros((1, 4, 4, 1), np.float32))


def test_14_describe_os_error_names_the_cause():
    from tracemark.fsutil import describe_os_error

    assert "disk is full" in describe_os_error(OSError(errno.ENOSPC, "x"))
    assert "permission" in describe_os_error(OSError(errno.EACCES, "x"))


def test_io_smoke_png_bytes_roundtrip():
    # _png_declaring really declares what it says (the bomb test depends on it).
    with Image.open(io.BytesIO(_png_declaring(300, 200))) as im:
        assert im.size == (300, 200)
