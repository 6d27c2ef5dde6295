"""Countermeasures a model trainer can take against provenance audits, by name.

A spec lists them as ``[[countermeasures]]`` tables (``name = "finetune"``, ``lr = 0.01``)
and :data:`CountermeasureSpec` validates each into its class. The kinds, by the step they
act on (:mod:`.base`): data filters (:mod:`.filters`), training changes
(:mod:`.training`), post-training changes (:mod:`.post`), output restrictions
(:mod:`.output`). Nothing here imports torch until a countermeasure runs.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Discriminator, Tag

from .base import Countermeasure, Stage, Trainer
from .filters import (
    ActivationClusteringFilter,
    EnergyFilter,
    KNNFilter,
    MahalanobisFilter,
    MSPFilter,
    SpectralSignatureFilter,
)
from .output import LabelOnlyAnswers, NoCountermeasure, OutputNoise, Rounding, Temperature, TopKOnly
from .post import Distill, FineTune, Prune
from .training import (
    DPSGD,
    Dropout,
    EarlyStop,
    GaussianAugment,
    LabelSmoothing,
    Mixup,
    RandAugment,
)

_CLASSES: tuple[type[Countermeasure], ...] = (
    NoCountermeasure,
    OutputNoise,
    Rounding,
    Temperature,
    TopKOnly,
    LabelOnlyAnswers,
    FineTune,
    Prune,
    Distill,
    DPSGD,
    GaussianAugment,
    RandAugment,
    Mixup,
    LabelSmoothing,
    EarlyStop,
    Dropout,
    MSPFilter,
    EnergyFilter,
    MahalanobisFilter,
    KNNFilter,
    SpectralSignatureFilter,
    ActivationClusteringFilter,
)
REGISTRY: dict[str, type[Countermeasure]] = {
    cls.model_fields["name"].annotation.__args__[0]: cls for cls in _CLASSES
}
"""Every countermeasure class by the name a spec gives it."""


def _name_of(value: Any) -> str:
    """The tag of a spec entry: its name (``none`` when it gives none)."""
    if isinstance(value, dict):
        return str(value.get("name", "none"))
    return str(getattr(value, "name", "none"))


CountermeasureSpec = Annotated[
    Annotated[NoCountermeasure, Tag("none")]
    | Annotated[OutputNoise, Tag("output-noise")]
    | Annotated[Rounding, Tag("rounding")]
    | Annotated[Temperature, Tag("temperature")]
    | Annotated[TopKOnly, Tag("topk-only")]
    | Annotated[LabelOnlyAnswers, Tag("label-only")]
    | Annotated[FineTune, Tag("finetune")]
    | Annotated[Prune, Tag("prune")]
    | Annotated[Distill, Tag("distill")]
    | Annotated[DPSGD, Tag("dp-sgd")]
    | Annotated[GaussianAugment, Tag("gaussian-augment")]
    | Annotated[RandAugment, Tag("randaugment")]
    | Annotated[Mixup, Tag("mixup")]
    | Annotated[LabelSmoothing, Tag("label-smoothing")]
    | Annotated[EarlyStop, Tag("early-stop")]
    | Annotated[Dropout, Tag("dropout")]
    | Annotated[MSPFilter, Tag("filter-msp")]
    | Annotated[EnergyFilter, Tag("filter-energy")]
    | Annotated[MahalanobisFilter, Tag("filter-mahalanobis")]
    | Annotated[KNNFilter, Tag("filter-knn")]
    | Annotated[SpectralSignatureFilter, Tag("filter-spectral")]
    | Annotated[ActivationClusteringFilter, Tag("filter-activation-clustering")],
    Discriminator(_name_of),
]
"""A spec's countermeasure entry, validated into its class by its ``name``."""

__all__ = ["REGISTRY", "Countermeasure", "CountermeasureSpec", "Stage", "Trainer"]
