"""Deterministic randomness: every random choice derives from a key seed and a named purpose.

``derive(seed, "tracker/noise", "cat.png")`` always returns a generator in the same
state, on any machine, so marks can be regenerated from the key alone. Global random
state is never used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

_DOMAIN = b"tracemark/rng/v1"


def _tagged(tag: bytes, raw: bytes) -> bytes:
    # Length-prefixed so that ("ab", "c") and ("a", "bc") never collide.
    return tag + len(raw).to_bytes(8, "big") + raw


def _encode_part(part: object) -> bytes:
    if isinstance(part, bool) or not isinstance(part, (int, str, bytes)):
        raise TypeError(f"rng identifiers must be int, str or bytes, not {type(part).__name__}")
    if isinstance(part, int):
        return _tagged(b"i", str(part).encode())
    if isinstance(part, str):
        return _tagged(b"s", part.encode("utf-8"))
    return _tagged(b"b", part)


def derive_bytes(seed: str, purpose: str, *ids: int | str | bytes) -> bytes:
    """SHA-256 digest of (seed, purpose, ids): the root of every derived generator."""
    h = hashlib.sha256(_DOMAIN)
    h.update(_encode_part(bytes.fromhex(seed)))
    h.update(_encode_part(purpose))
    for part in ids:
        h.update(_encode_part(part))
    return h.digest()


def derive(seed: str, purpose: str, *ids: int | str | bytes) -> np.random.Generator:
    """A numpy Generator determined only by the hex ``seed``, the ``purpose`` and ``ids``."""
    entropy = int.from_bytes(derive_bytes(seed, purpose, *ids), "big")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def derive_int(seed: str, purpose: str, *ids: int | str | bytes, bits: int = 63) -> int:
    """A non-negative integer seed (e.g. for ``torch.Generator``) derived like :func:`derive`."""
    return int.from_bytes(derive_bytes(seed, purpose, *ids), "big") >> (256 - bits)


# splitmix64's increment, multipliers and shifts (the mixer's three, then the one to 53
# bits); public: compiled loops hash with the same ones
SPLITMIX_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
SPLITMIX_M1 = np.uint64(0xBF58476D1CE4E5B9)
SPLITMIX_M2 = np.uint64(0x94D049BB133111EB)
SPLITMIX_SHIFTS = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


def derive_keys(seed: str, purpose: str, ids: Sequence[int | str | bytes]) -> np.ndarray:
    """One uint64 stream key per id, from SHA-256 of (seed, purpose, id).

    Used with :func:`hash_uniform` where creating a Generator per image would cost
    more than the work itself.
    """
    prefix = hashlib.sha256(_DOMAIN)  # (seed, purpose) hashed once, then copied per id
    prefix.update(_encode_part(bytes.fromhex(seed)))
    prefix.update(_encode_part(purpose))
    copy, first_bytes = prefix.copy, bytearray()
    for i in ids:
        h = copy()
        # ints (the common case) skip _encode_part's type checks, not its encoding
        h.update(_tagged(b"i", str(i).encode()) if type(i) is int else _encode_part(i))
        first_bytes += h.digest()[:8]  # read as big-endian uint64s at once, below
    return np.frombuffer(bytes(first_bytes), dtype=">u8").astype(np.uint64)


def hash_uniform(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1): the ``counter``-th output of splitmix64 seeded with ``key``.

    A counter-based generator: pure integer arithmetic, vectorised, identical on every
    machine, and the value for (key, counter) does not depend on what else is drawn.
    """
    counters = np.asarray(counters, dtype=np.uint64)
    z = np.asarray(keys, dtype=np.uint64) + (counters + np.uint64(1)) * SPLITMIX_GOLDEN
    a, b, c, to_53_bits = SPLITMIX_SHIFTS
    z = (z ^ (z >> a)) * SPLITMIX_M1
    z = (z ^ (z >> b)) * SPLITMIX_M2
    z = z ^ (z >> c)
    return (z >> to_53_bits).astype(np.float64) * (1.0 / (1 << 53))
