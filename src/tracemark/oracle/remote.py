"""What the HTTP and gRPC oracles share: the endpoint's address and settings, the
handling of credentials, the query log and its identity, hashing ahead, and the fetch
loop (batches ``concurrency`` at a time, every answer logged on arrival, the Ctrl-C
contract).

A subclass calls :meth:`RemoteOracle.__init__` first (it checks the address before any
file is made), then sets up its own client, and implements ``_configure``, ``_send``
and ``close`` (and ``_abort``, where requests in flight can be cut off).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from .._version import __version__
from ..errors import TracemarkError
from ..rng import derive
from .base import balanced_batches
from .endpoint import EndpointConfig
from .image_hash import LARGE_IMAGE_BYTES
from .logged import LoggedOracle
from .querylog import QueryLog

__all__ = ["RemoteOracle", "StopRequested"]


class _CtrlC:
    """Ctrl-C as a request to stop, for the span of one fetch (main thread only).

    Python raises KeyboardInterrupt in the main thread at whatever bytecode it reaches
    next, and when another thread took the signal, that can be long after the key press:
    inside ``pool.submit`` after a worker thread started but before the pool registered
    it (so shutdown did not wait for its request, which the server then answered unseen),
    or inside the query log's append (so a batch was logged twice). While a fetch runs,
    the first Ctrl-C therefore only sets ``stop``: no new request starts, every request in
    flight is awaited and logged, and then KeyboardInterrupt is raised. A second Ctrl-C
    raises at once.
    """

    def __init__(self, stop: threading.Event, abort: Any = None) -> None:
        self.stop = stop
        self.abort = abort  # called on the second Ctrl-C: cut requests in flight off
        self.pressed = False
        self._previous: Any = None

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pressed:
            if self.abort is not None:
                self.abort()
            raise KeyboardInterrupt
        self.pressed = True
        self.stop.set()

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class StopRequested(Exception):
    """A worker was told to stop (the audit was interrupted or another batch failed)."""


class RemoteOracle(LoggedOracle):
    """A model behind a network endpoint (see the module's docstring).

    ``url``: the endpoint's address, one of the class's ``schemes``; ``config``: its
    settings; ``headers``: credentials (never logged); ``log``: a query-log path, its
    header naming the endpoint and ``identity`` (protocol, model). The retries' random
    backoff is drawn for the purpose "TRANSPORT/backoff-jitter".
    """

    transport = "remote"  # names the worker threads and the backoff's random purpose
    schemes: tuple[str, ...] = ()

    def __init__(
        self,
        url: str,
        config: EndpointConfig,
        *,
        identity: dict[str, Any],
        headers: dict[str, str] | None,
        log: str | os.PathLike | None,
        seed: str = "00",
        **settings: Any,
    ) -> None:
        self.address = urlsplit(url)
        if self.address.scheme.lower() not in self.schemes or not self.address.hostname:
            wanted = " or ".join(f"{s}://" for s in self.schemes)
            raise TracemarkError(f"{url!r} is not a URL this oracle reads ({wanted})")
        if self.address.username or self.address.password:
            raise TracemarkError(
                "the URL holds credentials; put them in a file (--auth-file) or an environment "
                "variable (--auth-env) instead, so they never appear in logs or process lists"
            )
        self.config, self.url = config, url.rstrip("/")
        self.model_name = config.model_name
        self.concurrency, self.retries = config.concurrency, config.retries
        self.timeout, self.backoff = float(config.timeout), float(config.backoff)
        self.max_backoff = float(config.max_backoff)
        self.auth_source = getattr(headers, "source", None) or ("headers" if headers else None)
        self.requests = 0
        self.retried = 0
        self._stats_lock = threading.Lock()
        self._rng = derive(seed, f"{self.transport}/backoff-jitter")
        query_log = None
        if log is not None:
            header = {"endpoint": self.url, **identity, "auth": self.auth_source}
            query_log = QueryLog(log, {**header, "tracemark_version": __version__})
        settings.setdefault("batch_size", config.batch_size)
        settings.setdefault("num_classes", config.num_classes)
        super().__init__(log=query_log, **settings)

    def _hash_windows(self, images: np.ndarray) -> list[list[tuple[int, int]]] | None:
        """Large images (hashing 224x224x3 costs about a quarter of what a small server
        takes to answer it) are hashed a window ahead of the requests: one round of
        ``concurrency`` requests first, so the server starts at once, then eight rounds at
        a time. The requests are the query's own balanced batches, as without windows.
        Small images (under LARGE_IMAGE_BYTES) are hashed all at once: None."""
        if images[0].size * 4 < LARGE_IMAGE_BYTES:
            return None
        split = balanced_batches(len(images), self.batch_size)
        first, rest = self.concurrency, 8 * self.concurrency
        return [split[:first]] + [split[i : i + rest] for i in range(first, len(split), rest)]

    def _backoff_delay(self, attempt: int) -> float:
        """Seconds to wait before try ``attempt + 2``: exponential, capped, with jitter."""
        with self._stats_lock:
            jitter = 0.5 + self._rng.random()
        return min(self.max_backoff, self.backoff * 2**attempt) * jitter

    def resume_hint(self) -> str:
        """What an audit that stopped on a failed request can do about it."""
        if self.log is not None:
            return (
                f"The answers received so far are in the query log {self.log.path}: "
                "re-run to resume"
            )
        return (
            "No --query-log was given, so the answers received so far are lost; give one "
            "to resume an interrupted audit without repeating its queries"
        )

    # ------------------------------------------------------------------ fetching

    def _fetch_missing(
        self,
        images: np.ndarray,
        hashes: list[str],
        batches: list[tuple[int, int]] | None = None,
    ) -> None:
        """Send the images in batches (``batches``, or the balanced split of them),
        ``concurrency`` at a time; log each answer on arrival."""
        if not self._configured:
            self._configure()
        stop = threading.Event()
        if batches is None:
            batches = balanced_batches(len(hashes), self.batch_size)
        batches = dict(batches)  # start -> end
        # Each worker files its batch's answer here itself (keyed by the batch's start);
        # whatever ends the fetch, every answer filed is logged before it returns: the
        # server answered it, so a re-run must never send it again.
        answered: dict[int, tuple[str, list[dict], dict | None]] = {}
        recorded: set[int] = set()

        def send(start: int) -> int:
            answered[start] = self._send(images[start : batches[start]], stop)
            return start

        def record(start: int) -> None:
            if start not in recorded:
                when, answers, batch = answered[start]
                self._record(hashes[start : batches[start]], when, answers, batch)
                recorded.add(start)

        with _CtrlC(stop, self._abort()) as ctrl_c:
            pool = ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix=f"tracemark-{self.transport}"
            )
            try:
                pending = {pool.submit(send, start) for start in batches}
                while pending:
                    # Wake up now and then, so that a Ctrl-C is seen while batches run.
                    done, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
                    for fut in done:
                        if not fut.cancelled() and not isinstance(fut.exception(), StopRequested):
                            record(fut.result())  # raises the batch's error
                    if stop.is_set():  # cancelled futures never count as done for wait()
                        pool.shutdown(wait=False, cancel_futures=True)
                        pending = {f for f in pending if not f.cancelled()}
            except BaseException:
                # A batch failed (or a second Ctrl-C): start nothing new, let requests in
                # flight finish, and keep their answers so a re-run never sends them again.
                stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            finally:
                pool.shutdown(wait=True)
                for start in sorted(answered):
                    record(start)
            if ctrl_c.pressed:
                raise KeyboardInterrupt

    def _configure(self) -> None:  # pragma: no cover - every subclass has its own
        """Learn what the endpoint needs (input name, layout, wire) before the first send."""
        raise NotImplementedError

    def _send(
        self, images: np.ndarray, stop: threading.Event
    ) -> tuple[str, list[dict[str, Any]], dict[str, Any] | None]:  # pragma: no cover
        """One batch: (request time, its answers, its bytes for the log or None)."""
        raise NotImplementedError

    def _abort(self) -> Callable[[], None] | None:
        """What a second Ctrl-C calls to cut requests in flight off (none here)."""
        return None

    def close(self) -> None:  # pragma: no cover - every subclass closes its client
        raise NotImplementedError

    def __enter__(self) -> RemoteOracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
