"""Serve a saved model over HTTP, as a suspicious party's API would, for demos and tests.

``tracemark serve MODEL`` answers the Open Inference Protocol v2 (the REST API of
KServe, Triton and MLServer) and a simple JSON endpoint (``POST /predict``, base64
PNGs in). To stand in for real deployments it can reveal less (top-k, label only,
noisy scores) and misbehave on purpose: fail a share of requests with 500 or 429,
answer late, and rate-limit callers. Every image it answers is appended to an
optional access log, so a test can prove that no query was ever answered twice.

It listens on loopback unless told otherwise: it is a test double, not a production
server (no authentication, no TLS).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .errors import TracemarkError
from .fsutil import open_append
from .options import option
from .oracle.base import Oracle
from .oracle.binary_tensors import (
    CONTENT_TYPE,
    EXTENSION,
    HEADER_LENGTH,
    BinaryBodyError,
    frame,
    read_tensors,
    split_body,
    tensor_bytes,
)
from .oracle.image_hash import image_hashes
from .oracle.querylog import now_iso
from .rng import derive

__all__ = ["FaultPlan", "ServeOptions", "create_app", "run", "serving"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_PNG_PIXELS = 4096 * 4096  # a query image larger than this is refused (decompression bombs)


FAULTS_PANEL = "Faults to inject (for testing)"


def parse_shape(text: str | None) -> tuple[int, int, int] | None:
    """``"1,28,28"`` → (1, 28, 28): the model's (C, H, W) input, for the metadata."""
    if text is None:
        return None
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise TracemarkError(f"--input-shape takes C,H,W (e.g. 1,28,28), got {text!r}")
    return dims  # type: ignore[return-value]


def parse_codes(text: str) -> tuple[int, ...]:
    """``--error-codes 500,429``."""
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise TracemarkError(f"--error-codes takes statuses like 500,429, got {text!r}") from None


@dataclass(frozen=True)
class FaultPlan:
    """Misbehaviour to inject, before the model is asked (a failed request costs nothing).

    ``error_rate`` of requests fail with a status drawn from ``error_codes`` (429
    answers carry ``Retry-After: retry_after``); every request waits a uniform random
    ``0..latency`` seconds; ``rate_limit`` requests per second (token bucket, burst
    ``burst``) are served, the rest get 429.
    """

    error_rate: float = option(
        0.0, "Share of requests that fail.", min=0.0, max=0.99, rich_help_panel=FAULTS_PANEL
    )
    error_codes: tuple[int, ...] = option(
        (500, 429),
        "Comma-separated statuses failures use.",
        parse=parse_codes,
        show_default="500,429",
        rich_help_panel=FAULTS_PANEL,
    )
    latency: float = option(
        0.0,
        "Each request waits up to this many seconds (uniform).",
        min=0.0,
        rich_help_panel=FAULTS_PANEL,
    )
    rate_limit: float | None = option(
        None,
        "Requests per second served; the rest get 429.",
        min=0.001,
        rich_help_panel=FAULTS_PANEL,
    )
    burst: int = 4
    retry_after: float = option(
        0.0,
        "Retry-After seconds sent with injected 429/503.",
        min=0.0,
        rich_help_panel=FAULTS_PANEL,
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate < 1.0:
            raise TracemarkError(f"error rate must be in [0, 1), got {self.error_rate}")
        if not self.error_codes or any(not 400 <= c <= 599 for c in self.error_codes):
            raise TracemarkError(f"error codes must be HTTP 4xx/5xx, got {self.error_codes}")
        if not (math.isfinite(self.latency) and self.latency >= 0):
            raise TracemarkError(f"latency must be >= 0 seconds, got {self.latency}")
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise TracemarkError(f"rate limit must be > 0 requests/s, got {self.rate_limit}")
        if self.burst < 1 or self.retry_after < 0:
            raise TracemarkError("burst must be >= 1 and retry-after >= 0")


@dataclass(frozen=True)
class ServeOptions:
    """What the server reveals: full probabilities, the top ``top_k``, or the label.

    ``noise`` adds N(0, noise^2) to the probabilities before anything is revealed (an
    output-perturbation defence). ``seed`` drives every random choice of the server.
    """

    name: str = option("model", "Model name in the v2 URLs.")
    top_k: int | None = option(None, "Reveal only the top K labels with scores.", min=1)
    label_only: bool = option(False, "Reveal only the predicted label.")
    noise: float = option(0.0, "Add N(0, s^2) noise to the probabilities.", min=0.0)
    faults: FaultPlan = field(default_factory=FaultPlan)
    seed: str = option("00", "Hex seed for the server's random choices (faults, noise).")
    input_shape: tuple[int, int, int] | None = option(
        None,
        "C,H,W of the model's input, for the v2 metadata (ONNX: read).",
        parse=parse_shape,
    )

    def __post_init__(self) -> None:
        try:
            bytes.fromhex(self.seed)
        except ValueError:
            raise TracemarkError(f"--seed must be hex, got {self.seed!r}") from None
        if not self.name or "/" in self.name:
            raise TracemarkError(f"model name must be non-empty without '/', got {self.name!r}")
        if self.top_k is not None and self.top_k < 1:
            raise TracemarkError(f"top-k must be >= 1, got {self.top_k}")
        if self.top_k is not None and self.label_only:
            raise TracemarkError("choose --top-k or --label-only, not both")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise TracemarkError(f"noise must be >= 0, got {self.noise}")

    @property
    def reveals(self) -> str:
        if self.label_only:
            return "label"
        return "probabilities" if self.top_k is None else f"top-{self.top_k}"


def is_access_log(path: Path) -> bool:
    """Whether ``path`` is an access log this server wrote: JSON lines of image hashes."""
    with open(path, "rb") as fh:
        first = fh.readline(4096)
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and set(record) == {"sha256", "time"}


class _BadRequest(Exception):
    """The client sent something the protocol does not allow (HTTP 400)."""


class _Model:
    """The served model behind a lock (torch and onnxruntime sessions are shared)."""

    def __init__(self, oracle: Oracle, options: ServeOptions, access_log: Path | None):
        from .oracle import GaussianNoise, LabelOnly, TopK

        self.oracle = oracle
        answer: Oracle = oracle
        if options.noise > 0:
            answer = GaussianNoise(answer, options.noise, derive(options.seed, "serve/noise"))
        if options.top_k is not None:
            answer = TopK(answer, options.top_k)
        elif options.label_only:
            answer = LabelOnly(answer)
        self.answer = answer
        self.lock = threading.Lock()
        # Opened (and refused, if it is not an access log) before the server starts.
        self.access_log = (
            None
            if access_log is None
            else open_append(access_log, is_access_log, what="access log")
        )
        self.answered = 0

    def predict(self, images: np.ndarray):
        with self.lock:
            response = self.answer.query(images)
            if self.access_log is not None:
                when = now_iso()
                lines = "".join(
                    json.dumps({"sha256": h, "time": when}) + "\n" for h in image_hashes(images)
                )
                self.access_log.write(lines)
                self.access_log.flush()
                os.fsync(self.access_log.fileno())
            self.answered += len(images)
            return response


class _Faults:
    """Draws each request's fate from the server's seed; shared by all requests."""

    def __init__(self, plan: FaultPlan, seed: str) -> None:
        self.plan = plan
        self.rng = derive(seed, "serve/faults")
        self.lock = threading.Lock()
        self.tokens = float(plan.burst)
        self.last = time.monotonic()
        self.injected = 0
        self.limited = 0

    def draw(self) -> tuple[float, int | None, float | None]:
        """(delay in seconds, status to fail with or None, Retry-After seconds or None)."""
        p = self.plan
        with self.lock:
            delay = float(self.rng.uniform(0.0, p.latency)) if p.latency > 0 else 0.0
            if p.rate_limit is not None:
                now = time.monotonic()
                self.tokens = min(float(p.burst), self.tokens + (now - self.last) * p.rate_limit)
                self.last = now
                if self.tokens < 1.0:
                    self.limited += 1
                    return delay, 429, math.ceil((1.0 - self.tokens) / p.rate_limit)
                self.tokens -= 1.0
            if p.error_rate > 0 and self.rng.random() < p.error_rate:
                self.injected += 1
                code = int(self.rng.choice(p.error_codes))
                return delay, code, (p.retry_after if code in (429, 503) else None)
        return delay, None, None


def create_app(
    model: Oracle | str | os.PathLike,
    options: ServeOptions | None = None,
    access_log: str | os.PathLike | None = None,
):
    """A Starlette app serving ``model`` (an oracle, or a TorchScript/ONNX/checkpoint file).

    Routes: ``GET /v2/health/live|ready``, ``GET /v2``, ``GET /v2/models/{name}``
    (metadata), ``GET /v2/models/{name}/ready``, ``POST /v2/models/{name}/infer`` (also
    under ``/versions/{v}``) and ``POST /predict`` (simple JSON).
    """
    from starlette.applications import Starlette
    from starlette.routing import Route

    options = options or ServeOptions()
    if not isinstance(model, Oracle):
        from .oracle import load_oracle

        model = load_oracle(model)
    served = _Model(model, options, Path(access_log) if access_log is not None else None)
    faults = _Faults(options.faults, options.seed)
    h = _Handlers(served, faults, options)
    model_routes = [
        Route("/v2/models/{name}", h.metadata),
        Route("/v2/models/{name}/ready", h.ready),
        Route("/v2/models/{name}/infer", h.infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}", h.metadata),
        Route("/v2/models/{name}/versions/{version}/ready", h.ready),
        Route("/v2/models/{name}/versions/{version}/infer", h.infer, methods=["POST"]),
    ]
    app = Starlette(
        routes=[
            Route("/v2/health/live", h.live),
            Route("/v2/health/ready", h.live),
            Route("/v2", h.server_meta),
            *model_routes,
            Route("/predict", h.predict, methods=["POST"]),
        ]
    )
    app.state.served = served
    app.state.faults = faults
    app.state.options = options
    return app


class _Handlers:
    """The server's endpoints over one served model (Starlette request handlers)."""

    def __init__(self, served: _Model, faults: _Faults, options: ServeOptions) -> None:
        self.served, self.faults, self.options = served, faults, options
        self.name = options.name

    @staticmethod
    def error(status: int, message: str, headers: dict[str, str] | None = None):
        from starlette.responses import JSONResponse

        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def check_name(self, request):
        asked = request.path_params["name"]
        if asked != self.name:
            return self.error(404, f"model {asked!r} not found; this server has {self.name!r}")
        return None

    async def misbehave(self):
        delay, status, retry_after = self.faults.draw()
        if delay:
            await asyncio.sleep(delay)
        if status is None:
            return None
        # Retry-After is whole seconds (RFC 9110).
        headers = {} if retry_after is None else {"Retry-After": str(math.ceil(retry_after))}
        return self.error(status, "injected fault" if status != 429 else "rate limited", headers)

    async def live(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse({"live": True})

    async def server_meta(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse(
            {"name": "tracemark-serve", "version": __version__, "extensions": [EXTENSION]}
        )

    async def ready(self, request):
        from starlette.responses import JSONResponse

        return self.check_name(request) or JSONResponse({"name": self.name, "ready": True})

    async def metadata(self, request):
        from starlette.responses import JSONResponse

        return self.check_name(request) or JSONResponse(_metadata(self.options, self.served.oracle))

    async def answer(self, request, read, render):
        """Inject faults, parse the images, ask the model, render its answer.

        ``read(body, headers)`` gives (images, what the answer must honour);
        ``render(response, that)`` the HTTP response.
        """
        from starlette.concurrency import run_in_threadpool

        if (fault := await self.misbehave()) is not None:
            return fault
        try:
            images, asked = read(await request.body(), request.headers)
            response = await run_in_threadpool(self.served.predict, images)
        except _BadRequest as exc:
            return self.error(400, str(exc))
        except TracemarkError as exc:
            return self.error(422, str(exc))
        return render(response, asked)

    async def infer(self, request):
        if (bad := self.check_name(request)) is not None:
            return bad
        return await self.answer(request, _v2_request, self._v2_answer)

    def _v2_answer(self, response, binary: bool):
        from starlette.responses import JSONResponse, Response

        head = {"model_name": self.name, "model_version": "1"}
        outputs = _v2_outputs(response)
        if not binary:
            for o in outputs:
                o["data"] = o["data"].ravel().tolist()
            return JSONResponse({**head, "outputs": outputs})
        blobs = [tensor_bytes(o.pop("data"), o["datatype"]) for o in outputs]
        for o, blob in zip(outputs, blobs, strict=True):
            o["parameters"] = {"binary_data_size": len(blob)}
        content, length = frame({**head, "outputs": outputs}, blobs)
        return Response(content, media_type=CONTENT_TYPE, headers={HEADER_LENGTH: str(length)})

    async def predict(self, request):
        from starlette.responses import JSONResponse

        return await self.answer(
            request,
            lambda body, headers: (_png_images(_json(body)), None),
            lambda r, _: JSONResponse({"predictions": _json_predictions(r)}),
        )


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise _BadRequest(f"the body is not JSON: {exc}") from None


def _v2_request(body: bytes, headers) -> tuple[np.ndarray, bool]:
    """A v2 request's images, and whether it asks for binary outputs.

    With ``Inference-Header-Content-Length`` the body is a JSON header followed by raw
    tensor bytes (the binary tensor data extension); without, plain JSON.
    """
    length = headers.get(HEADER_LENGTH)
    if length is None:
        request = _json(body)
        return _v2_images(request), _wants_binary(request)
    try:
        request, raw = split_body(body, length)
        if not isinstance(request, dict):
            raise _BadRequest("a v2 request must be a JSON object")
        request = {**request, "inputs": read_tensors(request.get("inputs"), raw, "inputs")}
    except BinaryBodyError as exc:
        raise _BadRequest(str(exc)) from None
    return _v2_images(request), _wants_binary(request)


def _wants_binary(request: object) -> bool:
    """Binary outputs asked for: for all (``binary_data_output``) or per output."""
    if not isinstance(request, dict):
        return False
    params = request.get("parameters")
    if isinstance(params, dict) and params.get("binary_data_output") is True:
        return True
    outputs = request.get("outputs")
    return isinstance(outputs, list) and any(
        isinstance(o, dict)
        and isinstance(o.get("parameters"), dict)
        and o["parameters"].get("binary_data") is True
        for o in outputs
    )


def _metadata(options: ServeOptions, oracle: Oracle) -> dict[str, Any]:
    shape = [-1, *options.input_shape] if options.input_shape else _onnx_shape(oracle)
    if options.label_only:
        outputs = [{"name": "labels", "datatype": "INT64", "shape": [-1, 1]}]
    elif options.top_k is not None:
        outputs = [
            {"name": "labels", "datatype": "INT64", "shape": [-1, options.top_k]},
            {"name": "scores", "datatype": "FP64", "shape": [-1, options.top_k]},
        ]
    else:
        outputs = [{"name": "probabilities", "datatype": "FP64", "shape": [-1, -1]}]
    return {
        "name": options.name,
        "versions": ["1"],
        "platform": "tracemark",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": shape}],
        "outputs": outputs,
    }


def _onnx_shape(oracle: Oracle) -> list[int]:
    """The input shape an ONNX model declares (NCHW), -1 where unknown."""
    spec = getattr(oracle, "input", None)
    dims = list(getattr(spec, "shape", None) or [])
    if len(dims) == 4 and getattr(oracle, "layout", "NCHW") == "NCHW":
        return [-1] + [d if isinstance(d, int) and d > 0 else -1 for d in dims[1:]]
    return [-1, -1, -1, -1]


def _v2_images(body: Any) -> np.ndarray:
    """The request's first input tensor, (N, C, H, W) FP32, as (N, H, W, C) float32."""
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
        raise _BadRequest("a v2 request needs a non-empty 'inputs' list")
    spec = inputs[0]
    shape, dtype = spec.get("shape"), spec.get("datatype")
    if dtype not in ("FP32", "FP64"):
        raise _BadRequest(f"input datatype must be FP32 or FP64, got {dtype!r}")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) for d in shape)):
        raise _BadRequest(f"input shape must be [N, C, H, W], got {shape!r}")
    if shape[1] not in (1, 3) or min(shape) < 1:
        raise _BadRequest(f"input must be NCHW with 1 or 3 channels, got shape {shape}")
    data = spec.get("data")
    if not isinstance(data, np.ndarray):  # binary inputs are typed arrays already
        try:
            data = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError):
            raise _BadRequest("input data must be numbers") from None
    if data.size != math.prod(shape):
        raise _BadRequest(f"input shape {shape} needs {math.prod(shape)} values, got {data.size}")
    images = data.astype(np.float32).reshape(shape).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images)


def _png_images(body: Any) -> np.ndarray:
    """The request's base64 PNGs (all the same size and mode) as (N, H, W, C) float32."""
    from PIL import Image

    encoded = body.get("images") if isinstance(body, dict) else None
    if not isinstance(encoded, list) or not encoded:
        raise _BadRequest("the request needs a non-empty list 'images' of base64 PNGs")
    images = []
    for i, text in enumerate(encoded):
        try:
            raw = base64.b64decode(text, validate=True)
            with Image.open(io.BytesIO(raw)) as im:
                if im.width * im.height > MAX_PNG_PIXELS:
                    raise _BadRequest(f"image {i} has {im.width}x{im.height} pixels: too large")
                if im.mode not in ("L", "RGB"):
                    im = im.convert("RGB")
                x = np.asarray(im, dtype=np.float32) / 255.0
        except _BadRequest:
            raise
        except (binascii.Error, TypeError, ValueError, OSError, Image.DecompressionBombError):
            raise _BadRequest(f"image {i} is not a valid base64 PNG") from None
        images.append(x[..., None] if x.ndim == 2 else x)
    if len({x.shape for x in images}) != 1:
        raise _BadRequest("all images in a request must have the same size and mode")
    return np.stack(images)


def _v2_outputs(response) -> list[dict[str, Any]]:
    if response.mode == "probabilities":
        return [_tensor("probabilities", "FP64", response.probs)]
    out = [_tensor("labels", "INT64", response.labels)]
    if response.scores is not None:
        out.append(_tensor("scores", "FP64", response.scores))
    return out


def _tensor(name: str, datatype: str, values: np.ndarray) -> dict[str, Any]:
    """An output tensor, its values still an array (made JSON or bytes by the caller)."""
    return {"name": name, "datatype": datatype, "shape": list(values.shape), "data": values}


def _json_predictions(response) -> list[Any]:
    if response.mode == "probabilities":
        return response.probs.tolist()
    if response.mode == "label":
        return response.labels[:, 0].tolist()
    scores = response.scores
    return [
        [
            {"label": int(c), "score": float(scores[i, j])}
            if scores is not None
            else {"label": int(c)}
            for j, c in enumerate(row)
        ]
        for i, row in enumerate(response.labels)
    ]


def check_host(host: str, allow_remote: bool) -> None:
    if host not in LOOPBACK_HOSTS and not allow_remote:
        raise TracemarkError(
            f"refusing to listen on {host}: tracemark serve is a test server without "
            "authentication; it listens on loopback (127.0.0.1) unless --allow-remote is given"
        )


@contextlib.contextmanager
def serving(
    app, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False
) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread; yields its base URL; stops it on exit."""
    import uvicorn

    check_host(host, allow_remote)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="tracemark-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise TracemarkError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()
    try:
        yield f"http://{_url_host(host)}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def run(
    app,
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_remote: bool = False,
    on_ready: Any = None,
) -> None:
    """Serve ``app`` in the foreground until Ctrl-C or SIGTERM; ``on_ready(url)`` once bound."""
    import uvicorn

    check_host(host, allow_remote)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                await task  # raises the startup error
                raise TracemarkError(f"the server could not listen on {host}:{port}")
            await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()
        if on_ready is not None:
            on_ready(f"http://{_url_host(host)}:{bound[1]}")
        await task

    asyncio.run(main())
