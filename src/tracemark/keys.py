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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import TracemarkError
from .fsutil import atomic_write_text, read_json
from .rng import derive

SEED_BYTES = 32  # 256-bit seeds; at least 128 bits are required when loading.
_COMMIT_DOMAIN = b"tracemark/commitment/v1\x00"


class TrackerParams(BaseModel):
    """MembershipTracker marking parameters (see the README and methods spec §1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eps: float = Field(8 / 255, gt=0, le=0.25, description="Perlin noise amplitude (L-inf)")
    r: float = Field(0.7, gt=0, lt=1, description="blend weight on the original image")
    pattern: Literal["stripes", "natural"] = "stripes"
    bands: int = Field(16, ge=1, le=256, description="number of horizontal colour bands")
    compress: bool = Field(True, description="compress colours as c/8 + 128 (authors' default)")


class IsotopeParams(BaseModel):
    """Data Isotopes marking parameters (see the README and methods spec §2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mark: Literal["natural", "pixel-square", "random-pixels", "image"] = Field(
        "natural", description="bank photo crop, corner checkerboard, white pixels, or your file"
    )
    visibility: float = Field(0.4, gt=0, le=1, description="alpha: the mark's weight in the blend")
    fraction: float = Field(0.1, gt=0, le=1, description="p: share of the images that are marked")
    mask: tuple[float, float, float, float] | None = Field(
        None, description="box (top, left, height, width) as fractions; default: whole image"
    )
    tiles: int = Field(2, ge=1, le=4, description="natural marks: a tiles x tiles crop mosaic")
    square_size: float = Field(0.25, gt=0, le=1, description="pixel-square side (of shorter side)")
    pixel_density: float = Field(0.05, gt=0, lt=1, description="share of random white pixels")
    image_png: str | None = Field(None, description="the user's mark image, base64 PNG")
    image_sha256: str | None = Field(None, description="SHA-256 of the user's mark file")

    @field_validator("mask")
    @classmethod
    def _check_mask(cls, v: tuple[float, float, float, float] | None):
        if v is None:
            return v
        top, left, h, w = v
        if min(v) < 0 or h <= 0 or w <= 0 or top + h > 1 + 1e-9 or left + w > 1 + 1e-9:
            raise ValueError("mask must be (top, left, height, width) fractions inside the image")
        return v

    @model_validator(mode="after")
    def _check_image(self) -> IsotopeParams:
        has = self.image_png is not None, self.image_sha256 is not None
        if self.mark == "image" and not all(has):
            raise ValueError("mark=image needs the mark file (keygen --mark-file FILE)")
        if self.mark != "image" and any(has):
            raise ValueError("image_png/image_sha256 are only used with mark=image")
        if self.image_png is not None:
            _check_embedded_png(self.image_png)
        return self


MAX_MARK_PIXELS = 1024 * 1024  # keygen --mark-file stores at most 256 x 256


def _check_embedded_png(text: str) -> None:
    """The key's mark image must be base64 of a small still PNG (checked from its header:
    a key is input too, and a bomb must not be decoded)."""
    import base64
    import binascii
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("image_png is not valid base64; the key is damaged") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h), frames = im.format, im.size, getattr(im, "n_frames", 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise ValueError("image_png is not a readable PNG; the key is damaged") from None
    if fmt != "PNG" or frames != 1 or w * h > MAX_MARK_PIXELS:
        raise ValueError(
            f"image_png must be a still PNG of at most {MAX_MARK_PIXELS} pixels, got {fmt} "
            f"{w}x{h} with {frames} frame(s)"
        )


UbwVariant = Literal["ubw-p", "ubw-c", "badnets", "blended"]
_DEFAULT_TRIGGER = {"ubw-p": "corner", "ubw-c": "patch", "badnets": "corner", "blended": "blended"}


class UbwParams(BaseModel):
    """Dataset watermark parameters (UBW-P, UBW-C and the targeted baselines; spec §3).

    ``poisoned`` (the watermarked sample indices) and ``num_classes``/``image_shape`` are
    filled in by ``tracemark watermark``; the indices are secret and never displayed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: UbwVariant = "ubw-p"
    trigger: Literal["corner", "blended", "patch"] | None = Field(
        None, description="corner 3x3 pattern, blended full image, or randomly placed patch"
    )
    gamma: float = Field(0.1, gt=0, lt=1, description="poison rate: share of watermarked samples")
    target: int = Field(0, ge=0, description="target class of the targeted baselines")
    alpha: float = Field(0.2, gt=0, le=1, description="blend weight of a blended trigger")
    patch_size: int | None = Field(None, ge=1, description="UBW-C patch side (default H/4)")
    epsilon: float = Field(16 / 255, gt=0, le=1, description="UBW-C L-inf perturbation bound")
    beta: float = Field(2.0, ge=0, description="UBW-C entropy weight in the target gradient")
    iterations: int = Field(250, ge=1, description="UBW-C gradient-matching iterations")
    retrain_every: int = Field(50, ge=1, description="UBW-C surrogate retraining period")
    lr: float = Field(0.025, gt=0, description="UBW-C sign-Adam step size")
    sources: int = Field(1000, ge=1, description="UBW-C triggered training images for the target")
    surrogate: str = Field("small-cnn", description="UBW-C surrogate architecture")
    surrogate_width: int = Field(32, ge=1, description="UBW-C surrogate width (small-cnn only)")
    surrogate_epochs: int = Field(8, ge=1, description="UBW-C surrogate training epochs")
    num_classes: int | None = Field(None, ge=2)
    image_shape: tuple[int, int, int] | None = None
    poisoned: list[int] = Field(default_factory=list, description="secret watermarked indices")
    release_sha256: str | None = Field(None, description="SHA-256 of the released pixels")

    @model_validator(mode="after")
    def _check(self) -> UbwParams:
        if self.trigger is None:
            object.__setattr__(self, "trigger", _DEFAULT_TRIGGER[self.variant])
        if self.variant == "ubw-c" and self.trigger != "patch":
            raise ValueError("ubw-c uses a randomly placed patch trigger (trigger=patch)")
        if self.variant != "ubw-c" and self.trigger == "patch":
            raise ValueError("trigger=patch is the UBW-C trigger; use corner or blended")
        if self.num_classes is not None and self.target >= self.num_classes:
            raise ValueError(f"target {self.target} is not a class (0..{self.num_classes - 1})")
        if len(set(self.poisoned)) != len(self.poisoned) or any(i < 0 for i in self.poisoned):
            raise ValueError("poisoned must list distinct non-negative indices")
        return self

    @property
    def targeted(self) -> bool:
        """BadNets and Blended send triggered inputs to one target class."""
        return self.variant in ("badnets", "blended")


PARAMS_BY_METHOD: dict[str, type[BaseModel]] = {
    "tracker": TrackerParams,
    "isotope": IsotopeParams,
    "ubw": UbwParams,
}
_SECRET_PARAMS = {"poisoned"}
_LONG_PARAM = 120  # characters: longer values (an embedded mark image) are summarised


def summarise_params(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters for display: long values (an embedded image) replaced by their length,
    secret ones (UBW's poisoned indices) by their count."""
    shown: dict[str, Any] = {}
    for k, v in params.items():
        if k in _SECRET_PARAMS and isinstance(v, list):
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
    version: Literal[1] = 1
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    seed: str = Field(repr=False, description="hex-encoded secret seed, at least 128 bits")
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

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
        model = PARAMS_BY_METHOD.get(self.method)
        if model is None:
            known = ", ".join(sorted(PARAMS_BY_METHOD))
            raise ValueError(f"unknown method {self.method!r}; known methods: {known}")
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
        return PARAMS_BY_METHOD[self.method].model_validate(self.params)

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
            "params": summarise_params(self.params),
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
    data = read_json(path, "key file")
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
