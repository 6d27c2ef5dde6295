"""How a victim is trained (:class:`TrainConfig`), declared once and without torch, so the
command line's ``train`` flags read their defaults from here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .errors import TracemarkError
from .options import option

SCHEDULES = ("cosine", "onecycle", "constant")


@dataclass
class TrainConfig:
    """SGD training settings; the defaults train a SmallCNN well in a few epochs."""

    epochs: int = option(5, "Training epochs.", min=1)
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    augment: bool = option(True, "Random pad-4 crops and flips (--no-augment: plain fitting).")
    flip: bool = True
    schedule: Literal["cosine", "onecycle", "constant"] = "onecycle"
    seed: int = option(0, "Training seed.")
    device: str = "auto"
    channels_last: bool = True
    pad: int = 4
    reinit: bool = True
    optimizer: Literal["sgd", "adam"] = "sgd"
    label_smoothing: float = 0.0
    cutout: int = 0  # "stronger" augmentation: a random square of this side is erased

    def validate(self) -> None:
        """Raise TracemarkError on settings that would fail or silently misbehave."""
        for name in ("epochs", "batch_size", "seed", "pad"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TracemarkError(f"TrainConfig.{name} must be an integer, got {value!r}")
        if self.epochs < 1:
            raise TracemarkError(f"TrainConfig.epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise TracemarkError(
                f"TrainConfig.batch_size must be at least 1, got {self.batch_size}"
            )
        if not 0 <= self.seed < 2**63:
            raise TracemarkError(f"TrainConfig.seed must be in [0, 2**63), got {self.seed}")
        if self.pad < 0:
            raise TracemarkError(f"TrainConfig.pad must be non-negative, got {self.pad}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise TracemarkError(f"TrainConfig.lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise TracemarkError(f"TrainConfig.momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise TracemarkError("TrainConfig.nesterov needs momentum > 0")
        if self.weight_decay < 0:
            raise TracemarkError(
                f"TrainConfig.weight_decay must be non-negative, got {self.weight_decay}"
            )
        if self.optimizer not in ("sgd", "adam"):
            raise TracemarkError(
                f"TrainConfig.optimizer must be sgd or adam, got {self.optimizer!r}"
            )
        if not 0 <= self.label_smoothing < 1:
            raise TracemarkError(
                f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        if isinstance(self.cutout, bool) or not isinstance(self.cutout, int) or self.cutout < 0:
            raise TracemarkError(f"TrainConfig.cutout must be an int >= 0, got {self.cutout!r}")
        if self.schedule not in SCHEDULES:
            raise TracemarkError(
                f"TrainConfig.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
