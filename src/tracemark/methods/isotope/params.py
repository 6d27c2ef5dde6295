"""An isotope key's parameters: its mark, how visible, on what share (methods spec §2)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class IsotopeParams(BaseModel):
    """Data Isotopes marking parameters (see the README and methods spec §2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mark: Literal["natural", "pixel-square", "random-pixels", "image"] = Field(
        "natural", description="bank photo crop, corner pixel square, white pixels, or your file"
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
