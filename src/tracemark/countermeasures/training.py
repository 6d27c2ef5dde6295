"""Training-level countermeasures: the trainer changes its recipe or its training loop.

Each trains the model from scratch on the data it is given, with the recipe's settings
(:class:`tracemark.train_config.TrainConfig`) and one change. The harness trains the
clean model of the cell the same way, so its false-positive rate is measured on a model
trained as the victim was.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from .base import Countermeasure, Stage, Trainer


class _LoopChange(Countermeasure):
    """A change that is a :class:`tracemark.training.LoopHooks` on the plain loop."""

    def hooks(self, images: np.ndarray, labels: np.ndarray, trainer: Trainer):
        raise NotImplementedError

    def config(self, trainer: Trainer):
        return trainer.config

    def train(self, images: np.ndarray, labels: np.ndarray, trainer: Trainer):
        from ..training import train_model

        model = trainer.fresh_model()
        callback = (lambda *_: trainer.progress(1)) if trainer.progress else None
        hooks = self.hooks(images, labels, trainer)
        trained = train_model(
            model, images, labels, self.config(trainer), progress=callback, hooks=hooks
        )
        return self.finish(trained, trainer)

    def finish(self, model, trainer: Trainer):
        return model


class GaussianAugment(_LoopChange):
    """N(0, sigma^2) pixel noise on every training image, drawn anew each step."""

    name: Literal["gaussian-augment"]
    sigma: float = Field(0.1, gt=0, le=10)
    stage: ClassVar[Stage] = "training"

    def hooks(self, images, labels, trainer):
        import torch

        from ..training import LoopHooks

        def batch(x, y, idx, generator):
            noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
            return (x + self.sigma * noise).clamp(0, 1), y

        return LoopHooks(batch=batch)


class Mixup(_LoopChange):
    """mixup (Zhang et al. 2018): each batch mixed with a shuffled copy of itself, images
    and one-hot labels alike, by lambda ~ Beta(alpha, alpha)."""

    name: Literal["mixup"]
    alpha: float = Field(0.4, gt=0, le=100)
    stage: ClassVar[Stage] = "training"

    def hooks(self, images, labels, trainer):
        import torch
        import torch.nn.functional as F

        from ..training import LoopHooks

        classes = int(labels.max()) + 1

        def batch(x, y, idx, generator):
            draw = int(torch.randint(0, 2**62, (1,), generator=generator))
            lam = float(np.random.default_rng(draw).beta(self.alpha, self.alpha))
            perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
            onehot = F.one_hot(y, classes).to(x.dtype)
            return lam * x + (1 - lam) * x[perm], lam * onehot + (1 - lam) * onehot[perm]

        return LoopHooks(batch=batch)


class RandAugment(_LoopChange):
    """A strong augmentation policy in the manner of RandAugment (Cubuk et al. 2020):
    ``ops`` operations per image, drawn from brightness, contrast, rotation, shear,
    translation, solarise, posterise, cutout and sharpness, each at ``magnitude`` of 10."""

    name: Literal["randaugment"]
    ops: int = Field(2, ge=1, le=9)
    magnitude: int = Field(9, ge=1, le=10)
    stage: ClassVar[Stage] = "training"

    def hooks(self, images, labels, trainer):
        from ..training import LoopHooks
        from .randaugment import rand_augment

        def batch(x, y, idx, generator):
            return rand_augment(x, generator, self.ops, self.magnitude), y

        return LoopHooks(batch=batch)


class LabelSmoothing(_LoopChange):
    """Cross-entropy against labels smoothed by ``epsilon`` (overrides the recipe's)."""

    name: Literal["label-smoothing"]
    epsilon: float = Field(0.1, gt=0, lt=1)
    stage: ClassVar[Stage] = "training"

    def hooks(self, images, labels, trainer):
        return None

    def config(self, trainer):
        return dataclasses.replace(trainer.config, label_smoothing=self.epsilon)


class Dropout(_LoopChange):
    """Dropout before the classifier's last layer, at rate ``p`` (the recipe's model is
    rebuilt with it; architectures without a dropout layer are a clear error)."""

    name: Literal["dropout"]
    p: float = Field(0.5, gt=0, lt=1)
    stage: ClassVar[Stage] = "training"

    def hooks(self, images, labels, trainer):
        return None

    def train(self, images, labels, trainer):
        fresh = trainer.fresh_model
        trainer = dataclasses.replace(trainer, fresh_model=lambda: fresh(dropout=self.p))
        return super().train(images, labels, trainer)


class EarlyStop(_LoopChange):
    """Early stopping: ``validation`` of the training data is held out; training stops
    once its accuracy has not improved for ``patience`` epochs, and the best epoch's
    weights are kept."""

    name: Literal["early-stop"]
    patience: int = Field(2, ge=1, le=1_000)
    validation: float = Field(0.1, gt=0, lt=1)
    stage: ClassVar[Stage] = "training"

    def train(self, images, labels, trainer):
        import copy

        from ..training import LoopHooks, accuracy, train_model

        rng = np.random.default_rng(trainer.seed)
        order = rng.permutation(len(labels))
        n_val = max(1, round(self.validation * len(labels)))
        val, fit = np.sort(order[:n_val]), np.sort(order[n_val:])
        best = {"acc": -1.0, "epoch": 0, "state": None, "last": 0}

        def epoch_end(model, epoch):
            best["last"] = epoch
            acc = accuracy(model, images[val], labels[val], device=trainer.device)
            if acc > best["acc"]:
                best.update(acc=acc, epoch=epoch, state=copy.deepcopy(model.state_dict()))
            return epoch - best["epoch"] >= self.patience

        callback = (lambda *_: trainer.progress(1)) if trainer.progress else None
        model = train_model(
            trainer.fresh_model(),
            images[fit],
            labels[fit],
            trainer.config,
            progress=callback,
            hooks=LoopHooks(epoch_end=epoch_end),
        )
        model.load_state_dict(best["state"])
        trainer.info["stopped_at_epoch"] = best["last"]
        trainer.info["best_epoch"] = best["epoch"]
        return model


class DPSGD(Countermeasure):
    """DP-SGD with opacus: per-example gradients clipped to ``max_grad_norm``, Gaussian
    noise of ``noise_multiplier`` times it, Poisson sampling of batches; the epsilon at
    ``delta`` that opacus's accountant (RDP) gives is reported. Batch norm, which DP-SGD
    cannot use, becomes group norm (opacus's ModuleValidator.fix)."""

    name: Literal["dp-sgd"]
    noise_multiplier: float = Field(1.0, ge=0, le=100)
    max_grad_norm: float = Field(1.0, gt=0, le=1_000)
    delta: float = Field(1e-5, gt=0, lt=1)
    stage: ClassVar[Stage] = "training"
    checkpointable: ClassVar[bool] = False  # batch norm became group norm

    def train(self, images, labels, trainer):
        import torch
        import torch.nn.functional as F
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator
        from torch.utils.data import DataLoader, TensorDataset

        from ..models import initialize
        from ..training import resolve_device

        config = trainer.config
        device = resolve_device(trainer.device)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            torch.manual_seed(trainer.seed)
            model = trainer.fresh_model()
            initialize(model, trainer.seed)
            model = ModuleValidator.fix(model).to(device)
            for m in model.modules():  # opacus's backward hooks cannot see in-place ops
                if hasattr(m, "inplace"):
                    m.inplace = False
            data = TensorDataset(
                torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
                torch.from_numpy(labels.astype(np.int64)),
            )
            generator = torch.Generator().manual_seed(trainer.seed)
            loader = DataLoader(data, batch_size=config.batch_size, generator=generator)
            optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
            with warnings.catch_warnings():  # "secure RNG turned off": this is a measurement
                warnings.simplefilter("ignore", UserWarning)
                engine = PrivacyEngine(accountant="rdp")
            model, optimizer, loader = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=float(self.noise_multiplier),
                max_grad_norm=float(self.max_grad_norm),
                noise_generator=torch.Generator().manual_seed(trainer.seed ^ 1),
            )
            model.train()
            # opacus's hooks fire on outputs (the images need no gradient): benign
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for _ in range(config.epochs):
                for xb, yb in loader:
                    if len(yb) == 0:
                        continue
                    loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                if not math.isfinite(float(loss.detach())):
                    from ..errors import TracemarkError

                    raise TracemarkError("DP-SGD diverged; lower the recipe's lr")
                if trainer.progress:
                    trainer.progress(1)
            epsilon = engine.accountant.get_epsilon(delta=float(self.delta))
        trainer.info["epsilon"] = float(epsilon)
        trainer.info["delta"] = float(self.delta)
        plain = model._module  # the model without opacus's per-example hooks
        plain.eval()
        return plain.cpu()
