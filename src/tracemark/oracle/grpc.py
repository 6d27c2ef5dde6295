"""Auditing a model behind the Open Inference Protocol's gRPC API (KServe v2).

``grpc://HOST:PORT/v2/models/NAME[/versions/V]`` (``grpcs://`` for TLS) is a model served
by Triton, KServe or MLServer over gRPC. Images travel as raw FP32 bytes
(``raw_input_contents``) and answers come back as raw bytes too (``raw_output_contents``,
or typed ``contents``), read by their declared datatype: the binary wire of servers whose
REST API has none (MLServer's). Everything else is the HTTP oracle's: batches of the
query's balanced split, ``concurrency`` at a time, hashed a window ahead for large
images; retries with backoff for UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED and
ABORTED; the query log (each reply's bytes kept whole), its resume and replay; the budget.
Credentials go in call metadata and never reach the log.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ..errors import TracemarkError
from .endpoint import EndpointConfig, split_v2_url, with_settings
from .grpc_messages import SERVICE, messages
from .querylog import now_iso
from .remote import RemoteOracle, StopRequested
from .wire import V2Codec, decode_reply

__all__ = ["GrpcOracle", "is_grpc_url", "open_grpc_endpoint"]

RETRY_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "ABORTED"})


def is_grpc_url(value: object) -> bool:
    """True for a ``grpc://`` or ``grpcs://`` address."""
    return isinstance(value, str) and value.lower().startswith(("grpc://", "grpcs://"))


class GrpcOracle(RemoteOracle):
    """A classifier behind a KServe v2 gRPC server (see the module's docstring).

    ``url``: ``grpc[s]://HOST:PORT``; ``config`` names the model (``model_name``,
    ``version``) and sets batches, concurrency, timeout and retries. ``headers`` become
    call metadata (credentials; never logged). ``log``: a query-log path.
    """

    transport = "grpc"
    schemes = ("grpc", "grpcs")

    def __init__(
        self,
        url: str,
        config: EndpointConfig,
        *,
        headers: dict[str, str] | None = None,
        log: str | os.PathLike | None = None,
        seed: str = "00",
        **settings: Any,
    ) -> None:
        import grpc

        if not config.model_name:
            raise TracemarkError(
                "which model? give the URL as grpc://HOST:PORT/v2/models/NAME, or pass "
                "--model-name NAME"
            )
        if urlsplit(url).port is None:
            raise TracemarkError(f"not a grpc://HOST:PORT address (no port): {url!r}")
        identity = {
            "protocol": "v2-grpc",
            "model_name": config.model_name,
            "output_name": config.output_name,
        }
        super().__init__(
            url, config, identity=identity, headers=headers, log=log, seed=seed, **settings
        )
        self.version = config.version
        layout = "nchw" if config.layout == "auto" else config.layout
        self.codec = V2Codec(
            config.model_name, config.version, config.input_name, layout, config.output_name
        )
        self._configured = config.input_name is not None and config.layout != "auto"
        self._metadata = tuple((str(k).lower(), str(v)) for k, v in (headers or {}).items())
        self._image_bytes = 0
        self._in_flight: set[Any] = set()  # calls a second Ctrl-C cancels
        self._in_flight_lock = threading.Lock()  # workers and that handler only
        host, secure = self.address.hostname, self.address.scheme.lower() == "grpcs"
        if headers and not secure:
            warnings.warn(f"sending credentials over plain grpc to {host}; use grpcs", stacklevel=2)
        target = f"{host}:{self.address.port}"
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self._channel = (
            grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
            if secure
            else grpc.insecure_channel(target, options=options)
        )
        m = messages()
        self._infer = self._channel.unary_unary(  # the reply's bytes, kept for the log
            f"/{SERVICE}/ModelInfer",
            request_serializer=m.ModelInferRequest.SerializeToString,
            response_deserializer=bytes,
        )
        self._model_metadata = self._channel.unary_unary(
            f"/{SERVICE}/ModelMetadata",
            request_serializer=m.ModelMetadataRequest.SerializeToString,
            response_deserializer=m.ModelMetadataResponse.FromString,
        )

    @property
    def wire(self) -> str:
        return "grpc"

    def __repr__(self) -> str:
        return (
            f"GrpcOracle({self.url!r}, model_name={self.model_name!r}, sent={self.queries}, "
            f"from_log={self.from_log}, auth={self.auth_source})"
        )

    def close(self) -> None:
        self._channel.close()

    # ------------------------------------------------------------------ calls

    def _call(
        self, method: Any, request: Any, what: str, stop: threading.Event | None = None
    ) -> Any:
        """One call with retries (backoff with jitter) for the transient status codes;
        ``stop`` set (a Ctrl-C, another batch failed) starts no further try."""
        import grpc

        stop = stop or threading.Event()
        for attempt in range(self.retries + 1):
            if stop.is_set():
                raise StopRequested()
            with self._stats_lock:
                self.requests += 1
            try:
                return self._await(method, request)
            except grpc.FutureCancelledError:
                raise StopRequested() from None  # a second Ctrl-C cut it off
            except grpc.RpcError as exc:
                code = exc.code().name if exc.code() is not None else "UNKNOWN"
                details = str(exc.details() or "")[:300]
                if code == "RESOURCE_EXHAUSTED" and "larger than max" in details:
                    raise TracemarkError(
                        f"{self.url} ({what}) refused a message as too large ({details}): "
                        f"lower --batch-size (each image is {self._image_bytes} bytes) or "
                        "raise the server's limit (MLServer: grpc_max_message_length)"
                    ) from None
                if code not in RETRY_CODES:
                    raise TracemarkError(
                        f"{self.url} ({what}) refused the request: {code}"
                        + (f": {details}" if details else "")
                    ) from None
                if attempt == self.retries:
                    raise TracemarkError(
                        f"{self.url} ({what}) failed {self.retries + 1} times in a row; last: "
                        f"{code}" + (f": {details}" if details else "") + ". " + self.resume_hint()
                    ) from None
                with self._stats_lock:
                    self.retried += 1
                if stop.wait(self._backoff_delay(attempt)):
                    raise StopRequested() from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _await(self, method: Any, request: Any) -> Any:
        """One call, registered while it runs so that :meth:`_abort` can cancel it."""
        call = method.future(request, timeout=self.timeout, metadata=self._metadata)
        with self._in_flight_lock:
            self._in_flight.add(call)
        try:
            return call.result()
        finally:
            with self._in_flight_lock:
                self._in_flight.discard(call)

    def _abort(self) -> Callable[[], None]:
        """Cancels every call in flight (a second Ctrl-C), as HTTP's deadlines do."""

        def cancel() -> None:
            with self._in_flight_lock:
                calls = list(self._in_flight)
            for call in calls:
                call.cancel()

        return cancel

    def _configure(self) -> None:
        """Learn the input's name and layout from the model's metadata where not given."""
        m = messages()
        reply = self._call(
            self._model_metadata,
            m.ModelMetadataRequest(name=self.model_name, version=self.version or ""),
            "model metadata",
        )
        self.codec.configure(
            {
                "inputs": [
                    {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                    for t in reply.inputs
                ]
            }
        )
        self._configured = True

    def _send(
        self, images: np.ndarray, stop: threading.Event
    ) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
        """One batch: (request time, its answers, the reply's bytes for the query log),
        the answers validated by the v2 codec."""
        m = messages()
        x = self.codec.input_tensor(images)
        tensor = m.ModelInferRequest.InferInputTensor(
            name=self.codec.input_name or "input", datatype="FP32", shape=list(x.shape)
        )
        request = m.ModelInferRequest(
            model_name=self.model_name,
            model_version=self.version or "",
            inputs=[tensor],
            raw_input_contents=[x.astype("<f4", copy=False).tobytes()],
        )
        when = now_iso()
        self._image_bytes = x[0].nbytes
        raw = self._call(self._infer, request, "inference", stop)
        return when, decode_reply(self.codec, raw, len(images)), {"wire": "grpc", "response": raw}


def open_grpc_endpoint(
    url: str,
    config: EndpointConfig | None = None,
    *,
    headers: dict[str, str] | None = None,
    log: str | os.PathLike | None = None,
    budget: int | None = None,
    outputs: str = "auto",
    class_names: list[str] | None = None,
) -> GrpcOracle:
    """A :class:`GrpcOracle` for ``grpc[s]://HOST:PORT/v2/models/NAME[/versions/V]``."""
    config = config or EndpointConfig()
    if config.protocol != "v2":
        raise TracemarkError(f"a grpc:// model speaks the v2 protocol, not {config.protocol!r}")
    base, named, version = split_v2_url(url)
    if named is not None and config.model_name is not None and named != config.model_name:
        raise TracemarkError(
            f"the URL names model {named!r} but --model-name says {config.model_name!r}"
        )
    num_classes = config.num_classes or (len(class_names) if class_names else None)
    config = with_settings(
        config,
        model_name=config.model_name or named,
        version=config.version or version,
        num_classes=num_classes,
    )
    return GrpcOracle(base, config, headers=headers, log=log, budget=budget, outputs=outputs)
