"""Credentials for an HTTP endpoint: from the environment or a file, never the command line.

A command line is visible to every user of the machine (``ps``) and lands in shell
history, so tracemark takes no secret as an argument. Sources are described by name
only (``env:VAR``, ``file:PATH``) wherever they are reported or logged.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

from ..errors import TracemarkError

__all__ = ["AuthHeaders", "load_auth_headers"]


class AuthHeaders(dict):
    """HTTP headers holding secrets; their repr names the source, never the values."""

    source: str | None = None

    def __repr__(self) -> str:
        return f"AuthHeaders({sorted(self)} from {self.source})"

    __str__ = __repr__


def load_auth_headers(env: str | None = None, file: str | os.PathLike | None = None) -> AuthHeaders:
    """Headers from ``$env`` (an Authorization value) and/or ``file`` (``Name: value`` lines).

    A value without a scheme (``abc123`` rather than ``Bearer abc123``) is sent as a
    bearer token. Blank lines and ``#`` comments in the file are ignored. A file that
    other users can read draws a warning, as ssh does for keys.
    """
    headers = AuthHeaders()
    sources = []
    if env is not None:
        value = os.environ.get(env)
        if value is None or not value.strip():
            raise TracemarkError(f"environment variable {env} (--auth-env) is not set or empty")
        value = value.strip()
        headers["Authorization"] = value if " " in value else f"Bearer {value}"
        sources.append(f"env:{env}")
    if file is not None:
        path = Path(file)
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TracemarkError(f"cannot read the auth file {path}: {exc.strerror}") from None
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            warnings.warn(
                f"auth file {path} is readable by other users; chmod 600 it", stacklevel=2
            )
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, value = line.partition(":")
            if not sep or not name.strip() or not value.strip() or " " in name.strip():
                # Never echo the line: it may hold the secret.
                raise TracemarkError(
                    f"auth file {path}, line {number}: expected 'Header-Name: value'"
                )
            headers[name.strip()] = value.strip()
        sources.append(f"file:{path}")
    headers.source = "+".join(sources) or None
    return headers
