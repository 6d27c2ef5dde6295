"""Query a model behind an HTTP API: batches, concurrency, retries, a budget and a log.

Real endpoints rate-limit, fail now and then, and bill per query. :class:`HttpOracle`
sends only images it has no answer for yet, several batches at a time; retries 429,
5xx and connection failures with exponential backoff (honouring ``Retry-After``);
stops with a clear error on bad credentials or malformed answers; and appends every
answer to a query log as it arrives, so an interrupted audit resumes where it stopped
and a third party can replay it. On Ctrl-C, batches already in flight are waited for
and logged, so the model is never asked the same thing twice; a second Ctrl-C cuts them
off at once. ``timeout`` is a deadline for each request as a whole (see :mod:`.deadline`).
"""

from __future__ import annotations

import contextlib
import email.utils
import ipaddress
import json
import os
import threading
import warnings
from collections import Counter
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from ..errors import TracemarkError
from ..text import printable, redact
from .auth import AuthHeaders
from .binary_tensors import HEADER_LENGTH
from .deadline import DeadlineBackend, deadline_transport
from .endpoint import EndpointConfig, split_v2_url, with_settings
from .querylog import now_iso
from .remote import RemoteOracle, StopRequested
from .wire import JsonCodec, MalformedAnswer, V2Codec, WireRequest, server_offers_binary

__all__ = ["HttpOracle", "is_url", "open_endpoint"]

Protocol = Literal["v2", "json"]
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def is_loopback(host: str) -> bool:
    """True for ``localhost`` itself or a loopback address (127.0.0.0/8, ::1).

    Decided on the exact name or the address, never a prefix: ``localhost.example.com``
    and ``127.attacker.example`` are other machines.
    """
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_url(value: object) -> bool:
    """True for an ``http(s)://`` or ``grpc(s)://`` address (a model that is an API, not
    a file)."""
    return isinstance(value, str) and value.lower().startswith(
        ("http://", "https://", "grpc://", "grpcs://")
    )


class RefusedRequest(TracemarkError):
    """The server refused a request with a status that retrying cannot change."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _codec(config: EndpointConfig, url: str, class_names: list[str] | None):
    """The wire codec for the endpoint's protocol, and whether it is configured already
    (v2 reads the input's name and layout from the model's metadata unless given, and
    whether the server takes binary tensors from the server's metadata unless told)."""
    if config.protocol == "v2":
        layout = "nchw" if config.layout == "auto" else config.layout
        codec = V2Codec(
            config.model_name or "",
            config.version,
            config.input_name,
            layout,
            config.output_name,
            binary=config.binary == "on",
        )
        known = config.input_name is not None and config.layout != "auto"
        return codec, known and config.binary != "auto"
    codec = JsonCodec(config.json_fields, class_names)
    codec.infer_path = url  # the endpoint's full address
    return codec, True


class HttpOracle(RemoteOracle):
    """A classifier behind an HTTP endpoint speaking ``protocol`` ("v2" or "json").

    ``url`` is the server's base address for v2 (``/v2/models/{model_name}/infer`` is
    appended) and the full endpoint address for json. ``headers`` carry credentials
    (see :func:`tracemark.oracle.auth.load_auth_headers`); they are never logged.
    ``log`` is a query-log path: answers already in it are reused, new ones appended.
    ``budget`` caps images *sent*. ``transport`` is an ``httpx`` transport (tests).
    """

    transport = "http"
    schemes = ("http", "https")

    def __init__(
        self,
        url: str,
        config: EndpointConfig | None = None,
        *,
        headers: dict[str, str] | None = None,
        log: str | os.PathLike | None = None,
        class_names: list[str] | None = None,
        seed: str = "00",
        transport: Any = None,
        **settings: Any,
    ) -> None:
        """``config`` (or its fields as keywords, e.g. ``timeout=2.0``): the endpoint's
        settings; other keywords (``budget``, ``outputs``, ``num_classes``) go to the
        oracle underneath."""
        given = {k: settings.pop(k) for k in list(settings) if k in EndpointConfig.model_fields}
        config = with_settings(config or EndpointConfig(), **given)
        v2 = config.protocol == "v2"
        identity = {
            "protocol": config.protocol,
            "model_name": config.model_name if v2 else None,
            "output_name": config.output_name if v2 else None,
        }
        super().__init__(
            url, config, identity=identity, headers=headers, log=log, seed=seed, **settings
        )
        self.protocol = config.protocol
        self.codec, self._configured = _codec(config, url, class_names)
        self.max_retry_after = float(config.max_retry_after)
        host = self.address.hostname or ""
        if headers and self.address.scheme == "http" and not is_loopback(host):
            warnings.warn(f"sending credentials over plain http to {host}; use https", stacklevel=2)
        self._secrets = [str(v) for v in (headers or {}).values()]
        self._warned_retry = False
        self.failures: Counter[str] = Counter()
        self._backend: DeadlineBackend | None = None
        self._client = self._open_client(headers, transport)

    def _open_client(self, headers: dict[str, str] | None, transport: Any):
        """The pooled httpx client; its sockets get whole-request deadlines (.deadline)."""
        import httpx

        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        if transport is None:
            self._backend = DeadlineBackend()
            transport = deadline_transport(limits, self._backend)
        return httpx.Client(
            base_url=self.url if self.protocol == "v2" else "",
            headers=AuthHeaders(headers or {}),
            timeout=httpx.Timeout(self.timeout),
            limits=limits,
            follow_redirects=False,
            transport=transport,
        )

    def __repr__(self) -> str:
        return (
            f"HttpOracle({self.url!r}, protocol={self.protocol!r}, model_name={self.model_name!r}, "
            f"sent={self.queries}, from_log={self.from_log}, auth={self.auth_source})"
        )

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ fetching

    def _abort(self):
        """Cuts every request in flight off (a second Ctrl-C): the deadlines' backend."""
        return None if self._backend is None else self._backend.abort

    def _configure(self) -> None:
        """v2: learn the input name and layout from the model's metadata, and (binary
        "auto") whether the server takes binary tensors from the server's metadata."""
        if isinstance(self.codec, V2Codec):
            if self.config.input_name is None or self.config.layout == "auto":
                r = self._request("GET", self.codec.model_path, None, threading.Event())
                self.codec.configure(self._json(r, self.codec.model_path))
            if self.config.binary == "auto":
                self.codec.binary = self._server_offers_binary()
        self._configured = True

    def _server_offers_binary(self) -> bool:
        """``GET /v2`` lists the binary extension. A server that does not answer that route
        (404, 405, ...) or answers something else gets JSON; refused credentials stop the
        audit here, as they would at its first query."""
        try:
            r = self._request("GET", "/v2", None, threading.Event())
            return server_offers_binary(self._json(r, "/v2"))
        except MalformedAnswer:
            return False
        except RefusedRequest as exc:
            if exc.status in (401, 403):
                raise
            return False

    @property
    def wire(self) -> str:
        """How tensors travel: "binary" or "json" (v2 decides on the first query)."""
        return "binary" if getattr(self.codec, "binary", False) else "json"

    def _send(
        self, images: np.ndarray, stop: threading.Event
    ) -> tuple[str, list[dict], dict | None]:
        """One batch: (request time, its answers, and for a binary answer its bytes for
        the query log, see :meth:`.querylog.QueryLog.append`), validated by the codec."""
        when, path, n = now_iso(), self.codec.infer_path, len(images)
        r = self._request("POST", path, self.codec.request(images), stop)
        length = r.headers.get(HEADER_LENGTH)
        if length is not None and isinstance(self.codec, V2Codec):
            answers = self.codec.decode_binary(r.content, length, n)
            return when, answers, {"header_length": int(length), "response": r.content}
        return when, self.codec.decode(self._json(r, path), n), None

    def _json(self, r: Any, path: str) -> Any:
        """A JSON answer, parsed once; anything else is named, its text escaped."""
        try:
            return json.loads(r.content)
        except (UnicodeDecodeError, ValueError):
            raise MalformedAnswer(
                f"{self._where(path)} answered HTTP {r.status_code} with a body that is not "
                f"JSON: {self._quote(r.text[:200])!r}"
            ) from None

    def _request(
        self, method: str, path: str, request: WireRequest | None, stop: threading.Event
    ) -> Any:
        """One call with retries; returns the successful ``httpx.Response``."""
        import httpx

        reason = ""
        for attempt in range(self.retries + 1):
            if stop.is_set():
                raise StopRequested()
            delay = None
            with self._stats_lock:
                self.requests += 1
            deadline = (
                contextlib.nullcontext()
                if self._backend is None
                else self._backend.deadline(self.timeout)
            )
            try:
                with deadline:
                    if request is None:
                        r = self._client.request(method, path)
                    else:
                        # Content-Length given: the parts are sent as they are, not chunked
                        headers = {**request.headers, "Content-Length": str(request.size)}
                        r = self._client.request(
                            method, path, content=request.stream(), headers=headers
                        )
            except httpx.TimeoutException:
                kind, reason = "timeout", f"no complete answer within {self.timeout:g} s"
            except httpx.TransportError as exc:
                kind = "connection failed"
                reason = f"connection failed ({type(exc).__name__}: {exc})"
            else:
                if r.status_code < 300:
                    return r
                if r.status_code not in RETRY_STATUSES:
                    raise self._fatal(r, path)
                kind = f"HTTP {r.status_code}"
                reason = kind + self._server_message(r)
                delay = self._retry_after(r)
            with self._stats_lock:
                self.failures[kind] += 1
            if attempt == self.retries:
                break
            if delay is None:
                delay = self._backoff_delay(attempt)
            with self._stats_lock:
                self.retried += 1
                first_retry, self._warned_retry = not self._warned_retry, True
            if first_retry:
                warnings.warn(
                    f"{self._where(path)}: {reason}; retrying each failed request up to "
                    f"{self.retries} times, waiting about {self.backoff_total():.0f} s in all "
                    "between tries before giving up (Ctrl-C stops)",
                    stacklevel=2,
                )
            if stop.wait(delay):
                raise StopRequested()
        raise TracemarkError(
            f"{self._where(path)} failed {self.retries + 1} times in a row; last: {reason}. "
            + self.resume_hint()
        )

    def backoff_total(self) -> float:
        """The expected wait between a request's tries, all retries together (random
        jitter of 0.5-1.5x averages out; ``Retry-After`` may ask for more)."""
        return sum(min(self.max_backoff, self.backoff * 2**a) for a in range(self.retries))

    def _quote(self, text: str) -> str:
        """Server text as it may be printed: credentials redacted, control codes escaped."""
        return printable(redact(text, self._secrets))

    def _server_message(self, r: Any) -> str:
        """The server's own error text, briefly (never request headers)."""
        try:
            body = r.json()
            text = body.get("error") or body.get("detail") or body.get("message")
        except (ValueError, AttributeError):
            text = r.text
        text = self._quote(str(text or "").strip().replace("\n", " "))
        return f": {text[:200]}" if text else ""

    def _retry_after(self, r: Any) -> float | None:
        value = r.headers.get("Retry-After")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            seconds = (when - datetime.now(UTC)).total_seconds()
        seconds = max(0.0, seconds)
        if seconds > self.max_retry_after:
            raise TracemarkError(
                f"{self.url} asks to wait {seconds:.0f} s before retrying (Retry-After), more "
                f"than the {self.max_retry_after:.0f} s allowed; re-run later to resume from the "
                "query log"
            )
        return seconds

    def _fatal(self, r: Any, path: str) -> RefusedRequest:
        where, status = self._where(path), r.status_code
        if status in (401, 403):
            how = (
                f"check the credentials from {self.auth_source}"
                if self.auth_source
                else "no credentials were sent: use --auth-env VAR or --auth-file FILE"
            )
            return RefusedRequest(
                f"{where} refused access (HTTP {status}{self._server_message(r)}): {how}", status
            )
        if status == 404:
            hint = (
                f"is the model name {self.model_name!r} right (--model-name)?"
                if self.protocol == "v2"
                else "is the endpoint URL right?"
            )
            message = self._server_message(r)
            return RefusedRequest(f"{where} was not found (HTTP 404{message}): {hint}", status)
        return RefusedRequest(
            f"{where} rejected the request (HTTP {status}{self._server_message(r)})", status
        )

    def _where(self, path: str) -> str:
        return path if is_url(path) else f"{self.url}{path}"


def open_endpoint(
    url: str,
    config: EndpointConfig | None = None,
    *,
    headers: dict[str, str] | None = None,
    log: str | os.PathLike | None = None,
    budget: int | None = None,
    outputs: str = "auto",
    class_names: list[str] | None = None,
    transport: Any = None,
):
    """An :class:`~tracemark.oracle.http.HttpOracle` for ``url`` with ``config``.

    For v2, the model may be named in the URL (``.../v2/models/NAME``) or in the config.
    """
    config = config or EndpointConfig()
    model_name, version = config.model_name, config.version
    if config.protocol == "v2":
        url, named, ver = split_v2_url(url)
        if named is not None and model_name is not None and named != model_name:
            raise TracemarkError(
                f"the URL names model {named!r} but --model-name says {model_name!r}"
            )
        model_name, version = model_name or named, version or ver
        if model_name is None:
            raise TracemarkError(
                "which model? give the v2 URL as http://HOST:PORT/v2/models/NAME, or pass "
                "--model-name NAME"
            )
    num_classes = config.num_classes or (len(class_names) if class_names else None)
    config = with_settings(config, model_name=model_name, version=version, num_classes=num_classes)
    return HttpOracle(
        url,
        config,
        headers=headers,
        log=log,
        class_names=class_names,
        transport=transport,
        budget=budget,
        outputs=outputs,
    )
