"""The isotope audit's settings: the one place their defaults live."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...errors import TracemarkError
from ...options import option
from ...stats import sequential_cap
from ..base import AuditOptions

Procedure = Literal["calibrated", "paper", "physical"]


@dataclass(frozen=True)
class IsotopeOptions(AuditOptions):
    """Which test, and its sizes.

    "calibrated" (the default) ranks the mark's shift among fresh bank marks on
    ``aux_per_mark`` aux images each: exact, (externals drawn + 2) x aux queries. The
    externals are drawn one at a time until ``stop_after`` of them shift the class at
    least as much as the key's mark (Besag and Clifford's sequential test), or until
    ``externals`` are drawn (default 10/alpha); ``fixed`` = N ranks among exactly N. "paper"
    is the published Q-round t-test vote (``rounds``, ``round_size``, ``lam``,
    ``delta``), kept for reproduction: it is not calibrated. "physical" compares photos
    with and without a physical object (Welch's t-test).
    """

    procedure: Procedure = option(
        "calibrated", "isotope: calibrated (default), paper (not calibrated), physical."
    )
    externals: int | None = option(
        None,
        "isotope: the most never-published bank marks drawn (default: 10/alpha, 1,000 at "
        "alpha 0.01).",
        min=1,
        max=1_000_000,
    )
    stop_after: int = option(
        10,
        "isotope: the sequential test stops once this many external marks shift your class "
        "at least as much as yours (Besag-Clifford h).",
        min=1,
        max=10_000,
    )
    fixed: int | None = option(
        None,
        "isotope: rank among exactly this many external marks instead (the fixed-size test).",
        min=1,
        max=1_000_000,
    )
    aux_per_mark: int = option(
        100, "isotope: aux images each mark is blended into.", min=2, max=100_000
    )
    rounds: int = option(5, "isotope paper procedure: Q.", min=1, max=10_000)
    round_size: int = option(250, "isotope paper procedure: n.", min=2, max=100_000)
    lam: float = option(0.1, "isotope paper procedure: lambda.")
    delta: float = option(0.6, "isotope paper procedure: delta.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.procedure not in ("calibrated", "paper", "physical"):
            raise TracemarkError(
                f"unknown procedure {self.procedure!r}; use 'calibrated', 'paper' or 'physical'"
            )
        if any(v is not None and v < 1 for v in (self.externals, self.fixed)):
            raise TracemarkError("externals and fixed must be positive")
        if self.aux_per_mark < 1 or self.stop_after < 1:
            raise TracemarkError("aux_per_mark and stop_after must be positive")
        if self.fixed is not None and self.externals is not None:
            raise TracemarkError(
                "give either externals (the sequential test's cap) or fixed (the fixed-size "
                "test's external marks), not both"
            )
        if (
            self.rounds < 1
            or self.round_size < 2
            or not 0 < self.lam < 1
            or not 0 <= self.delta < 1
        ):
            raise TracemarkError(
                "need rounds >= 1, round size >= 2, 0 < lambda < 1, 0 <= delta < 1"
            )

    @property
    def cap(self) -> int:
        """The most external marks the calibrated audit draws."""
        return self.fixed or self.externals or sequential_cap(self.alpha)

    @property
    def sequential(self) -> bool:
        return self.fixed is None
