"""`tracemark serve` over real loopback sockets, queried by the HTTP oracle.

A fixed synthetic model keeps these fast; audits of trained models over HTTP are in
test_http_audit.py. Every server here listens on 127.0.0.1 and is stopped by the test.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from tracemark.errors import TracemarkError
from tracemark.oracle import CallableOracle, EndpointConfig, open_endpoint
from tracemark.oracle.image_hash import image_sha256
from tracemark.serve import FaultPlan, ServeOptions, create_app, serving

C = 10


def _model(x: np.ndarray) -> np.ndarray:
    """A fixed 'model' on (n, H, W, C) images: softmax of a map of two image statistics."""
    flat = x.reshape(len(x), -1)
    logits = np.outer(flat.mean(axis=1), np.arange(C)) + np.outer(
        flat.std(axis=1), np.sin(np.arange(C))
    )
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 8, 8, 1), dtype=np.float32)


def _oracle() -> CallableOracle:
    return CallableOracle(_model, num_classes=C)


def _access_log_hashes(path) -> list[str]:
    return [json.loads(line)["sha256"] for line in path.read_text().splitlines()]


def _logged_answers(path) -> list[dict]:
    """A query log's per-image records (not its header, nor the batch lines that keep a
    binary answer's bytes)."""
    records = map(json.loads, path.read_text().splitlines()[1:])
    return [r for r in records if "batch" not in r]


def _port_closed(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((parts.hostname, parts.port)) != 0


def test_v2_probabilities_over_http_are_bit_identical(tmp_path):
    x = _images(150)
    local = _oracle().query(x)
    app = create_app(_oracle(), ServeOptions(name="cnn"), access_log=tmp_path / "access.jsonl")
    with serving(app) as url:
        assert urlsplit(url).hostname == "127.0.0.1"
        with open_endpoint(f"{url}/v2/models/cnn") as oracle:
            remote = oracle.query(x)
            # model and server metadata (the server offers binary tensors), 64-image batches
            assert oracle.queries == 150 and oracle.requests == 2 + 3
            assert oracle.wire == "binary"
    assert _port_closed(url)
    assert remote.mode == "probabilities"
    np.testing.assert_array_equal(remote.probs, local.probs)
    assert sorted(_access_log_hashes(tmp_path / "access.jsonl")) == sorted(
        image_sha256(im) for im in x
    )


@pytest.mark.parametrize(
    ("options", "mode", "k"),
    [
        (ServeOptions(top_k=5), "topk", 5),
        (ServeOptions(label_only=True), "label", 1),
    ],
)
def test_restricted_answers_are_detected_as_such(options, mode, k):
    x = _images(40)
    local = _oracle().query(x)
    with (
        serving(create_app(_oracle(), options)) as url,
        open_endpoint(f"{url}/v2/models/model", EndpointConfig(num_classes=C)) as oracle,
    ):
        remote = oracle.query(x)
    assert remote.mode == mode and remote.labels.shape == (40, k)
    np.testing.assert_array_equal(remote.labels, local.labels[:, :k])
    if mode == "topk":
        np.testing.assert_array_equal(remote.scores, local.scores[:, :5])


def test_json_endpoint_with_pngs_matches_the_quantised_images():
    x = _images(20)
    q = np.round(x * 255) / 255  # PNGs carry 8-bit pixels
    local = _oracle().query(q.astype(np.float32))
    with serving(create_app(_oracle())) as url:
        config = EndpointConfig(protocol="json")
        with open_endpoint(f"{url}/predict", config) as oracle:
            remote = oracle.query(x)
    np.testing.assert_allclose(remote.probs, local.probs, rtol=0, atol=1e-12)


def test_faults_latency_and_retry_after_are_survived_without_repeats(tmp_path):
    x = _images(400)
    local = _oracle().query(x)
    plan = FaultPlan(error_rate=0.3, error_codes=(500, 429), latency=0.02)
    app = create_app(_oracle(), ServeOptions(faults=plan), access_log=tmp_path / "access.jsonl")
    with serving(app) as url:
        config = EndpointConfig(batch_size=16, backoff=0.01, max_backoff=0.05, retries=20)
        with open_endpoint(f"{url}/v2/models/model", config, log=tmp_path / "q.jsonl") as oracle:
            remote = oracle.query(x)
            assert oracle.retried > 0 and oracle.failures
            assert set(oracle.failures) <= {"HTTP 500", "HTTP 429"}
        assert app.state.faults.injected == oracle.retried
    np.testing.assert_array_equal(remote.probs, local.probs)
    served = _access_log_hashes(tmp_path / "access.jsonl")
    assert len(served) == len(set(served)) == 400  # no image answered twice
    logged = _logged_answers(tmp_path / "q.jsonl")
    assert len({r["sha256"] for r in logged}) == len(logged) == 400


def test_rate_limit_answers_429_with_retry_after_and_the_oracle_waits():
    plan = FaultPlan(rate_limit=2.0, burst=2)
    with serving(create_app(_oracle(), ServeOptions(faults=plan))) as url:
        r = [httpx.get(f"{url}/v2/models/model") for _ in range(2)]  # metadata: not limited
        assert all(resp.status_code == 200 for resp in r)
        config = EndpointConfig(batch_size=8, concurrency=3)
        with open_endpoint(f"{url}/v2/models/model", config) as oracle:
            t = time.monotonic()
            oracle.query(_images(24))  # 3 requests at once: 2 tokens, so one waits
            assert oracle.failures["HTTP 429"] > 0
            assert time.monotonic() - t >= 1.0  # Retry-After: 1 was honoured


def test_bad_requests_and_wrong_names_get_clear_errors():
    with serving(create_app(_oracle(), ServeOptions(name="cnn"))) as url:
        r = httpx.post(f"{url}/v2/models/cnn/infer", json={"inputs": [{"shape": [1, 1, 2, 2]}]})
        assert r.status_code == 400 and "datatype" in r.json()["error"]
        bad = {"name": "input", "datatype": "FP32", "shape": [1, 1, 2, 2], "data": [0.1] * 3}
        r = httpx.post(f"{url}/v2/models/cnn/infer", json={"inputs": [bad]})
        assert r.status_code == 400 and "needs 4 values" in r.json()["error"]
        r = httpx.post(f"{url}/predict", json={"images": ["not base64!"]})
        assert r.status_code == 400 and "base64 PNG" in r.json()["error"]
        with (
            open_endpoint(f"{url}/v2/models/other") as oracle,
            pytest.raises(TracemarkError, match=r"not found.*model name 'other'"),
        ):
            oracle.query(_images(2))


def test_refuses_non_loopback_hosts_unless_allowed():
    with pytest.raises(TracemarkError, match="loopback"), serving(create_app(_oracle()), "0.0.0.0"):
        pass


def test_cli_serve_runs_until_sigint(tmp_path, marked_world, exported_models):
    model = exported_models / "trained.onnx"
    url_file = tmp_path / "url"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tracemark",
            "serve",
            str(model),
            "--port",
            "0",
            "--top-k",
            "3",
            "--url-file",
            str(url_file),
        ],
        stderr=subprocess.PIPE,
        text=True,
        # a shell running the suite in the background ignores SIGINT, and children inherit
        # that: give the server the default handler a terminal's Ctrl-C meets
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    stopping = None
    try:
        deadline = time.monotonic() + 60
        while not url_file.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        url = url_file.read_text().strip()
        assert urlsplit(url).hostname == "127.0.0.1"
        meta = httpx.get(f"{url}/v2/models/model").json()
        assert meta["inputs"][0]["shape"] == [-1, 1, 28, 28]
        assert [o["name"] for o in meta["outputs"]] == ["labels", "scores"]
        # Top-3 lists cover 3 of the 10 classes: the client is told how many there are.
        with open_endpoint(f"{url}/v2/models/model", EndpointConfig(num_classes=10)) as oracle:
            assert oracle.query(marked_world.marked[0][:5]).mode == "topk"
        stopping = time.monotonic()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    # Ctrl-C stops it at once and cleanly: the shell's code for an interrupted command
    # (128 + SIGINT), not death by the signal, and no traceback.
    assert stopping is not None and time.monotonic() - stopping < 10
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Ctrl-C stops" in err
    assert "serving" in err and "top-3" in err
    assert _port_closed(url)


def test_cli_serve_refuses_a_public_host(tmp_path, capsys):
    from helpers import run_cli

    model = tmp_path / "m.onnx"
    model.write_bytes(b"")  # refused before the model is even read
    assert run_cli(["serve", model, "--host", "0.0.0.0"]) == 2
    assert "loopback" in capsys.readouterr().err


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_awaits_requests_in_flight_and_a_second_one_cuts_them_off(tmp_path, presses):
    """docs/http.md's Ctrl-C contract over real sockets. Requests from the 3rd on hang for
    3 s at the server; Ctrl-C comes at 1 s (a second one 0.2 s later). One press: no new
    request, the hanging ones are awaited and their answers logged. Two: tracemark returns
    at once, and only the answers received before are in the log."""
    import asyncio
    import os
    import threading

    app = create_app(_oracle(), ServeOptions(name="m"))
    posts = []

    async def slow_after_two(scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            posts.append(time.monotonic())
            if len(posts) > 2:
                await asyncio.sleep(3.0)
        await app(scope, receive, send)

    def press():
        time.sleep(1.0)
        for _ in range(presses):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)

    log = tmp_path / "q.jsonl"
    with serving(slow_after_two) as url:
        config = EndpointConfig(num_classes=C, batch_size=4, concurrency=2)
        with open_endpoint(f"{url}/v2/models/m", config, log=log) as oracle:
            presser = threading.Thread(target=press)
            start = time.monotonic()
            presser.start()
            with pytest.raises(KeyboardInterrupt):
                oracle.query(_images(200))
            took = time.monotonic() - start
            presser.join()
    logged = len(_logged_answers(log))
    assert len(posts) == 4  # 2 fast, then 2 hanging; none started after Ctrl-C
    if presses == 1:
        assert took >= 3.0 and logged == 4 * 4  # awaited, and every answer logged
    else:
        assert took < 2.0 and logged == 2 * 4  # at once; the hanging answers are not logged


def _recording(app, seen: list, fail_first: int = 0):
    """``app`` behind a wrapper that records each request's path and headers and answers
    the first ``fail_first`` POSTs with 503 (to be retried)."""

    async def wrapped(scope, receive, send):
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            seen.append((scope["method"], scope["path"], headers))
            posts = sum(1 for m, _, _ in seen if m == "POST")
            if scope["method"] == "POST" and posts <= fail_first:
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": b"busy"})
                return
        await app(scope, receive, send)

    return wrapped


@pytest.mark.parametrize("protocol", ["v2", "json"])
def test_cli_endpoint_flags_reach_the_wire(tmp_path, fmnist_test, capsys, monkeypatch, protocol):
    """`verify` over HTTP with --protocol, --auth-env, --auth-file, --timeout, --retries
    and --budget: the credentials arrive as headers (and never in the output), a 503 is
    retried, and the verdict equals the in-process one on the same model."""
    from tracemark.keys import Key

    from helpers import run_cli

    key = tmp_path / "ubw.key"
    Key.generate("ubw", num_classes=C).save(key)
    test = tmp_path / "test.npz"
    np.savez(test, x=np.round(fmnist_test.images[:300] * 255).astype(np.uint8),
             y=fmnist_test.labels[:300])  # fmt: skip
    token = "s3cret-token-value"
    monkeypatch.setenv("SUSPECT_TOKEN", token)
    auth_file = tmp_path / "headers.txt"
    auth_file.write_text("X-Api-Key: another-secret\n")
    auth_file.chmod(0o600)
    seen: list = []
    app = _recording(create_app(_oracle(), ServeOptions(name="m")), seen, fail_first=1)
    common = ["--json", "--m", "20", "--alpha", "0.05"]
    with serving(app) as url:
        target = f"{url}/v2/models/m" if protocol == "v2" else f"{url}/predict"
        args = ["verify", target, key, test, *common, "--protocol", protocol]
        args += ["--num-classes", str(C)] * (protocol == "json")
        args += ["--auth-env", "SUSPECT_TOKEN", "--timeout", "5", "--retries", "2"]
        capsys.readouterr()
        assert run_cli([*args, "--budget", "400"]) == 0
        out = capsys.readouterr()
        remote = json.loads(out.out)
        assert token not in out.out + out.err
        assert run_cli([*args[:-6], "--auth-file", auth_file, "--budget", "400"]) == 0
        capsys.readouterr()
    posts = [h for m, _, h in seen if m == "POST"]
    first = [h for h in posts if "authorization" in h]
    second = [h for h in posts if "x-api-key" in h]
    assert len(first) + len(second) == len(posts) and second  # each run sent its own
    assert all(h["authorization"] == f"Bearer {token}" for h in first)
    assert all(h["x-api-key"] == "another-secret" for h in second)
    assert len(first) == len(second) + 1  # the first run's 503 was retried once
    # The same verification in-process on the same model.
    from tracemark.datasets import load_dataset
    from tracemark.methods.ubw.verify import verify

    local = verify(_oracle(), Key.model_validate_json(key.read_text()), load_dataset(test),
                   m=20, alpha=0.05)  # fmt: skip
    assert remote["p_value"] == pytest.approx(local.p_value) and remote["queries"] <= 400


def test_serve_noise_perturbs_the_probabilities_it_reveals():
    """`serve --noise S`: an output-perturbation defence. Answers stay probability vectors,
    differ from the model's by about S, and the top-1 label mostly survives."""
    x = _images(200)
    clean = _model(x)
    app = create_app(_oracle(), ServeOptions(name="m", noise=0.05))
    with (
        serving(app) as url,
        open_endpoint(f"{url}/v2/models/m", EndpointConfig(num_classes=C)) as oracle,
    ):
        noisy = oracle.query(x).probs
    assert noisy.shape == clean.shape and (noisy >= 0).all()
    np.testing.assert_allclose(noisy.sum(axis=1), 1.0, atol=1e-5)
    gap = np.abs(noisy - clean).mean()
    assert 0.005 < gap < 0.1, gap
    assert (noisy.argmax(1) == clean.argmax(1)).mean() > 0.5
