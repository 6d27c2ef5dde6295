"""Auditing over the KServe v2 gRPC API: raw FP32 tensors both ways, exactly.

Against a gRPC server run in the test (the same messages, `grpc.server`) serving a fixed
linear classifier: the in-process answers; the layout learned from the model's
metadata; answers as raw bytes or typed contents; the query log and a resume that
sends nothing; transient errors retried, others named; credentials in call metadata,
never in the log; malformed answers named. A real server (MLServer) is audited over
gRPC in test_mlserver.py.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
import torch

from tracemark.errors import TracemarkError
from tracemark.oracle import EndpointConfig, TorchModuleOracle, open_oracle
from tracemark.oracle.grpc import GrpcOracle, open_grpc_endpoint
from tracemark.oracle.grpc_messages import SERVICE, messages
from tracemark.oracle.wire import MalformedAnswer

from helpers import press_ctrl_c_twice, rechained


class Model:
    """A fixed linear classifier on 32x32x3 images, served in NHWC or NCHW."""

    def __init__(self, layout: str = "nchw") -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
        self.net.eval()
        self.layout = layout
        self.local = TorchModuleOracle(self.net, num_classes=10)  # takes NHWC images


@contextlib.contextmanager
def served(model: Model, *, fail: list[grpc.StatusCode] | None = None, typed: bool = False,
           extra_raw: bool = False, seen: list | None = None,
           hold: threading.Event | None = None):  # fmt: skip
    """A gRPC inference server on a free port; yields its grpc:// base address. With
    ``hold``, every inference waits for it (at most a minute) before answering."""
    m = messages()
    failures = list(fail or [])

    def infer(request, context):
        if hold is not None:
            hold.wait(60)
        if seen is not None:
            seen.append(dict(context.invocation_metadata()))
        if failures:
            code = failures.pop(0)
            if code is not None:  # None: answer this one
                context.abort(code, f"scripted {code.name}")
        shape = list(request.inputs[0].shape)
        x = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(shape).copy()
        if model.layout == "nhwc":  # the model takes NHWC: give the net what it expects
            x = x.transpose(0, 3, 1, 2)
        with torch.no_grad():
            logits = model.net(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
        out = m.ModelInferResponse.InferOutputTensor(
            name="probs", datatype="FP32", shape=list(probs.shape)
        )
        reply = m.ModelInferResponse(model_name=request.model_name, outputs=[out])
        if typed:
            reply.outputs[0].contents.fp32_contents.extend(probs.ravel().tolist())
        else:
            reply.raw_output_contents.append(probs.tobytes())
            if extra_raw:
                reply.raw_output_contents.append(b"\0" * 8)
        return reply

    def metadata(request, context):
        shape = [-1, 3, 32, 32] if model.layout == "nchw" else [-1, 32, 32, 3]
        tensor = m.ModelMetadataResponse.TensorMetadata(name="pixels", datatype="FP32", shape=shape)
        return m.ModelMetadataResponse(name=request.name, inputs=[tensor])

    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            infer, m.ModelInferRequest.FromString, m.ModelInferResponse.SerializeToString
        ),
        "ModelMetadata": grpc.unary_unary_rpc_method_handler(
            metadata, m.ModelMetadataRequest.FromString, m.ModelMetadataResponse.SerializeToString
        ),
    }
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        server.stop(None)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 32, 32, 3), dtype=np.float32)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_answers_are_the_models_in_the_layout_its_metadata_gives(layout, tmp_path):
    model = Model(layout)
    x = _images(150)
    with served(model) as base:
        log = tmp_path / "q.jsonl"
        config = EndpointConfig(batch_size=50, concurrency=2)
        with open_grpc_endpoint(f"{base}/v2/models/m", config, log=log) as oracle:
            probs = oracle.query(x).probs
            assert oracle.codec.layout == layout and oracle.codec.input_name == "pixels"
            assert oracle.queries == 150 and oracle.wire == "grpc"
        local = model.local.query(x).probs
        np.testing.assert_allclose(probs, local, rtol=1e-5, atol=1e-7)
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert lines[0]["protocol"] == "v2-grpc" and lines[0]["model_name"] == "m"
        assert sum("sha256" in r for r in lines) == 150  # each image once
        batches = [r["batch"] for r in lines if "batch" in r]  # each reply's bytes, whole
        assert len(batches) == 3 and all(b["wire"] == "grpc" for b in batches)
        # A second run with the same log asks the server nothing.
        with open_grpc_endpoint(f"{base}/v2/models/m", config, log=log) as again:
            assert np.array_equal(again.query(x).probs, probs)
            assert again.queries == 0 and again.from_log == 150 and again.requests == 0


def test_typed_contents_are_read_like_raw_bytes():
    model = Model()
    x = _images(20)
    with served(model) as base, served(model, typed=True) as typed:
        raw = open_grpc_endpoint(f"{base}/v2/models/m").query(x).probs
        via_contents = open_grpc_endpoint(f"{typed}/v2/models/m").query(x).probs
    assert np.array_equal(raw, via_contents)


def test_transient_errors_are_retried_and_others_named():
    model = Model()
    x = _images(8)
    transient = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED]
    config = EndpointConfig(batch_size=8, backoff=0.01, retries=3)
    with served(model, fail=list(transient)) as base:
        oracle = open_grpc_endpoint(f"{base}/v2/models/m", config)
        oracle.query(x)
        assert oracle.retried == 2 and oracle.queries == 8
    refused = "refused the request: INVALID_ARGUMENT: scripted"
    with (
        served(model, fail=[grpc.StatusCode.INVALID_ARGUMENT]) as base,
        pytest.raises(TracemarkError, match=refused),
    ):
        open_grpc_endpoint(f"{base}/v2/models/m", config).query(x)
    with (
        served(model, fail=[grpc.StatusCode.UNAVAILABLE] * 4) as base,
        pytest.raises(TracemarkError, match="failed 4 times in a row; last: UNAVAILABLE"),
    ):
        open_grpc_endpoint(f"{base}/v2/models/m", config).query(x)


def test_credentials_go_in_metadata_and_never_in_the_log(tmp_path):
    seen: list = []
    log = tmp_path / "q.jsonl"
    with served(Model(), seen=seen) as base, pytest.warns(UserWarning, match="use grpcs"):
        oracle = open_grpc_endpoint(
            f"{base}/v2/models/m", headers={"Authorization": "Bearer s3cret-token"}, log=log
        )
        oracle.query(_images(4))
    assert seen and seen[0]["authorization"] == "Bearer s3cret-token"
    assert "s3cret" not in log.read_text()


def test_malformed_answers_are_named():
    with (
        served(Model(), extra_raw=True) as base,
        pytest.raises(MalformedAnswer, match="1 outputs but 2 raw output contents"),
    ):
        open_grpc_endpoint(f"{base}/v2/models/m").query(_images(4))


def test_grpc_urls_open_a_grpc_oracle_and_need_a_model():
    with served(Model()) as base:
        oracle = open_oracle(f"{base}/v2/models/m")
        assert isinstance(oracle, GrpcOracle) and oracle.model_name == "m"
        with pytest.raises(TracemarkError, match="which model"):
            open_oracle(base)
    with pytest.raises(TracemarkError, match="not a grpc://HOST:PORT address"):
        open_oracle("grpc://nowhere/v2/models/m")
    with pytest.raises(TracemarkError, match="speaks the v2 protocol, not 'json'"):
        open_oracle("grpc://127.0.0.1:1/v2/models/m", protocol="json")


def test_an_edited_answer_or_reply_in_the_log_is_refused(tmp_path):
    """The reply's bytes are kept whole: an answer edited to disagree with them, or the
    bytes themselves edited, is refused when the log is opened, chain recomputed or not."""
    import base64

    log = tmp_path / "q.jsonl"
    url_path = "/v2/models/m"
    with served(Model()) as base:
        with open_grpc_endpoint(base + url_path, EndpointConfig(batch_size=4), log=log) as o:
            o.query(_images(8))
        lines = log.read_text().splitlines()
        answer_at = next(i for i, line in enumerate(lines) if '"sha256"' in line)
        record = json.loads(lines[answer_at])
        record["answer"]["output"] = record["answer"]["output"][::-1]
        edited = list(lines)
        edited[answer_at] = json.dumps(record)
        log.write_text(rechained(edited))
        with pytest.raises(TracemarkError, match="is not what the model's bytes say"):
            open_grpc_endpoint(base + url_path, log=log)
        batch_at = next(i for i, line in enumerate(lines) if '"batch"' in line)
        record = json.loads(lines[batch_at])
        raw = bytearray(base64.b64decode(record["batch"]["response"]))
        raw[-1] ^= 1
        record["batch"]["response"] = base64.b64encode(bytes(raw)).decode()
        edited = list(lines)
        edited[batch_at] = json.dumps(record)
        log.write_text(rechained(edited))
        with pytest.raises(TracemarkError, match="does not match its SHA-256"):
            open_grpc_endpoint(base + url_path, log=log)


def test_answers_before_a_refusal_are_logged_and_a_rerun_resumes(tmp_path):
    """One request at a time: two batches answered, the third refused. Every answer
    received is in the log; the re-run sends only what was never answered."""
    model, x, log = Model(), _images(16), tmp_path / "q.jsonl"
    config = EndpointConfig(batch_size=4, concurrency=1)
    script = [None, None, grpc.StatusCode.INVALID_ARGUMENT]
    with served(model, fail=script) as base:
        with (
            open_grpc_endpoint(f"{base}/v2/models/m", config, log=log) as oracle,
            pytest.raises(TracemarkError, match="INVALID_ARGUMENT"),
        ):
            oracle.query(x)
        records = [json.loads(line) for line in log.read_text().splitlines()[1:]]
        # the two before it, and the fourth if its worker took it before the stop
        answered = sum("sha256" in r for r in records)
        assert answered in (8, 12)
        with open_grpc_endpoint(f"{base}/v2/models/m", config, log=log) as again:
            again.query(x)
            assert again.queries == 16 - answered and again.from_log == answered


def test_a_second_ctrl_c_cancels_the_calls_in_flight(tmp_path):
    """The first Ctrl-C waits for the calls in flight; a second cancels them (not the
    60 s timeout); nothing unanswered is logged, so a re-run sends those images again."""
    hold = threading.Event()
    log = tmp_path / "q.jsonl"
    with served(Model(), hold=hold) as base:
        config = EndpointConfig(batch_size=4, concurrency=2, timeout=60.0, retries=0)
        oracle = open_grpc_endpoint(f"{base}/v2/models/m", config, log=log)
        press_ctrl_c_twice(after=1.0)
        start = time.monotonic()
        try:
            with pytest.raises(KeyboardInterrupt):
                oracle.query(_images(8))
            assert time.monotonic() - start < 6
        finally:
            hold.set()
            oracle.close()
    assert not any("sha256" in line for line in log.read_text().splitlines())
