"""The HTTP oracle against scripted endpoints (httpx.MockTransport: no sockets).

Real-server tests (tracemark serve, MLServer) are in test_http_audit.py and
test_mlserver.py; these pin down the protocol handling, retries, the budget, the
query log and replay, where a scripted server can produce any failure on demand.
"""

from __future__ import annotations

import json
import os
import stat

import httpx
import numpy as np
import pytest

from tracemark.errors import BudgetExceededError, TracemarkError
from tracemark.oracle import (
    QueryLog,
    ReplayOracle,
    load_auth_headers,
    load_endpoint_config,
    open_endpoint,
)
from tracemark.oracle.image_hash import image_sha256
from tracemark.oracle.wire import MalformedAnswer

C = 10


def _model(x_nchw: np.ndarray) -> np.ndarray:
    """A fixed 'model': softmax of a linear map of mean intensities (deterministic)."""
    m = x_nchw.reshape(len(x_nchw), -1).mean(axis=1)
    logits = np.outer(m, np.arange(C)) - np.arange(C) * 0.3
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Server:
    """A scripted v2 server: answers, failures on demand, and a record of what it saw."""

    def __init__(self, fail=(), topk=None, label_only=False, retry_after=None):
        self.fail = list(fail)  # statuses to answer with, one per request, before succeeding
        self.topk, self.label_only, self.retry_after = topk, label_only, retry_after
        self.seen: list[str] = []  # hashes of images answered
        self.requests = 0
        self.auth: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        self.auth.append(request.headers.get("authorization"))
        if request.method == "GET":
            meta = {"name": "m", "inputs": [{"name": "pixels", "shape": [-1, 1, 4, 4]}]}
            return httpx.Response(200, json=meta)
        if self.fail:
            status = self.fail.pop(0)
            headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
            return httpx.Response(status, json={"error": "busy"}, headers=headers)
        body = json.loads(request.content)
        spec = body["inputs"][0]
        assert spec["name"] == "pixels" and spec["datatype"] == "FP32"
        x = np.asarray(spec["data"], dtype=np.float32).reshape(spec["shape"])
        self.seen += [image_sha256(img.transpose(1, 2, 0)) for img in x]
        p = _model(x)
        n = len(x)
        if self.label_only or self.topk:
            k = 1 if self.label_only else self.topk
            labels = np.argsort(-p, axis=1, kind="stable")[:, :k]
            outs = [
                {
                    "name": "labels",
                    "datatype": "INT64",
                    "shape": [n, k],
                    "data": labels.ravel().tolist(),
                }
            ]
            if not self.label_only:
                scores = np.take_along_axis(p, labels, axis=1)
                outs.append(
                    {
                        "name": "scores",
                        "datatype": "FP64",
                        "shape": [n, k],
                        "data": scores.ravel().tolist(),
                    }
                )
            return httpx.Response(200, json={"outputs": outs})
        out = {
            "name": "probabilities",
            "datatype": "FP64",
            "shape": [n, C],
            "data": p.ravel().tolist(),
        }
        return httpx.Response(200, json={"model_name": "m", "outputs": [out]})


def _images(n=20, seed=0):
    return np.random.default_rng(seed).random((n, 4, 4, 1), dtype=np.float32)


def _oracle(server, **kw):
    kw.setdefault("config", load_endpoint_config(None, backoff=0.0, concurrency=2, batch_size=4))
    return open_endpoint(
        "http://127.0.0.1:9/v2/models/m", transport=httpx.MockTransport(server), **kw
    )


def test_v2_answers_match_the_model_exactly_and_learn_the_input_name():
    x = _images()
    server = Server()
    r = _oracle(server).query(x)
    assert r.mode == "probabilities"
    np.testing.assert_array_equal(r.probs, _model(x.transpose(0, 3, 1, 2)))
    assert len(server.seen) == 20


def test_retries_429_and_5xx_then_succeeds(tmp_path):
    server = Server(fail=[500, 429, 503, 502], retry_after="0")
    oracle = _oracle(server, log=tmp_path / "q.jsonl")
    r = oracle.query(_images())
    assert len(r) == 20 and oracle.retried == 4 and oracle.queries == 20
    assert sorted(server.seen) == sorted(set(server.seen))  # nothing answered twice


def test_gives_up_with_a_clear_error_after_the_retries():
    server = Server(fail=[500] * 10)
    cfg = load_endpoint_config(None, backoff=0.0, retries=2, concurrency=1)
    with pytest.raises(TracemarkError, match="failed 3 times in a row; last: HTTP 500: busy"):
        _oracle(server, config=cfg).query(_images(3))


def test_retry_after_beyond_the_limit_is_an_error_not_a_hang():
    server = Server(fail=[429], retry_after="3600")
    with pytest.raises(TracemarkError, match="asks to wait 3600 s"):
        _oracle(server).query(_images(2))


@pytest.mark.parametrize(
    ("status", "match"), [(401, "refused access"), (403, "refused access"), (404, "not found")]
)
def test_auth_and_missing_model_are_not_retried(status, match):
    server = Server(fail=[status] * 5)
    with pytest.raises(TracemarkError, match=match):
        _oracle(server).query(_images(2))
    assert server.requests == 3  # model and server metadata, then one infer: not retried


def test_malformed_answers_are_named():
    def handler(request):
        if request.method == "GET":
            return httpx.Response(200, json={})
        return httpx.Response(
            200,
            json={
                "outputs": [{"name": "p", "datatype": "FP32", "shape": [2, 10], "data": [0.1] * 7}]
            },
        )

    oracle = open_endpoint("http://127.0.0.1:9/v2/models/m", transport=httpx.MockTransport(handler))
    with pytest.raises(MalformedAnswer, match="declares shape"):
        oracle.query(_images(2))


def test_budget_counts_images_sent_and_refuses_before_sending():
    server = Server()
    oracle = _oracle(server, budget=25)
    x = _images(20)
    oracle.query(x)
    oracle.query(x)  # all answered already: free
    assert oracle.queries == 20 and oracle.from_log == 20
    with pytest.raises(BudgetExceededError):
        oracle.query(_images(10, seed=1))
    assert len(server.seen) == 20


def test_duplicates_within_a_batch_are_sent_once():
    server = Server()
    x = _images(5)
    r = _oracle(server).query(np.concatenate([x, x, x[:2]]))
    assert len(r) == 12 and len(server.seen) == 5
    np.testing.assert_array_equal(r.probs[:5], r.probs[5:10])


def test_log_resumes_without_repeating_and_replays_identically(tmp_path):
    log = tmp_path / "q.jsonl"
    x = _images(30)
    first = Server()
    part = _oracle(first, log=log).query(x[:12])
    second = Server()
    whole = _oracle(second, log=log).query(x)
    assert len(second.seen) == 18 and not set(first.seen) & set(second.seen)
    np.testing.assert_array_equal(whole.probs[:12], part.probs)
    replay = ReplayOracle(log).query(x)
    np.testing.assert_array_equal(replay.probs, whole.probs)
    lines = log.read_text().splitlines()
    assert json.loads(lines[0])["format"] == "tracemark-query-log"
    hashes = [json.loads(line)["sha256"] for line in lines[1:]]
    assert len(hashes) == 30 == len(set(hashes))
    with pytest.raises(TracemarkError, match="no answer for 1 of the images"):
        ReplayOracle(log).query(_images(1, seed=5))


def test_ctrl_c_inside_submit_still_logs_every_answer_the_server_gave(tmp_path, monkeypatch):
    # Ctrl-C can land anywhere in the main thread, e.g. after the pool has queued a batch
    # but before submit returned its future. That batch is still sent and answered, so its
    # answer must reach the log, or a resumed audit asks the model the same thing twice.
    from concurrent.futures import ThreadPoolExecutor

    real_submit = ThreadPoolExecutor.submit
    calls = []

    def submit(pool, fn, *args, **kwargs):
        future = real_submit(pool, fn, *args, **kwargs)
        calls.append(future)
        if len(calls) == 2:
            future.result()  # the server has answered this batch...
            raise KeyboardInterrupt  # ...and the user pressed Ctrl-C before submit returned
        return future

    monkeypatch.setattr(ThreadPoolExecutor, "submit", submit)
    log, x, server = tmp_path / "q.jsonl", _images(20), Server()
    oracle = _oracle(server, log=log)
    with pytest.raises(KeyboardInterrupt):
        oracle.query(x)
    monkeypatch.setattr(ThreadPoolExecutor, "submit", real_submit)
    logged = [json.loads(line)["sha256"] for line in log.read_text().splitlines()[1:]]
    assert len(server.seen) >= 8 and sorted(logged) == sorted(server.seen)
    resumed = Server()
    _oracle(resumed, log=log).query(x)
    assert not set(resumed.seen) & set(server.seen)  # nothing asked twice
    assert sorted(server.seen + resumed.seen) == sorted({image_sha256(i) for i in x})


def test_a_log_append_interrupted_before_the_write_marks_nothing(tmp_path, monkeypatch):
    # The oracle retries the append after a Ctrl-C; answers marked as logged but never
    # written would be skipped by that retry and lost.
    import tracemark.oracle.querylog as querylog

    log = QueryLog(tmp_path / "q.jsonl", {"endpoint": "e"})
    answer = {"output": [0.25, 0.75]}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C as the log file is being opened

    monkeypatch.setattr(querylog, "open", interrupted, raising=False)
    with pytest.raises(KeyboardInterrupt):
        log.append([("a" * 64, "t", answer)])
    monkeypatch.delattr(querylog, "open")
    log.append([("a" * 64, "t", answer)])  # the retry
    assert QueryLog(tmp_path / "q.jsonl", {"endpoint": "e"}).answers == {"a" * 64: answer}


def test_a_half_written_last_line_is_dropped_on_resume(tmp_path):
    log = tmp_path / "q.jsonl"
    x = _images(8)
    _oracle(Server(), log=log).query(x[:4])
    with open(log, "a") as fh:
        fh.write('{"sha256": "ab')  # killed mid-write
    server = Server()
    with pytest.warns(UserWarning, match="incomplete last line"):
        oracle = _oracle(server, log=log)
    oracle.query(x)
    assert len(server.seen) == 4
    assert len(QueryLog.read(log)) == 8


def test_a_log_from_another_endpoint_is_refused(tmp_path):
    log = tmp_path / "q.jsonl"
    _oracle(Server(), log=log).query(_images(2))
    with pytest.raises(TracemarkError, match="was written for model_name 'm', not 'z'"):
        open_endpoint(
            "http://127.0.0.1:9/v2/models/z", transport=httpx.MockTransport(Server()), log=log
        )


def test_topk_and_label_answers_give_restricted_responses():
    x = _images(6)
    top = _oracle(Server(topk=5), config=load_endpoint_config(None, num_classes=C)).query(x)
    assert top.mode == "topk" and top.k == 5 and top.scores is not None
    lab = _oracle(Server(label_only=True), config=load_endpoint_config(None, num_classes=C)).query(
        x
    )
    assert lab.mode == "label"
    np.testing.assert_array_equal(lab.top1(), top.top1())
    with pytest.raises(TracemarkError, match="--num-classes"):
        _oracle(Server(label_only=True)).query(x)


def test_json_protocol_with_custom_field_names_and_class_names():
    names = [f"c{i}" for i in range(C)]

    def handler(request):
        body = json.loads(request.content)
        assert set(body) == {"inputs"}
        n = len(body["inputs"])
        return httpx.Response(
            200, json={"out": [[{"cls": "c3", "p": 0.7}, {"cls": "c1", "p": 0.2}]] * n}
        )

    cfg = load_endpoint_config(
        None,
        protocol="json",
        json_fields={"images": "inputs", "predictions": "out", "label": "cls", "score": "p"},
    )
    r = open_endpoint(
        "http://127.0.0.1:9/classify",
        cfg,
        class_names=names,
        transport=httpx.MockTransport(handler),
    ).query(_images(3))
    assert r.mode == "topk" and r.labels.tolist() == [[3, 1]] * 3


def test_credentials_come_from_env_or_file_and_never_show(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_TOKEN", "s3cret-token")
    headers = load_auth_headers(env="MY_TOKEN")
    assert headers["Authorization"] == "Bearer s3cret-token"
    assert "s3cret" not in repr(headers) and "s3cret" not in str(headers)
    server = Server()
    oracle = _oracle(server, headers=headers, log=tmp_path / "q.jsonl")
    oracle.query(_images(2))
    assert server.auth[-1] == "Bearer s3cret-token"
    assert "s3cret" not in repr(oracle) and "s3cret" not in (tmp_path / "q.jsonl").read_text()
    f = tmp_path / "auth"
    f.write_text("# api\nX-Api-Key: k-123\n")
    os.chmod(f, stat.S_IRUSR | stat.S_IWUSR)
    assert load_auth_headers(file=f) == {"X-Api-Key": "k-123"}
    f.write_text("X-Api-Key k-123\n")
    with pytest.raises(TracemarkError) as err:
        load_auth_headers(file=f)
    assert "k-123" not in str(err.value)
    with pytest.raises(TracemarkError, match="not set"):
        load_auth_headers(env="NO_SUCH_VAR_HERE")
    with pytest.raises(TracemarkError, match="holds credentials"):
        open_endpoint("http://user:pw@127.0.0.1:9/v2/models/m")


class CtrlCServer(Server):
    """Answers slowly and presses Ctrl-C from its own (worker) thread at request N:
    the signal then lands in a thread other than the one that handles it, as it does
    when a terminal's Ctrl-C is taken by one of the process's many threads."""

    def __init__(self, press_at: int, presses: int = 1):
        super().__init__()
        self.press_at, self.presses = press_at, presses

    def __call__(self, request: httpx.Request) -> httpx.Response:
        import signal
        import threading
        import time

        if request.method == "POST" and self.requests == self.press_at:
            for _ in range(self.presses):  # to this thread: the main thread is not woken
                signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        time.sleep(0.05)
        return super().__call__(request)


def test_ctrl_c_stops_new_requests_awaits_those_in_flight_and_logs_them(tmp_path):
    # The contract: after Ctrl-C no request starts, every request sent is answered and
    # logged, then KeyboardInterrupt; so the server answered exactly what the log holds,
    # and a resume sends exactly the rest.
    x, log = _images(200), tmp_path / "q.jsonl"
    server = CtrlCServer(press_at=10)
    with pytest.raises(KeyboardInterrupt):
        _oracle(server, log=log).query(x)
    logged = [r["sha256"] for r in map(json.loads, log.read_text().splitlines()[1:])]
    assert sorted(logged) == sorted(server.seen)
    assert 8 <= len(server.seen) < 200  # stopped early: 50 batches of 4, Ctrl-C at the 10th
    resumed = Server()
    r = _oracle(resumed, log=log).query(x)
    assert sorted(resumed.seen) == sorted(set(map(image_sha256, x)) - set(logged))
    np.testing.assert_array_equal(r.probs, _model(x.transpose(0, 3, 1, 2)))


def test_a_second_ctrl_c_exits_at_once():
    server = CtrlCServer(press_at=3, presses=2)
    with pytest.raises(KeyboardInterrupt):
        _oracle(server).query(_images(200))
    assert len(server.seen) < 200  # (timing and logging: test_serve.py, over real sockets)
