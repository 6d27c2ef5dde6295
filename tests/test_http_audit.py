"""Audits of a trained model served over HTTP (`tracemark serve`), end to end via the CLI.

The served model is the session's small CNN trained on marked users. Each test
compares the HTTP audit with the same audit run in-process on the same file: the
verdict must not depend on how the model is reached, on injected faults, or on an
interruption. Every server listens on 127.0.0.1 and is stopped by its test.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tracemark.serve import FaultPlan, ServeOptions, create_app, serving

from helpers import rechained, run_cli, write_pngs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(exported_models):
    """TorchScript files of the trained and clean models (trained.pt, clean.pt)."""
    return exported_models


def _tracker_args(marked_world, world, model: str) -> list:
    return [
        "audit", marked_world.cli_key, model, "--marked", marked_world.cli_marked,
        "--originals", marked_world.cli_originals, "--label", str(marked_world.classes[0]),
        "--n-pseudo", "100", "--json", "--quiet",
    ]  # fmt: skip


def _audit(args: list, capsys) -> dict:
    capsys.readouterr()
    code = run_cli(args)
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def _lines(path) -> list[dict]:
    """A log's lines, less a query log's batch lines (binary answers kept whole)."""
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if "batch" not in r]


def _complete_lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _same_verdict(a: dict, b: dict, fields=("p_value", "effect", "decision", "label", "access")):
    for field in fields:
        assert a[field] == b[field], field
    # The served model sends probabilities; in-process, tracemark softmaxes its logits.
    skip = {"softmax_applied"}
    stats = [{k: v for k, v in d["statistics"].items() if k not in skip} for d in (a, b)]
    assert stats[0] == stats[1]


def test_http_audit_is_identical_to_in_process_and_replays(marked_world, world, tmp_path, capsys):
    # The clean model: its p-value is not pinned at the floor 1/101, so equality means something
    # (the trained model over a real third-party server is in test_mlserver.py).
    model = "clean.pt"
    local = _audit([*_tracker_args(marked_world, world, world / model)], capsys)
    access, log = tmp_path / "served.jsonl", tmp_path / "q.jsonl"
    app = create_app(world / model, ServeOptions(name="cnn"), access_log=access)
    with serving(app) as url:
        args = _tracker_args(marked_world, world, f"{url}/v2/models/cnn")
        remote = _audit([*args, "--query-log", log], capsys)
        _same_verdict(remote, local)
        drawn = local["statistics"]["pseudo_users_drawn"]  # sequential: up to the cap 100
        assert remote["queries"] == local["queries"] == 30 + drawn * 30 <= 30 + 100 * 30
        served = [r["sha256"] for r in _lines(access)]
        assert len(served) == len(set(served)) == remote["queries"]
        # Again with the same log: every answer comes from it; the model sees nothing new.
        again = _audit([*args, "--query-log", log], capsys)
        _same_verdict(again, local)
        assert len(_lines(access)) == len(served)
    # A third party recomputes the verdict from the log alone (the server is gone).
    replayed = _audit(["replay", log, marked_world.cli_key, *args[3:]], capsys)
    _same_verdict(replayed, local)
    header, *records = _lines(log)
    assert header["format"] == "tracemark-query-log" and header["model_name"] == "cnn"
    assert len(records) == len({r["sha256"] for r in records}) == local["queries"]
    assert not local["decision"] and local["p_value"] > 1 / 101


def test_a_binary_wire_audit_replays_bit_for_bit_and_a_tampered_payload_is_refused(
    marked_world, world, tmp_path, capsys
):
    import base64
    import hashlib

    log = tmp_path / "q.jsonl"
    local = _audit(_tracker_args(marked_world, world, world / "clean.pt"), capsys)
    with serving(create_app(world / "clean.pt", ServeOptions(name="cnn"))) as url:
        args = _tracker_args(marked_world, world, f"{url}/v2/models/cnn")
        remote = _audit([*args, "--query-log", log, "--binary", "on"], capsys)
    _same_verdict(remote, local)
    lines = log.read_text().splitlines()
    batches = [json.loads(line)["batch"] for line in lines if '"batch"' in line[:12]]
    assert batches and sum(len(b["images"]) for b in batches) == remote["queries"]
    replay = ["replay", log, marked_world.cli_key, *args[3:]]
    replayed = _audit(replay, capsys)
    _same_verdict(replayed, remote)
    assert replayed["statistics"] == remote["statistics"]  # every figure, bit for bit

    def refused(text: str, message: str) -> None:
        tampered = tmp_path / "tampered.jsonl"
        tampered.write_text(text)
        assert run_cli(["replay", tampered, *replay[2:]]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert message in err, err

    at = next(i for i, line in enumerate(lines) if '"batch"' in line[:12])
    record = json.loads(lines[at])
    raw = bytearray(base64.b64decode(record["batch"]["response"]))
    head = record["batch"]["header_length"]
    raw[head + 3] ^= 0x40  # one byte of the first probability: a changed answer
    # 1. the payload edited: its hash no longer matches
    edited = dict(record, batch={**record["batch"], "response": base64.b64encode(raw).decode()})
    text = "\n".join([*lines[:at], json.dumps(edited), *lines[at + 1 :]]) + "\n"
    refused(text, "the batch's binary payload does not match its SHA-256")
    # 2. and its hash fixed: the chain breaks
    edited["batch"]["response_sha256"] = hashlib.sha256(raw).hexdigest()
    text = "\n".join([*lines[:at], json.dumps(edited), *lines[at + 1 :]]) + "\n"
    refused(text, "hash chain is broken")
    # 3. and the chain recomputed: the bytes no longer give the answers recorded
    refused(
        rechained([*lines[:at], json.dumps(edited), *lines[at + 1 :]]),
        "is not what the model's bytes say",
    )


def test_faults_and_latency_do_not_change_the_verdict_or_repeat_queries(
    marked_world, world, tmp_path, capsys
):
    local = _audit(_tracker_args(marked_world, world, world / "clean.pt"), capsys)
    plan = FaultPlan(error_rate=0.3, error_codes=(500, 429), latency=0.05, retry_after=0)
    access, log = tmp_path / "served.jsonl", tmp_path / "q.jsonl"
    app = create_app(world / "clean.pt", ServeOptions(faults=plan, seed="0f"), access_log=access)
    config = tmp_path / "endpoint.json"
    config.write_text(json.dumps({"backoff": 0.01, "max_backoff": 0.1, "retries": 30}))
    with serving(app) as url:
        args = _tracker_args(marked_world, world, f"{url}/v2/models/model")
        args += ["--query-log", log, "--endpoint-config", config, "--concurrency", "4"]
        remote = _audit(args, capsys)
        injected = app.state.faults.injected
    _same_verdict(remote, local)
    requests = -(-remote["queries"] // 64)
    assert injected >= 0.15 * requests  # about 30% of requests failed, and were retried
    served = [r["sha256"] for r in _lines(access)]
    assert len(served) == len(set(served)) == remote["queries"]  # nothing answered twice
    records = _lines(log)[1:]
    assert len(records) == len({r["sha256"] for r in records}) == remote["queries"]


def test_sigint_mid_audit_then_resume_gives_the_same_verdict(marked_world, world, tmp_path, capsys):
    local = _audit(_tracker_args(marked_world, world, world / "clean.pt"), capsys)
    access, log = tmp_path / "served.jsonl", tmp_path / "q.jsonl"
    plan = FaultPlan(latency=0.3)  # slow enough to interrupt halfway
    app = create_app(world / "clean.pt", ServeOptions(faults=plan), access_log=access)
    with serving(app) as url:
        args = _tracker_args(marked_world, world, f"{url}/v2/models/model")
        args += ["--query-log", log]
        cli = [sys.executable, "-m", "tracemark", *map(str, args), "--concurrency", "2"]
        # A shell without job control starts background jobs with SIGINT ignored (CI may run
        # the suite so); give the audit Ctrl-C's default behaviour, as a terminal would.
        proc = subprocess.Popen(
            cli,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 120
            # Count complete lines only: the audit may be writing the next one right now.
            while _complete_lines(log) < 1 + 10 * 64:  # header + 10 batches answered
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the audit made no progress"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, err
        assert "resume" in err and out == ""
        done = len(_lines(log)) - 1
        assert 10 * 64 <= done < local["queries"]  # stopped halfway, in-flight answers kept
        assert len(_lines(access)) == done  # every answer the server gave is in the log
        resumed = _audit(args, capsys)
    _same_verdict(resumed, local)
    served = [r["sha256"] for r in _lines(access)]
    assert len(served) == len(set(served)) == local["queries"]  # no query repeated


@pytest.mark.parametrize(
    ("restrict", "flag"), [({"top_k": 5}, "topk"), ({"label_only": True}, "label")]
)
def test_tracker_with_restricted_answers_uses_the_zero_one_proxy(
    marked_world, world, restrict, flag, capsys
):
    # In-process, forcing the same access mode on the full model gives the same test.
    local = _audit([*_tracker_args(marked_world, world, world / "trained.pt"), "--access",
                    "label"], capsys)  # fmt: skip
    with serving(create_app(world / "trained.pt", ServeOptions(**restrict))) as url:
        args = _tracker_args(marked_world, world, f"{url}/v2/models/model")
        remote = _audit([*args, "--num-classes", "10"], capsys)
        # Forcing full-probability access on an endpoint that does not give it is an error.
        assert run_cli([*args, "--num-classes", "10", "--access", "probabilities"]) == 2
        assert "answers with" in capsys.readouterr().err
    assert "0/1-loss proxy" in remote["access"]
    assert remote["access"].startswith("topk" if flag == "topk" else "label")
    _same_verdict(remote, local, fields=("p_value", "effect", "decision", "label"))


def test_isotope_with_top5_answers_uses_rank_shifts(
    marked_world, exported_models, fmnist_test, tmp_path, capsys
):
    key = tmp_path / "iso.key"
    marked_world.isotope_keys[0].save(key)
    write_pngs(tmp_path / "mine", marked_world.isotope_images[0])
    assert run_cli(["mark", key, tmp_path / "mine", tmp_path / "published", "--quiet"]) == 0
    write_pngs(tmp_path / "aux", fmnist_test.images[-150:])
    model = exported_models / "trained.onnx"
    log = tmp_path / "q.jsonl"
    with serving(create_app(model, ServeOptions(top_k=5))) as url:
        args = [
            "audit", key, f"{url}/v2/models/model", "--marked", tmp_path / "published",
            "--aux", tmp_path / "aux", "--alpha", "0.05", "--externals", "39",
            "--aux-per-mark", "100", "--json", "--quiet", "--num-classes", "10",
        ]  # fmt: skip
        v = _audit([*args, "--query-log", log], capsys)
    assert v["method"] == "isotope" and v["access"] == "top-K ranks"
    assert v["label"] == marked_world.isotope_classes[0]
    assert v["decision"] is True
    assert v["p_value"] <= 0.05 and v["queries"] > 0
    # A third party recomputes the isotope verdict from the log alone (the server is gone).
    replayed = _audit(["replay", log, key, *args[3:]], capsys)
    _same_verdict(replayed, v)
    assert replayed["queries"] == 0 or replayed["queries"] == v["queries"]


def test_a_budget_too_small_is_refused_before_the_server_sees_anything(
    marked_world, world, tmp_path, capsys
):
    """docs/http.md: an audit that would exceed --budget stops before sending anything. The
    worst case here is the owner's 30 images and up to 100 pseudo-users of 30."""
    access = tmp_path / "served.jsonl"
    app = create_app(world / "clean.pt", ServeOptions(name="cnn"), access_log=access)
    with serving(app) as url:
        args = _tracker_args(marked_world, world, f"{url}/v2/models/cnn")
        capsys.readouterr()
        assert run_cli([*args, "--budget", str(30 + 100 * 30 - 1)]) != 0
        err = " ".join(capsys.readouterr().err.split())
        assert "may send up to 3,030 images" in err and "Nothing was sent" in err
        assert _lines(access) == []  # the server saw nothing
        verdict = _audit([*args, "--budget", str(30 + 100 * 30)], capsys)
        assert verdict["queries"] == len(_lines(access)) <= 3030


def _rewrite(bundle, name: str, change, fix_index: bool):
    """A copy of ``bundle`` with member ``name`` changed (and its index entry recomputed
    when ``fix_index``: a forger who knows the format)."""
    import hashlib
    import zipfile

    with zipfile.ZipFile(bundle) as z:
        files = {n: z.read(n) for n in z.namelist()}
    files[name] = change(files[name])
    if fix_index:
        index = json.loads(files["index.json"])
        index["files"][name] = hashlib.sha256(files[name]).hexdigest()
        files["index.json"] = json.dumps(index).encode()
    out = bundle.with_name(f"tampered-{name}-{fix_index}.zip")
    with zipfile.ZipFile(out, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    return out


def test_an_evidence_bundle_is_rechecked_offline_and_tampering_is_named(
    marked_world, world, tmp_path, capsys
):
    import shutil

    from tracemark.keys import Key

    bundle = tmp_path / "evidence.zip"
    app = create_app(world / "trained.pt", ServeOptions(name="cnn"))
    with serving(app) as url:
        args = _tracker_args(marked_world, world, f"{url}/v2/models/cnn")
        verdict = _audit([*args, "--bundle", bundle], capsys)
    assert verdict["decision"]
    assert not list(tmp_path.glob(".tracemark-log-*"))  # the temporary query log is gone
    # the server is gone: the check is offline, and recomputes the verdict bit for bit
    key = marked_world.cli_key
    commitment = Key.model_validate_json(key.read_text()).commitment()
    check = ["check", bundle, "--key", key, "--marked", marked_world.cli_marked]
    check += ["--originals", marked_world.cli_originals]
    assert run_cli([*check, "--commitment", commitment, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    for field in ("p_value", "decision", "effect", "key_commitment", "access", "test"):
        assert again[field] == verdict[field], field
    for v in (again, verdict):  # every statistic, bit for bit (the manifest's path aside)
        assert v["statistics"]["inputs_checked"].pop("manifest")
    assert again["statistics"] == verdict["statistics"]
    assert run_cli(check) == 0
    assert "is identical" in " ".join(capsys.readouterr().out.split())

    def refused(args, message):
        assert run_cli(args) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert message in err, err

    # 1. an edited answer in the log: the index catches it, and a forger who fixes the
    # index meets the log's hash chain
    def edit_answer(log: bytes) -> bytes:
        lines = log.decode().splitlines()
        record = json.loads(lines[5])
        record["answer"]["output"][0] = 0.5
        lines[5] = json.dumps(record)
        return ("\n".join(lines) + "\n").encode()

    edited = _rewrite(bundle, "query-log.jsonl", edit_answer, fix_index=False)
    refused([*check[:1], edited, *check[2:]], "query-log.jsonl does not match its SHA-256")
    edited = _rewrite(bundle, "query-log.jsonl", edit_answer, fix_index=True)
    refused([*check[:1], edited, *check[2:]], "hash chain is broken")
    # 2. another key
    other = tmp_path / "other.key"
    assert run_cli(["keygen", "-o", other, "-p", "compress=false"]) == 0
    capsys.readouterr()
    refused([*check[:3], other, *check[4:]], "another key: its commitment")
    # 3. one changed image among the published ones
    copy = tmp_path / "published-copy"
    shutil.copytree(marked_world.cli_marked, copy)
    victim = sorted(copy.glob("*.png"))[0]
    with Image.open(victim) as im:
        pixels = np.asarray(im).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(victim)
    refused([*check[:5], copy, *check[6:]], f"changed image: {victim.name}")
    # 4. a wrong commitment
    refused([*check, "--commitment", "ab" * 32], "wrong commitment")
    # and the bundle is never written over without --force, before any query
    with serving(create_app(world / "trained.pt", ServeOptions(name="cnn"))) as url:
        args = _tracker_args(marked_world, world, f"{url}/v2/models/cnn")
        refused([*args, "--bundle", bundle], "--force")
    # a local model has no query log to seal
    refused([*_tracker_args(marked_world, world, world / "trained.pt"), "--bundle",
             tmp_path / "x.zip"], "HTTP audits")  # fmt: skip


def test_an_audit_with_views_goes_over_http_and_its_bundle_rechecks(
    marked_world, world, tmp_path, capsys
):
    """Views multiply the images of every set; each is sent once, and the bundle's check
    replays the views (they are among the audit's recorded options)."""
    access = tmp_path / "served.jsonl"
    bundle = tmp_path / "views.zip"
    app = create_app(world / "trained.pt", ServeOptions(name="cnn"), access_log=access)
    with serving(app) as url:
        args = _tracker_args(marked_world, world, f"{url}/v2/models/cnn")
        args += ["--views", "flip"]
        verdict = _audit([*args, "--bundle", bundle], capsys)
    s = verdict["statistics"]
    assert s["views"] == "flip" and s["view_count"] == 2
    assert verdict["queries"] == 2 * 30 * (1 + s["pseudo_users_drawn"]) == len(_lines(access))
    assert verdict["decision"]  # a member: the mirror view still carries the mark
    check = ["check", bundle, "--key", marked_world.cli_key, "--marked", marked_world.cli_marked]
    check += ["--originals", marked_world.cli_originals, "--json"]
    assert run_cli(check) == 0
    again = json.loads(capsys.readouterr().out)
    for v in (again, verdict):  # the manifest's path is the checker's
        v["statistics"]["inputs_checked"].pop("manifest")
    for field in ("p_value", "decision", "effect", "test", "statistics"):
        assert again[field] == verdict[field], field
