"""A deadline for a whole HTTP request, and a way to cut every request off at once.

httpx's timeouts apply to each read: a server that sends one byte a second never trips
them, and keeps an audit waiting forever. Every socket read and write here gets at most
the time left until the request's deadline, so ``--timeout`` bounds the request as a
whole. The sockets in use are also registered, so that :meth:`DeadlineBackend.abort`
(the second Ctrl-C) shuts them all down and the threads blocked on them return at once.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

__all__ = ["DeadlineBackend", "deadline_transport"]


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own sync backend, with per-request deadlines and an abort switch."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.aborted = False

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Every read and write of this thread's request must end within ``seconds``."""
        self._local.deadline = time.monotonic() + seconds
        try:
            yield
        finally:
            self._local.deadline = None

    def remaining(self, timeout: float | None) -> float | None:
        """The time the next socket operation may take: its own timeout, or less."""
        if self.aborted:
            raise httpcore.ReadError("the request was aborted (Ctrl-C)")
        deadline = getattr(self._local, "deadline", None)
        if deadline is None:
            return timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("the request's deadline passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, self.remaining(timeout), local_address, socket_options
        )
        return _DeadlineStream(stream, self)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, self.remaining(timeout), socket_options)
        return _DeadlineStream(stream, self)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)

    def register(self, sock: socket.socket | None, add: bool) -> None:
        if sock is None:
            return
        with self._lock:
            if add:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)

    def abort(self) -> None:
        """Shut down every socket in use: blocked reads return, their requests fail."""
        self.aborted = True
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: DeadlineBackend) -> None:
        self._inner = inner
        self._backend = backend
        self._sock = inner.get_extra_info("socket")
        backend.register(self._sock, True)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._backend.remaining(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._backend.remaining(timeout))

    def close(self) -> None:
        self._backend.register(self._sock, False)
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        self._backend.register(self._sock, False)
        timeout = self._backend.remaining(timeout)
        inner = self._inner.start_tls(ssl_context, server_hostname, timeout)
        return _DeadlineStream(inner, self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def deadline_transport(limits: httpx.Limits, backend: DeadlineBackend) -> httpx.HTTPTransport:
    """An httpx transport whose connections go through ``backend``.

    httpx takes no network backend, so its connection pool is rebuilt with one (the
    pool is what ``HTTPTransport`` builds itself, with the same limits). The tests
    (tests/test_bad_inputs.py, the slow-loris server) fail if httpx ever changes this.
    """
    transport = httpx.HTTPTransport(limits=limits)
    pool = transport._pool
    if not isinstance(pool, httpcore.ConnectionPool):  # a proxy from the environment
        return transport
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=backend,
    )
    return transport
