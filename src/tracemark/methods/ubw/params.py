"""A UBW key's parameters: the watermark, its trigger and what it changed (spec §3)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

UbwVariant = Literal["ubw-p", "ubw-c", "badnets", "blended"]
_DEFAULT_TRIGGER = {"ubw-p": "corner", "ubw-c": "patch", "badnets": "corner", "blended": "blended"}
# Fields added after keys were published, with the values that mean "as before": a key
# holds them only when it differs, so every earlier key keeps its content and commitment.
ADDED_LATER = {"surrogates": 1, "restarts": 1}


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
    surrogates: int = Field(1, ge=1, description="UBW-C ensemble of surrogates, each its own seed")
    restarts: int = Field(
        1, ge=1, description="UBW-C matching runs from random starts; the best is kept"
    )
    num_classes: int | None = Field(None, ge=2)
    image_shape: tuple[int, int, int] | None = None
    poisoned: list[int] = Field(
        default_factory=list,
        description="secret watermarked indices",
        json_schema_extra={"secret": True},
    )
    release_sha256: str | None = Field(None, description="SHA-256 of the released pixels")
    stealth: dict[str, float | int | None] | None = Field(
        None, description="PSNR/SSIM of the watermarked share against the originals"
    )

    @model_serializer(mode="wrap")
    def _omit_added_defaults(self, handler):
        data = handler(self)
        for name, default in ADDED_LATER.items():
            if data.get(name) == default:
                del data[name]
        return data

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
