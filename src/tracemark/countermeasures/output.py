"""Output-level countermeasures: the deployment reveals less, or less exactly.

Each wraps the oracle an audit reaches. Noise is drawn per image (seeded by the image's
hash), so asking again gives the same answer and cannot average it away. Top-K and
label-only are also access modes of every experiment; as countermeasures they apply
before the access mode, as a deployment that never reveals more would.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from .base import Countermeasure, Stage


class NoCountermeasure(Countermeasure):
    """The trainer does nothing: the baseline every countermeasure is compared with."""

    name: Literal["none"] = "none"
    sigma: float = Field(0.0, ge=0, le=0)  # kept so old specs' {name, sigma = 0} still parse
    stage: ClassVar[Stage] = "none"

    @property
    def label(self) -> str:
        return "none"


class OutputNoise(Countermeasure):
    """N(0, sigma^2) on every probability answered (clipped, rows renormalised)."""

    name: Literal["output-noise"]
    sigma: float = Field(0.0, ge=0, le=1_000)
    stage: ClassVar[Stage] = "output"
    seed_purpose: ClassVar[str] = "evaluate/output-noise"  # as before 0.4.0: same rows

    def wrap(self, oracle, seed: str):
        from ..oracle import ImageSeededNoise

        return ImageSeededNoise(oracle, self.sigma, seed)


class Rounding(Countermeasure):
    """Probabilities rounded to ``decimals`` places, as many APIs print them."""

    name: Literal["rounding"]
    decimals: int = Field(2, ge=0, le=12)
    stage: ClassVar[Stage] = "output"

    def wrap(self, oracle, seed: str):
        from ..oracle.restrict import MapProbabilities

        return MapProbabilities(oracle, lambda p: np.round(p, self.decimals), self.label)


class Temperature(Countermeasure):
    """Probabilities softened (t > 1) or sharpened (t < 1): softmax(log p / t)."""

    name: Literal["temperature"]
    t: float = Field(2.0, gt=0, le=1_000)
    stage: ClassVar[Stage] = "output"

    def wrap(self, oracle, seed: str):
        from ..oracle.base import softmax
        from ..oracle.restrict import MapProbabilities

        def soften(p: np.ndarray) -> np.ndarray:
            with np.errstate(divide="ignore"):
                return softmax(np.log(p) / self.t)

        return MapProbabilities(oracle, soften, self.label)


class TopKOnly(Countermeasure):
    """Only the k best classes and their scores, whatever the auditor asks for."""

    name: Literal["topk-only"]
    k: int = Field(3, ge=1, le=1_000)
    stage: ClassVar[Stage] = "output"

    def wrap(self, oracle, seed: str):
        return oracle  # the restriction is an access mode: see reveal()

    def reveal(self, access: str, top_k: int) -> tuple[str, int]:
        return ("label", top_k) if access == "label" else ("topk", min(self.k, top_k))


class LabelOnlyAnswers(Countermeasure):
    """Only the predicted label, whatever the auditor asks for."""

    name: Literal["label-only"]
    stage: ClassVar[Stage] = "output"

    def wrap(self, oracle, seed: str):
        return oracle

    def reveal(self, access: str, top_k: int) -> tuple[str, int]:
        return "label", top_k
