"""The tracker audit's settings: the one place their defaults live."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import TracemarkError
from ...options import option
from ..base import SequentialOptions
from .views import ViewSet, view_count


@dataclass(frozen=True)
class TrackerOptions(SequentialOptions):
    """How the owner's score is ranked among pseudo-users (K queries each): sequentially
    up to ``n_pseudo`` of them, or exactly ``fixed`` (see :class:`SequentialOptions`)."""

    n_pseudo: int | None = option(
        None,
        "tracker: the most pseudo-users drawn (default: 10/alpha, 1,000 at alpha 0.01).",
        min=1,
        max=1_000_000,
    )
    cap_option = "n_pseudo"
    views: ViewSet = option(
        "none",
        "tracker: also query each image as augmentation shows it, every set alike: none, "
        "flip (2 views), flip-shift2 (6: flip, 2-pixel shifts), flip-shift4 (10: and 4 "
        "pixels). Multiplies the queries.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        view_count(self.views)  # a known set of views
        if self.access == "topk":
            raise TracemarkError("the tracker audit takes access auto, probabilities or label")
