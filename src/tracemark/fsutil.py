"""Where and how tracemark writes files.

Every file tracemark writes passes :func:`check_output` first: never inside a folder of
originals, never through a symbolic link, never out of the output folder it belongs in,
never over anything but a regular file (a device node or a FIFO is never replaced, even
with ``force``), never over an existing file without ``force``. Writes are atomic, so an
interrupted run never leaves a half-written file behind; appends (:func:`open_append`)
pass the same guard and go only to a file the caller recognises as its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import TracemarkError


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def check_output(
    path: str | os.PathLike,
    *,
    force: bool = False,
    protect: Iterable[str | os.PathLike] = (),
    within: str | os.PathLike | None = None,
    what: str = "output",
) -> Path:
    """Refuse a write that could lose data; return ``path``.

    ``protect`` are folders (or files) of originals: nothing is written inside them,
    whatever the links on the way say (paths are compared once resolved). ``within`` is
    the folder the file belongs in: a symbolic link inside it that leads elsewhere is
    refused. ``path`` itself must not be a link, and an existing file is only replaced
    with ``force``.
    """
    path = Path(path)
    if path.is_symlink():
        raise TracemarkError(
            f"{what} {path} is a symbolic link; tracemark never writes through a link "
            "(remove it, or choose another path)"
        )
    target = path.parent.resolve() / path.name
    if within is not None:
        root = Path(within).resolve()
        if not _inside(target, root):
            raise TracemarkError(
                f"{what} {path} leads outside {within} through a symbolic link; nothing was "
                "written. Remove the link, or choose a new folder"
            )
    for original in protect:
        folder = Path(original).resolve()
        if target == folder:
            raise TracemarkError(
                f"{what} {path} is {original}, one of this command's inputs; tracemark never "
                "writes over its inputs. Choose another path"
            )
        if _inside(target, folder):
            raise TracemarkError(
                f"{what} {path} is inside {original}, one of this command's inputs; tracemark "
                "never writes among its inputs. Choose a path outside it"
            )
    if path.is_dir():
        raise TracemarkError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise TracemarkError(
            f"{what} {path} is not a regular file ({_kind(path)}); tracemark never writes "
            "over one, even with --force. Choose another path"
        )
    if not force and path.exists():
        raise TracemarkError(f"{what} {path} already exists; pass --force to overwrite it")
    return path


def _kind(path: Path) -> str:
    """What a non-regular file is, in words."""
    mode = path.stat().st_mode
    for test, name in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def open_append(
    path: str | os.PathLike,
    recognise: Callable[[Path], bool],
    *,
    protect: Iterable[str | os.PathLike] = (),
    what: str = "log",
) -> IO[str]:
    """Open ``path`` for appending text, through the same guard as every write.

    A new or empty file is fine; an existing one is appended to only when ``recognise``
    says it is the caller's own kind of file (a log it wrote before), so an append
    never grows a photo, a key or another program's file.
    """
    path = check_output(path, force=True, protect=protect, what=what)
    if path.exists() and path.stat().st_size > 0 and not recognise(path):
        raise TracemarkError(
            f"{what} {path} exists and is not one tracemark wrote; tracemark appends only to "
            "its own logs. Choose a new file name"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return open(path, "a", encoding="utf-8")
    except OSError as exc:
        raise TracemarkError(f"cannot open {what} {path}: {describe_os_error(exc)}") from None


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: int = 0o644,
    force: bool = True,
    protect: Iterable[str | os.PathLike] = (),
    within: str | os.PathLike | None = None,
) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path``; on success fsync and rename it into place.

    ``mode`` is applied before any byte is written, so a secret never exists with
    wider permissions. The path is checked by :func:`check_output` first (with
    ``force=False`` an existing ``path`` is an error).
    """
    path = check_output(path, force=force, protect=protect, within=within)
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
    path: str | os.PathLike,
    data: bytes,
    mode: int = 0o644,
    force: bool = True,
    protect: Iterable[str | os.PathLike] = (),
    within: str | os.PathLike | None = None,
) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    try:
        with atomic_open(path, mode=mode, force=force, protect=protect, within=within) as fh:
            fh.write(data)
    except TracemarkError:
        raise
    except OSError as exc:
        raise TracemarkError(f"cannot write {path}: {describe_os_error(exc)}") from None


def atomic_write_text(
    path: str | os.PathLike,
    text: str,
    mode: int = 0o644,
    force: bool = True,
    protect: Iterable[str | os.PathLike] = (),
    within: str | os.PathLike | None = None,
) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    data = text.encode("utf-8")
    atomic_write_bytes(path, data, mode=mode, force=force, protect=protect, within=within)


def describe_os_error(exc: OSError) -> str:
    """What went wrong, and what to do about it, in words (not only errno)."""
    hints = {
        errno.ENOSPC: "the disk is full; free some space and run the command again",
        errno.EDQUOT: "the disk quota is exhausted; free some space and run again",
        errno.EACCES: "permission denied; check the folder's permissions",
        errno.EPERM: "operation not permitted; check the folder's permissions",
        errno.EROFS: "the file system is read-only; choose another folder",
        errno.ENAMETOOLONG: "the file name is too long; choose a shorter one",
    }
    return hints.get(exc.errno, exc.strerror or str(exc))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(
    path: str | os.PathLike, what: str, hint: str = "", max_bytes: int | None = None
) -> Any:
    """Parse a JSON file, turning every failure into a TracemarkError naming ``what``.

    ``max_bytes`` caps what is read: a huge file or a device node (``/dev/zero``) is a
    clear error, not a MemoryError.
    """
    path = Path(path)
    try:
        if not path.is_file() and path.exists():
            raise TracemarkError(f"{what} {path} is not a regular file ({_kind(path)})")
        with open(path, "rb") as fh:
            data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
        if max_bytes is not None and len(data) > max_bytes:
            raise TracemarkError(
                f"{what} {path} is larger than {max_bytes:,} bytes; it is not a {what}{hint}"
            )
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise TracemarkError(f"{what} {path} does not exist{hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TracemarkError(f"cannot read {what} {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TracemarkError(f"{what} {path} is not valid JSON: {exc}{hint}") from None


def check_not_overlapping(src_root: Path | str, out_root: Path | str) -> None:
    """Refuse an output folder that is, holds, or lies inside the source folder."""
    src = Path(src_root).resolve()
    out = Path(out_root).resolve()
    if out == src:
        raise TracemarkError(
            f"the output folder {out_root} is the source folder; choose a new, separate folder "
            "so the originals are never overwritten"
        )
    if out.is_relative_to(src):
        raise TracemarkError(
            f"the output folder {out_root} is inside the source folder {src_root}; choose a "
            "folder outside it (otherwise the copies would be read as originals next time)"
        )
    if src.is_relative_to(out):
        raise TracemarkError(
            f"the output folder {out_root} contains the source folder {src_root}; choose a "
            "separate folder"
        )
