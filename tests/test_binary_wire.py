"""The v2 binary tensor data extension: tensors as raw bytes both ways, exactly.

Against `tracemark serve` (which lists the extension) and scripted servers (which may
not): the same answers as JSON and as in-process, bit for bit; a fallback to JSON where
the server does not offer binary; FP16/FP32/INT64 outputs read by their datatype; and a
malformed body named, never guessed at. The replay and tamper checks of a binary audit's
query log are in test_http_audit.py (they need the trained models).
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch

from tracemark.errors import TracemarkError
from tracemark.oracle import EndpointConfig, TorchModuleOracle, open_endpoint
from tracemark.oracle.binary_tensors import DTYPES, HEADER_LENGTH, frame, tensor_bytes
from tracemark.oracle.wire import MalformedAnswer, V2Codec
from tracemark.serve import ServeOptions, create_app, serving


@pytest.fixture(scope="module")
def served_model():
    """A fixed linear classifier on 32x32x3 images and its in-process oracle."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    return TorchModuleOracle(net, num_classes=10)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 32, 32, 3), dtype=np.float32)


def test_binary_and_json_give_the_in_process_answers_bit_for_bit(served_model, tmp_path):
    x = _images(150)
    local = served_model.query(x).probs
    with serving(create_app(served_model, ServeOptions(name="m"))) as url:
        seen = {}
        for binary in ("auto", "on", "off"):
            config = EndpointConfig(binary=binary, batch_size=64)
            log = tmp_path / f"{binary}.jsonl"
            with open_endpoint(f"{url}/v2/models/m", config, log=log) as oracle:
                probs = oracle.query(x).probs
                seen[binary] = oracle.wire
            assert np.array_equal(probs, local), binary
            batches = [r for r in map(json.loads, log.read_text().splitlines()) if "batch" in r]
            assert len(batches) == (0 if binary == "off" else 3)  # 150 = 3 batches of 50
    assert seen == {"auto": "binary", "on": "binary", "off": "json"}


def test_a_binary_request_is_the_raw_float32_bytes(served_model):
    x = _images(4)
    binary = V2Codec("m", input_name="input", binary=True).request(x)
    text = V2Codec("m", input_name="input").request(x)
    header_length = int(binary.headers[HEADER_LENGTH])
    assert len(binary.content) - header_length == x.size * 4  # exactly FP32, nothing else
    nchw = np.frombuffer(binary.content[header_length:], "<f4").reshape(4, 3, 32, 32)
    assert np.array_equal(nchw.transpose(0, 2, 3, 1), x)
    assert len(text.content) > 2.5 * len(binary.content)  # JSON text: ~10 bytes a number


class ScriptedServer:
    """A v2 server that lists (or not) the binary extension and answers in kind."""

    def __init__(self, extensions: list[str], output_type: str = "FP32", v2_status: int = 200):
        self.extensions, self.output_type, self.v2_status = extensions, output_type, v2_status
        self.content_types: list[str] = []
        self.sent: list[np.ndarray] = []  # the scores as sent, in their datatype

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            if request.url.path == "/v2":
                meta = {"name": "s", "extensions": self.extensions}
                return httpx.Response(self.v2_status, json=meta)
            meta = {"name": "m", "inputs": [{"name": "x", "shape": [-1, 3, 32, 32]}]}
            return httpx.Response(200, json=meta)
        self.content_types.append(request.headers["content-type"])
        if HEADER_LENGTH in request.headers:
            n = int(request.headers[HEADER_LENGTH])
            head = json.loads(request.content[:n])
            shape = head["inputs"][0]["shape"]
            x = np.frombuffer(request.content[n:], "<f4").reshape(shape)
        else:
            spec = json.loads(request.content)["inputs"][0]
            x = np.asarray(spec["data"], np.float32).reshape(spec["shape"])
        means = x.reshape(len(x), -1).mean(axis=1)
        scores = np.stack([means, 1 - means], axis=1)
        if HEADER_LENGTH not in request.headers:
            out = {"name": "p", "datatype": "FP32", "shape": [len(x), 2]}
            return httpx.Response(200, json={"outputs": [{**out, "data": scores.ravel().tolist()}]})
        blob = tensor_bytes(scores, self.output_type)
        self.sent.append(np.frombuffer(blob, DTYPES[self.output_type]).reshape(-1, 2))
        out = {"name": "p", "datatype": self.output_type, "shape": [len(x), 2]}
        body, length = frame(
            {"outputs": [{**out, "parameters": {"binary_data_size": len(blob)}}]}, [blob]
        )
        return httpx.Response(200, content=body, headers={HEADER_LENGTH: str(length)})


@pytest.mark.parametrize(("extensions", "wire"), [([], "json"), (["binary_tensor_data"], "binary")])
def test_auto_uses_binary_only_where_the_server_lists_it(extensions, wire):
    server = ScriptedServer(extensions)
    oracle = open_endpoint(
        "http://127.0.0.1:9/v2/models/m",
        EndpointConfig(binary="auto"),
        transport=httpx.MockTransport(server),
    )
    probs = oracle.query(_images(3)).probs
    assert oracle.wire == wire
    expected = "application/octet-stream" if wire == "binary" else "application/json"
    assert server.content_types == [expected]
    means = _images(3).reshape(3, -1).mean(axis=1)
    assert np.allclose(probs[:, 0], means / 1.0, atol=1e-6)


@pytest.mark.parametrize("status", [404, 405, 400])
def test_a_server_without_server_metadata_gets_json(status):
    server = ScriptedServer(["binary_tensor_data"], v2_status=status)
    oracle = open_endpoint("http://127.0.0.1:9/v2/models/m", transport=httpx.MockTransport(server))
    oracle.query(_images(2))
    assert oracle.wire == "json" and server.content_types == ["application/json"]


def test_refused_credentials_on_server_metadata_stop_the_audit():
    server = ScriptedServer(["binary_tensor_data"], v2_status=401)
    oracle = open_endpoint("http://127.0.0.1:9/v2/models/m", transport=httpx.MockTransport(server))
    with pytest.raises(TracemarkError, match="refused access"):
        oracle.query(_images(2))
    assert server.content_types == []  # nothing was sent


@pytest.mark.parametrize("output_type", ["FP16", "FP32", "FP64"])
def test_binary_outputs_are_read_by_their_datatype(output_type):
    server = ScriptedServer(["binary_tensor_data"], output_type)
    oracle = open_endpoint(
        "http://127.0.0.1:9/v2/models/m",
        EndpointConfig(binary="on"),
        transport=httpx.MockTransport(server),
    )
    probs = oracle.query(_images(5)).probs
    (sent,) = server.sent
    assert sent.dtype.itemsize == int(output_type[2:]) // 8
    # What was sent, each row normalised to sum to 1 (the oracle's probabilities).
    exact = sent.astype(np.float64)
    assert np.allclose(probs, exact / exact.sum(axis=1, keepdims=True), rtol=1e-12, atol=0)


def _body(outputs: list[dict], blobs: list[bytes]) -> tuple[bytes, int]:
    return frame({"outputs": outputs}, blobs)


def test_labels_and_scores_in_binary():
    labels = np.array([[3, 1], [0, 2]], dtype=np.int64)
    scores = np.array([[0.7, 0.2], [0.5, 0.4]], dtype=np.float32)
    body, n = _body(
        [
            {
                "name": "labels",
                "datatype": "INT64",
                "shape": [2, 2],
                "parameters": {"binary_data_size": 32},
            },
            {
                "name": "scores",
                "datatype": "FP32",
                "shape": [2, 2],
                "parameters": {"binary_data_size": 16},
            },
        ],
        [tensor_bytes(labels, "INT64"), tensor_bytes(scores, "FP32")],
    )
    records = V2Codec("m", binary=True).decode_binary(body, n, 2)
    assert records == [
        {"labels": [3, 1], "scores": [float(np.float32(0.7)), float(np.float32(0.2))]},
        {"labels": [0, 2], "scores": [0.5, float(np.float32(0.4))]},
    ]


@pytest.mark.parametrize(
    ("declared", "extra", "match"),
    [
        (20, b"", "declares 20 bytes, but FP32 \\[2, 2\\] takes 16"),
        (16, b"\0" * 4, "4 bytes follow the header's outputs that no tensor declares"),
        (16, None, "needs 16 bytes at offset 0, but only 8 follow"),
    ],
)
def test_malformed_binary_answers_are_named(declared, extra, match):
    blob = tensor_bytes(np.ones((2, 2)), "FP32")
    blob = blob[:8] if extra is None else blob + extra
    spec = {
        "name": "p",
        "datatype": "FP32",
        "shape": [2, 2],
        "parameters": {"binary_data_size": declared},
    }
    body, n = _body([spec], [blob])
    with pytest.raises(MalformedAnswer, match=match):
        V2Codec("m", binary=True).decode_binary(body, n, 2)


@pytest.mark.parametrize("length", ["0", "abc", "999999"])
def test_a_bad_header_length_is_named(length):
    with pytest.raises(MalformedAnswer, match=HEADER_LENGTH):
        V2Codec("m", binary=True).decode_binary(b'{"outputs": []}', length, 1)


def test_serve_refuses_a_binary_request_whose_sizes_do_not_add_up(served_model):
    x = np.zeros((1, 3, 32, 32), np.float32)
    spec = {
        "name": "input",
        "datatype": "FP32",
        "shape": [2, 3, 32, 32],
        "parameters": {"binary_data_size": 2 * x.nbytes},
    }
    body, n = frame({"inputs": [spec]}, [x.tobytes()])
    with serving(create_app(served_model, ServeOptions(name="m"))) as url:
        r = httpx.post(f"{url}/v2/models/m/infer", content=body, headers={HEADER_LENGTH: str(n)})
    assert r.status_code == 400
    assert "needs 24576 bytes at offset 0, but only 12288 follow" in r.json()["error"]


def test_a_version_2_log_keeps_its_format_over_binary(served_model, tmp_path):
    """An older (version-2) log gets the binary answers as numbers only, and replays."""
    from tracemark.oracle import ReplayOracle

    log = tmp_path / "old.jsonl"
    x = _images(20)
    with serving(create_app(served_model, ServeOptions(name="m"))) as url:
        with open_endpoint(f"{url}/v2/models/m", EndpointConfig(binary="on"), log=log) as o:
            o.query(x[:10])
        header, *records = log.read_text().splitlines()
        assert any('"batch"' in r for r in records)
        # The same log as a version-2 one (header rewritten before any record is chained).
        old = json.loads(header) | {"version": 2}
        log.write_text(json.dumps(old) + "\n")
        with open_endpoint(f"{url}/v2/models/m", EndpointConfig(binary="on"), log=log) as o:
            o.query(x)
            assert o.wire == "binary"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines[0]["version"] == 2 and len(lines) == 21
    assert not any("batch" in r for r in lines)
    replayed = ReplayOracle(log).query(x).probs
    assert np.array_equal(replayed, served_model.query(x).probs)


def test_json_numbers_of_8_bit_images_are_json_dumps_text():
    """The table-written JSON of 8-bit images parses to exactly what json.dumps wrote;
    any other value (or NaN) takes json.dumps itself."""
    from tracemark.oracle.wire import eight_bit_json_numbers

    codec = V2Codec("m", input_name="x")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 5, 5, 3)).astype(np.float32) / np.float32(255)
    x[0, 0, 0] = [0.0, 1.0, np.float32(128) / np.float32(255)]
    body = codec.request(x).content
    assert json.loads(body) == json.loads(json.dumps(codec.encode(x)))
    assert eight_bit_json_numbers(np.transpose(x, (0, 3, 1, 2))) is not None  # the fast path
    for odd in (0.1234, np.nan, 1.5, -0.0039):
        y = x.copy()
        y[1, 2, 3, 0] = odd
        assert eight_bit_json_numbers(y) is None
    y = x.copy()
    y[1, 2, 3, 0] = 0.1234
    assert json.loads(codec.request(y).content) == json.loads(json.dumps(codec.encode(y)))


def test_large_images_are_hashed_a_window_ahead_with_the_same_answers_and_log(
    tmp_path, monkeypatch
):
    """At 96x96x3 (over 64 KB an image) the next window is hashed while the last is
    answered: every image answered once, repeats and earlier answers from the cache, each
    logged; a query that could overrun the budget is still checked whole, nothing sent."""
    import tracemark.oracle.logged as logged
    from tracemark.errors import BudgetExceededError

    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 96 * 96, 10)).eval()
    local = TorchModuleOracle(net, num_classes=10)
    x = np.random.default_rng(2).random((300, 96, 96, 3), dtype=np.float32)
    x[250] = x[3]  # a repeat inside the query: sent once
    windows: list[int] = []

    def recorded(images):
        windows.append(len(images))
        return logged.image_hashes.__wrapped__(images)

    recorded.__wrapped__ = logged.image_hashes
    monkeypatch.setattr(logged, "image_hashes", recorded)
    config = EndpointConfig(binary="on", batch_size=8, concurrency=2)
    with serving(create_app(local, ServeOptions(name="m"))) as url:
        log = tmp_path / "q.jsonl"
        with open_endpoint(f"{url}/v2/models/m", config, log=log) as oracle:
            first = oracle.query(x[:20]).probs  # batches of 7, 6, 7: two, then one
            probs = oracle.query(x).probs
            assert oracle.queries == 299 and oracle.from_log == 21
        assert windows == [13, 7, 16, 126, 126, 32]  # the balanced batches, in windows
        # the server's batches differ from the in-process ones: equal up to float rounding
        np.testing.assert_allclose(probs, local.query(x).probs, rtol=1e-5)
        assert np.array_equal(first, probs[:20])  # the second query's from the cache
        answered = [r for r in map(json.loads, log.read_text().splitlines()) if "sha256" in r]
        assert len(answered) == 299
        windows.clear()
        before = log.read_text()
        with open_endpoint(f"{url}/v2/models/m", config, log=log, budget=10) as oracle:
            new = np.random.default_rng(3).random((20, 96, 96, 3), dtype=np.float32)
            with pytest.raises(BudgetExceededError, match="Nothing was sent"):
                oracle.query(np.concatenate([x[:295], new]))  # 20 new, 10 allowed
        assert windows == [315] and log.read_text() == before
        # A fresh query of new images: its requests are the balanced batches of the whole
        # query (what in-process oracles use), windows or not.
        from tracemark.oracle.base import balanced_batches
        from tracemark.oracle.image_hash import image_hashes

        fresh = tmp_path / "fresh.jsonl"
        y = np.random.default_rng(4).random((300, 96, 96, 3), dtype=np.float32)
        with open_endpoint(f"{url}/v2/models/m", config, log=fresh) as oracle:
            oracle.query(y)
        index = {sha: i for i, sha in enumerate(image_hashes(y))}
        lines = map(json.loads, fresh.read_text().splitlines())
        sent = {
            (index[r["batch"]["images"][0]], index[r["batch"]["images"][-1]] + 1)
            for r in lines
            if "batch" in r
        }
        assert sent == set(balanced_batches(300, 8))
