"""What every countermeasure is: a validated spec entry that acts at one step of training.

A model trainer who wants to escape a provenance audit can act at four steps, and each
kind has one small surface:

- ``data``: ``keep = filter(images, labels, trainer)`` before training;
- ``training``: the recipe or the loop changes (``train(images, labels, trainer)``);
- ``post``: ``model = apply(model, trainer)`` on the trained model, with clean data;
- ``output``: ``oracle = wrap(oracle, seed)``: what the deployment reveals.

A countermeasure is a frozen pydantic model (its fields are its strength), so a spec's
``[[countermeasures]]`` table is validated like every other section and enters the
cell's identity. It never imports the harness: what it needs of the trainer comes in a
:class:`Trainer`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

Stage = Literal["none", "data", "training", "post", "output"]


@dataclass
class Trainer:
    """What a model trainer holds when it applies a countermeasure.

    ``clean``: the clean images it trained on (distillation's transfer set);
    ``held_out(n)``: n clean images it did not train on (fine-tuning);
    ``fresh_model()``: an untrained model of its architecture; ``config``: its
    recipe's training settings (a :class:`tracemark.train_config.TrainConfig`);
    ``reference``: a model trained on held-out clean data only, none of the training
    images it scores (out-of-distribution filters); ``unfiltered``: the model its recipe
    trains on the unfiltered data, where it has one (ART's detectors read its features);
    ``seed``: 63-bit seed for this countermeasure's random choices; ``info``: figures
    the countermeasure reports (epsilon, images removed), filled as it runs.
    """

    clean: Any
    fresh_model: Callable[[], Any]
    config: Any
    seed: int
    device: str = "auto"
    reference: Any = None
    progress: Callable[[int], None] | None = None
    held_out: Callable[[int], Any] | None = None
    unfiltered: Any = None
    info: dict[str, Any] = field(default_factory=dict)


class Countermeasure(BaseModel):
    """A countermeasure and its strength; subclasses set ``stage`` and one of the hooks."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    stage: ClassVar[Stage] = "none"
    # the purpose an output-level countermeasure's random answers are seeded under
    seed_purpose: ClassVar[str] = "evaluate/output"
    # whether what ``train`` returns is one of tracemark's architectures, so that a
    # checkpoint can rebuild it and a harness can keep it (DP-SGD's group norms are not)
    checkpointable: ClassVar[bool] = True
    # whether it scores images with ``Trainer.reference`` (the out-of-distribution filters)
    needs_reference: ClassVar[bool] = False

    @property
    def label(self) -> str:
        """How reports name it: ``finetune(lr=0.01, epochs=5)``."""
        fields = self.model_dump(exclude={"name"})
        if not fields:
            return self.name  # type: ignore[attr-defined]
        inner = ", ".join(f"{k}={_short(v)}" for k, v in fields.items())
        return f"{self.name}({inner})"  # type: ignore[attr-defined]

    def revision(self) -> str | None:
        """A change to what this countermeasure does since the evaluation's
        COMPUTE_VERSION (0.7.7: fine-tuning on held-out data); it enters the cell's
        identity, so that only its cells are computed again."""
        return None

    # ---- the four hooks; a subclass implements the one of its stage
    def keep(self, images: np.ndarray, labels: np.ndarray, trainer: Trainer) -> np.ndarray:
        """data: a boolean mask of the training images kept."""
        raise NotImplementedError

    def train(self, images: np.ndarray, labels: np.ndarray, trainer: Trainer):
        """training: a model trained on the data with the changed recipe or loop."""
        raise NotImplementedError

    def apply(self, model, trainer: Trainer):
        """post: the trained model, changed (a copy: the input model is left alone)."""
        raise NotImplementedError

    def wrap(self, oracle, seed: str):
        """output: the deployment's oracle (``seed``: hex, for answers drawn at random)."""
        raise NotImplementedError

    def reveal(self, access: str, top_k: int) -> tuple[str, int]:
        """The access an auditor asking for ``access`` (top ``top_k``) actually gets."""
        return access, top_k


def _short(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
