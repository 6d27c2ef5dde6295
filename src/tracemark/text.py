"""Text from outside (servers, files, names) made safe to print.

A server's error body or a file name may hold terminal escape sequences (colours, a
new window title, a cleared screen) or echo a credential back. Everything tracemark
prints from outside goes through :func:`printable`, and server text also through
:func:`redact`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

__all__ = ["printable", "redact"]

REDACTED = "<redacted>"


def printable(text: str) -> str:
    """``text`` with control characters (ESC, CR, BEL, C1 codes, ...) shown as escapes.

    Newlines and tabs are kept; every other character of Unicode category C* (control,
    format such as bidirectional overrides, unassigned, surrogates) becomes ``\\xNN`` or
    ``\\uNNNN``, so nothing can drive the terminal.
    """
    out = []
    for ch in text:
        if ch in "\n\t" or not unicodedata.category(ch).startswith("C"):
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret (and of its last word, the bare
    token of ``Bearer TOKEN``) replaced by ``<redacted>``; secrets under 4 characters
    are not searched for (they would match ordinary words)."""
    needles = set()
    for secret in secrets:
        secret = secret.strip()
        for piece in (secret, secret.split()[-1] if secret.split() else ""):
            if len(piece) >= 4:
                needles.add(piece)
    for needle in sorted(needles, key=len, reverse=True):
        text = re.sub(re.escape(needle), REDACTED, text, flags=re.IGNORECASE)
    return text
