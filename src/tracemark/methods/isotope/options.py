"""The isotope audit's settings: the one place their defaults live."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...errors import TracemarkError
from ...options import option
from ..base import SequentialOptions

Procedure = Literal["calibrated", "paper", "physical"]


@dataclass(frozen=True)
class IsotopeOptions(SequentialOptions):
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
    cap_option = "externals"
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
        if self.aux_per_mark < 1:
            raise TracemarkError("aux_per_mark must be positive")
        if (
            self.rounds < 1
            or self.round_size < 2
            or not 0 < self.lam < 1
            or not 0 <= self.delta < 1
        ):
            raise TracemarkError(
                "need rounds >= 1, round size >= 2, 0 < lambda < 1, 0 <= delta < 1"
            )
