"""The answer of an audit, with the evidence needed to re-check it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Verdict(BaseModel):
    """Whether a model was trained on the owner's marked data, and why we think so.

    ``decision`` is ``p_value <= alpha``: under the null hypothesis ("not trained on my
    data") an audit decides True with probability at most ``alpha``. The one exception
    is the isotope paper procedure, kept for reproduction: ``alpha`` is its lambda, the
    decision is its round vote, and its ``test`` says it is not calibrated.
    """

    method: str
    decision: bool
    p_value: float = Field(ge=0, le=1)
    alpha: float = Field(gt=0, lt=1)
    label: int | None = None
    label_source: str | None = None
    effect: float
    effect_description: str
    queries: int
    access: str
    test: str
    key_commitment: str
    statistics: dict[str, Any] = Field(default_factory=dict)
    evidence: dict[str, Any] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        """A few lines for a person."""
        answer = (
            "TRAINED ON your marked data (evidence at your false-positive level)"
            if self.decision
            else "no evidence that it was trained on your marked data"
        )
        label = "" if self.label is None else f"label {self.label} ({self.label_source})\n"
        lines = [
            f"method  {self.method}",
            f"verdict {answer}",
            f"p-value {self.p_value:.4g}  (alpha = {self.alpha:g})",
            f"effect  {self.effect:.3g}  ({self.effect_description})",
            f"{label}queries {self.queries}  (access: {self.access})",
            f"test    {self.test}",
        ]
        lines.extend(f"note    {n}" for n in self.notes)
        return "\n".join(lines)
