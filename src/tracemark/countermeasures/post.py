"""Post-training countermeasures: the trainer changes the trained model with clean data.

Fine-tuning, global magnitude pruning and distillation into a fresh student, as the
three papers run them. Each works on a copy and leaves the trained model alone.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar, Literal

from pydantic import Field

from ..errors import TracemarkError
from .base import Countermeasure, Stage, Trainer


class FineTune(Countermeasure):
    """Fine-tune every weight on clean data (the papers: lr 1e-5 to 0.1).

    ``data = "held-out"`` (the default) tunes on clean images the victim never trained on,
    as MembershipTracker's defender (§5.2.3: a clean set of 10% of the training set) and
    Data Isotopes' (§8.5: unrelated data) do. ``"training"`` tunes on the victim's own
    clean training images: on a fitted victim their loss is near zero, so small rates
    change nothing and a large one only where SGD happens to spike.
    """

    name: Literal["finetune"]
    lr: float = Field(0.01, gt=0, le=10)
    epochs: int = Field(5, ge=1, le=1_000)
    images: int = Field(1_000, ge=1, le=60_000, description="clean images it tunes on")
    data: Literal["held-out", "training"] = "held-out"
    stage: ClassVar[Stage] = "post"

    def revision(self) -> str | None:
        """0.7.6 and earlier tuned on the victim's own training images."""
        return "0.7.7: held-out data" if self.data == "held-out" else None

    def apply(self, model, trainer: Trainer):
        from ..training import train_model

        tune = self.tuning_data(trainer)
        trainer.info["finetune_images"] = len(tune)
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
        return train_model(tuned, tune.images, tune.labels, config)

    def tuning_data(self, trainer: Trainer):
        """The ``images`` clean images it tunes on; never fewer than the spec says."""
        import numpy as np

        if self.data == "held-out":
            if trainer.held_out is None:
                raise TracemarkError(
                    "finetune with data = 'held-out' needs clean images the victim did "
                    "not train on (Trainer.held_out)"
                )
            return trainer.held_out(self.images)
        clean = trainer.clean
        if len(clean) < self.images:
            raise TracemarkError(
                f"finetune asks {self.images} of the victim's clean training images; the "
                f"trainer holds {len(clean)} (lower images)"
            )
        pick = np.random.default_rng(trainer.seed).permutation(len(clean))[: self.images]
        return clean.subset(np.sort(pick))


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
