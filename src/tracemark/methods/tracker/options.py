"""The tracker audit's settings: the one place their defaults live."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import TracemarkError
from ...options import option
from ..base import AuditOptions


@dataclass(frozen=True)
class TrackerOptions(AuditOptions):
    """How many pseudo-users the owner's score is ranked among (K + N·K queries)."""

    n_pseudo: int = option(
        1000, "tracker: pseudo-users in the null distribution.", min=1, max=1_000_000
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_pseudo < 1:
            raise TracemarkError("n_pseudo must be positive")
        if self.access == "topk":
            raise TracemarkError("the tracker audit takes access auto, probabilities or label")
