"""The owner's secret key: method, parameters and a seed from which every mark is regenerated.

Keys are JSON files validated by pydantic and written with 0600 permissions. A key's
*commitment* is a SHA-256 fingerprint the owner can publish or timestamp before releasing
data; it binds the method, parameters and seed without revealing the seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import TracemarkError
from .fsutil import atomic_write_text, read_json
from .methods import registry
from .rng import derive

SEED_BYTES = 32  # 256-bit seeds; at least 128 bits are required when loading.
MAX_KEY_BYTES = 16 << 20  # the largest key is an isotope key with its mark image embedded
_COMMIT_DOMAIN = b"tracemark/commitment/v1\x00"


_LONG_PARAM = 120  # characters: longer values (an embedded mark image) are summarised


def secret_fields(model: type[BaseModel]) -> set[str]:
    """Parameters a method marks secret (``json_schema_extra={"secret": True}``)."""
    return {
        name
        for name, f in model.model_fields.items()
        if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("secret")
    }


def summarise_params(params: dict[str, Any], secret: set[str] = frozenset()) -> dict[str, Any]:
    """Parameters for display: long values (an embedded image) replaced by their length,
    ``secret`` ones (UBW's poisoned indices) by their count."""
    shown: dict[str, Any] = {}
    for k, v in params.items():
        if k in secret and isinstance(v, list):
            shown[k] = f"<{len(v)} secret indices>"
        elif isinstance(v, str) and len(v) > _LONG_PARAM:
            shown[k] = f"<{len(v)} characters>"
        else:
            shown[k] = v
    return shown


def _format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"invalid {where}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
    return "\n".join(lines)


class Key(BaseModel):
    """A tracemark key. ``params`` is validated against the method's parameter model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["tracemark-key"] = "tracemark-key"
    # 2 since 0.7.0: a UBW-C key's patch pattern is drawn from its seed (1: the paper's
    # public pattern, kept for keys made before, so their releases still verify).
    version: Literal[1, 2] = 2
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    seed: str = Field(repr=False, description="hex-encoded secret seed, at least 128 bits")
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())

    @field_validator("seed")
    @classmethod
    def _check_seed(cls, v: str) -> str:
        v = v.lower()
        try:
            raw = bytes.fromhex(v)
        except ValueError as exc:
            raise ValueError("seed must be hexadecimal") from exc
        if len(raw) < 16:
            raise ValueError(f"seed has {8 * len(raw)} bits; at least 128 are required")
        return v

    @model_validator(mode="after")
    def _check_params(self) -> Key:
        try:
            model = registry.get(self.method).params
        except TracemarkError as err:
            raise ValueError(str(err)) from None
        # Normalise: fill defaults so the stored file says exactly what was used.
        try:
            normalised = model.model_validate(self.params).model_dump()
        except ValidationError as err:
            problems = "; ".join(
                f"params.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
            )
            raise ValueError(problems) from None
        object.__setattr__(self, "params", normalised)
        return self

    @classmethod
    def generate(cls, method: str, **params: Any) -> Key:
        """A fresh key with a 256-bit seed from the OS's secure random source."""
        try:
            return cls(method=method, params=params, seed=secrets.token_hex(SEED_BYTES))
        except ValidationError as err:
            raise TracemarkError(_format_validation_error(err, f"{method} parameters")) from None

    def typed_params(self) -> Any:
        """The parameters as their method's pydantic model."""
        return registry.get(self.method).params.model_validate(self.params)

    def rng(self, purpose: str, *ids: int | str | bytes):
        """A generator derived from this key's seed for one named purpose."""
        return derive(self.seed, purpose, *ids)

    def commitment(self) -> str:
        """SHA-256 over the canonical key content. Publishing it does not reveal the seed."""
        body = {
            "format": self.format,
            "version": self.version,
            "method": self.method,
            "params": self.params,
            "seed": self.seed,
        }
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(_COMMIT_DOMAIN + canonical).hexdigest()

    def verify_commitment(self, commitment: str) -> bool:
        """True when ``commitment`` was computed from this exact key."""
        return secrets.compare_digest(self.commitment(), commitment.strip().lower())

    def public_info(self) -> dict[str, Any]:
        """Everything about the key that is safe to show: no seed."""
        return {
            "method": self.method,
            "params": summarise_params(self.params, secret_fields(type(self.typed_params()))),
            "created": self.created,
            "commitment": self.commitment(),
        }

    def save(self, path: str | os.PathLike, force: bool = False) -> None:
        """Write the key as JSON, mode 0600, atomically; never overwrite unless forced."""
        text = json.dumps(self.model_dump(), indent=2, sort_keys=True) + "\n"
        atomic_write_text(path, text, mode=0o600, force=force)


def load_key(path: str | os.PathLike, method: str | None = None) -> Key:
    """Read and validate a key file; optionally insist on a method."""
    path = Path(path)
    data = read_json(path, "key file", max_bytes=MAX_KEY_BYTES)
    try:
        key = Key.model_validate(data)
    except ValidationError as err:
        raise TracemarkError(_format_validation_error(err, f"key file {path}")) from None
    if method is not None and key.method != method:
        raise TracemarkError(f"key file {path} is a {key.method!r} key, not a {method!r} key")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        import warnings

        warnings.warn(
            f"key file {path} is readable by others (mode {mode:o}); run: chmod 600 {path}",
            stacklevel=2,
        )
    return key
