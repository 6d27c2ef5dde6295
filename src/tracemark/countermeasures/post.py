"""Post-training countermeasures: the trainer changes the trained model with clean data.

Fine-tuning, global magnitude pruning and distillation into a fresh student, as the
three papers run them. Each works on a copy and leaves the trained model alone.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar, Literal

from pydantic import Field

from .base import Countermeasure, Stage, Trainer


class FineTune(Countermeasure):
    """Fine-tune every weight on the trainer's clean data (the papers: lr 1e-5 to 0.1)."""

    name: Literal["finetune"]
    lr: float = Field(0.01, gt=0, le=10)
    epochs: int = Field(5, ge=1, le=1_000)
    images: int = Field(1_000, ge=1, le=60_000, description="clean images it tunes on")
    stage: ClassVar[Stage] = "post"

    def apply(self, model, trainer: Trainer):
        import numpy as np

        from ..training import train_model

        clean = trainer.clean
        rng = np.random.default_rng(trainer.seed)
        pick = np.sort(rng.permutation(len(clean))[: self.images])
        config = dataclasses.replace(
            trainer.config,
            lr=self.lr,
            epochs=self.epochs,
            schedule="constant",
            reinit=False,
            seed=trainer.seed,
            device=trainer.device,
        )
        tuned = copy.deepcopy(model)
        return train_model(tuned, clean.images[pick], clean.labels[pick], config)


class Prune(Countermeasure):
    """Global magnitude pruning: the ``amount`` share of all conv and linear weights with
    the smallest magnitude set to zero (``torch.nn.utils.prune``), made permanent."""

    name: Literal["prune"]
    amount: float = Field(0.5, ge=0, lt=1)
    stage: ClassVar[Stage] = "post"

    def apply(self, model, trainer: Trainer):
        from torch.nn.utils import prune

        pruned = copy.deepcopy(model)
        weights = prunable_weights(pruned)
        prune.global_unstructured(
            weights, pruning_method=prune.L1Unstructured, amount=float(self.amount)
        )
        for module, name in weights:
            prune.remove(module, name)
        trainer.info["pruned_share"] = self.amount
        return pruned


def prunable_weights(model) -> list:
    """Every conv and linear layer's weight, as ``(module, "weight")`` pairs."""
    from torch import nn

    return [
        (m, "weight")
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and getattr(m, "weight", None) is not None
    ]


class Distill(Countermeasure):
    """Knowledge distillation: a fresh model of the same architecture trained on the
    clean data to match the trained model's softened answers (temperature ``t``), the
    loss Hinton et al. give: KL(teacher_t || student_t) * t^2."""

    name: Literal["distill"]
    epochs: int = Field(10, ge=1, le=1_000)
    t: float = Field(4.0, gt=0, le=100)
    stage: ClassVar[Stage] = "post"

    def apply(self, model, trainer: Trainer):
        import torch
        import torch.nn.functional as F

        from ..training import LoopHooks, predict_logits, train_model

        teacher = torch.from_numpy(
            predict_logits(model, trainer.clean.images, device=trainer.device)
        )
        soft = F.softmax(teacher / self.t, dim=1)

        def batch(x, y, idx, generator):
            return x, soft[idx.cpu()].to(x.device)

        def loss(logits, target):
            student = F.log_softmax(logits / self.t, dim=1)
            return F.kl_div(student, target, reduction="batchmean") * self.t**2

        config = dataclasses.replace(
            trainer.config, epochs=self.epochs, seed=trainer.seed, device=trainer.device
        )
        student = trainer.fresh_model()
        return train_model(
            student,
            trainer.clean.images,
            trainer.clean.labels,
            config,
            hooks=LoopHooks(batch=batch, loss=loss),
        )
