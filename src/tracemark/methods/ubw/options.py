"""The UBW verification's settings: the one place their defaults live."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...errors import TracemarkError
from ...options import option
from ..base import AuditOptions


@dataclass(frozen=True)
class UbwOptions(AuditOptions):
    """The margin test's sample and margin, and the negative controls.

    ``m`` correctly classified test images are queried with and without the trigger
    (2m queries; 3m with label-only access, for the control trigger). ``null_triggers``
    = J adds a rank calibration against J never-published triggers (J·m more queries).
    """

    m: int = option(100, "ubw: correctly classified test images to use.", min=2, max=100_000)
    tau: float = option(0.25, "ubw: margin of the t-test.", min=0, max=0.99)
    trigger: Literal["key", "independent"] = option(
        "key", "ubw: 'independent' runs the negative control with an unpublished trigger."
    )
    null_triggers: int = option(
        0,
        "ubw: also rank your trigger among up to this many never-published ones, read "
        "sequentially (e.g. 1000); guards against models that react to any patch. Costs m "
        "queries each. Blended and UBW-C (patch) triggers are always ranked (up to 10/alpha "
        "unless given).",
        min=0,
        max=1_000_000,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.m < 2:
            raise TracemarkError(f"verification needs at least 2 images, got m = {self.m}")
        if not 0 <= self.tau < 1:
            raise TracemarkError(f"tau must be in [0, 1), got {self.tau}")
        if self.trigger not in ("key", "independent"):
            raise TracemarkError(f"unknown trigger {self.trigger!r}; use 'key' or 'independent'")
        if self.null_triggers < 0:
            raise TracemarkError(f"null_triggers must be non-negative, got {self.null_triggers}")
