"""Atomic file writes: an interrupted run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import TracemarkError


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: int = 0o644, force: bool = True
) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path``; on success fsync and rename it into place.

    ``mode`` is applied before any byte is written, so a secret never exists with
    wider permissions. With ``force=False`` an existing ``path`` is an error.
    """
    path = Path(path)
    if not force and path.exists():
        raise TracemarkError(f"{path} already exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if not force and path.exists():
            raise TracemarkError(f"{path} appeared while writing; pass --force to overwrite it")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, mode: int = 0o644, force: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, mode=mode, force=force) as fh:
        fh.write(data)


def atomic_write_text(
    path: str | os.PathLike, text: str, mode: int = 0o644, force: bool = True
) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode, force=force)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: str | os.PathLike, what: str, hint: str = "") -> Any:
    """Parse a JSON file, turning every failure into a TracemarkError naming ``what``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TracemarkError(f"{what} {path} does not exist{hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TracemarkError(f"cannot read {what} {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TracemarkError(f"{what} {path} is not valid JSON: {exc}{hint}") from None
