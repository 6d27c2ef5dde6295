"""The tracker audit's settings: the one place their defaults live."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import TracemarkError
from ...options import option
from ...stats import sequential_cap
from ..base import AuditOptions


@dataclass(frozen=True)
class TrackerOptions(AuditOptions):
    """How the owner's score is ranked among pseudo-users (K queries each).

    By default the test is sequential (Besag and Clifford): pseudo-users are drawn in
    batches until ``stop_after`` of them score at least as well as the owner (for a model
    that never saw the marks, a few dozen), or until ``n_pseudo`` are drawn (default
    10/alpha, so that p can fall ten times below alpha). ``fixed`` = N ranks the owner
    among exactly N pseudo-users instead: the fixed-size test of earlier versions.
    """

    n_pseudo: int | None = option(
        None,
        "tracker: the most pseudo-users drawn (default: 10/alpha, 1,000 at alpha 0.01).",
        min=1,
        max=1_000_000,
    )
    stop_after: int = option(
        10,
        "tracker: the sequential test stops once this many pseudo-users score at least as "
        "well as you (Besag-Clifford h).",
        min=1,
        max=10_000,
    )
    fixed: int | None = option(
        None,
        "tracker: rank among exactly this many pseudo-users instead (the fixed-size test).",
        min=1,
        max=1_000_000,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n_pseudo", "fixed"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise TracemarkError(f"{name} must be a positive integer, got {value!r}")
        if self.stop_after < 1:
            raise TracemarkError("stop_after must be positive")
        if self.fixed is not None and self.n_pseudo is not None:
            raise TracemarkError(
                "give either n_pseudo (the sequential test's cap) or fixed (the fixed-size "
                "test's pseudo-users), not both"
            )
        if self.access == "topk":
            raise TracemarkError("the tracker audit takes access auto, probabilities or label")

    @property
    def cap(self) -> int:
        """The most pseudo-users the audit draws."""
        return self.fixed or self.n_pseudo or sequential_cap(self.alpha)

    @property
    def sequential(self) -> bool:
        return self.fixed is None
