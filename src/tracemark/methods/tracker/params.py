"""A tracker key's parameters: how its marks are drawn (methods spec §1)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrackerParams(BaseModel):
    """MembershipTracker marking parameters (see the README and methods spec §1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eps: float = Field(8 / 255, gt=0, le=0.25, description="Perlin noise amplitude (L-inf)")
    r: float = Field(0.7, gt=0, lt=1, description="blend weight on the original image")
    pattern: Literal["stripes", "natural"] = "stripes"
    bands: int = Field(16, ge=1, le=256, description="number of horizontal colour bands")
    compress: bool = Field(True, description="compress colours as c/8 + 128 (authors' default)")
