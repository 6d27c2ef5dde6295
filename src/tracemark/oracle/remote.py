"""What the HTTP and gRPC oracles share: the endpoint's address and settings, the
handling of credentials, the query log and its identity, and hashing ahead.

A subclass calls :meth:`RemoteOracle.__init__` first (it checks the address before any
file is made), then sets up its own client, and implements ``_fetch_missing`` and
``close``.
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from .._version import __version__
from ..errors import TracemarkError
from ..rng import derive
from .endpoint import EndpointConfig
from .logged import LoggedOracle, windows_ahead
from .querylog import QueryLog

__all__ = ["RemoteOracle"]


class RemoteOracle(LoggedOracle):
    """A model behind a network endpoint (see the module's docstring).

    ``url``: the endpoint's address, one of ``schemes``; ``config``: its settings;
    ``headers``: credentials (never logged); ``log``: a query-log path, its header naming
    the endpoint and ``identity`` (protocol, model); ``jitter``: the purpose the retries'
    random backoff is drawn for.
    """

    def __init__(
        self,
        url: str,
        config: EndpointConfig,
        *,
        schemes: tuple[str, ...],
        identity: dict[str, Any],
        headers: dict[str, str] | None,
        log: str | os.PathLike | None,
        jitter: str,
        seed: str = "00",
        **settings: Any,
    ) -> None:
        self.address = urlsplit(url)
        if self.address.scheme.lower() not in schemes or not self.address.hostname:
            wanted = " or ".join(f"{s}://" for s in schemes)
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
        self._rng = derive(seed, jitter)
        query_log = None
        if log is not None:
            header = {"endpoint": self.url, **identity, "auth": self.auth_source}
            query_log = QueryLog(log, {**header, "tracemark_version": __version__})
        settings.setdefault("batch_size", config.batch_size)
        settings.setdefault("num_classes", config.num_classes)
        super().__init__(log=query_log, **settings)

    def _hash_windows(self, images: np.ndarray) -> list[list[tuple[int, int]]] | None:
        return windows_ahead(images, self.batch_size, self.concurrency)

    def close(self) -> None:  # pragma: no cover - every subclass closes its client
        raise NotImplementedError

    def __enter__(self) -> RemoteOracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
