"""UBW-C: clean-label untargeted watermark crafted by gradient matching (spec §3).

The bi-level problem is solved as in Sleeper Agent: perturb a few training images
(labels untouched, ||delta||_inf <= epsilon) so that the gradient of *their* clean
training loss points where the gradient of the watermark objective on triggered
images points. The objective is -(CE + beta * H) on triggered sources: a model that
descends it misclassifies triggered inputs *and* spreads its predictions (entropy),
which is what makes the watermark untargeted. The entropy term belongs in this target
gradient, not in the victim's loss (the authors' pre-2024 code got this wrong).

Steps: train a surrogate on clean data; pick the gamma*N samples with the largest
clean-loss gradient norm; run sign-Adam on delta (lr 0.025, x0.1 at 37.5/62.5/87.5% of
the iterations) minimising 1 - cos(grad CE(aug(x + delta)), target gradient) with a
differentiable random shift and flip; project after each step; retrain the surrogate on
the current poisoned set every ``retrain_every`` iterations and recompute the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TracemarkError
from ..keys import Key, UbwParams
from ..rng import derive_int
from ..training import TrainConfig, augment_batch, resolve_device, train_model
from ..triggers import Trigger, poison_count, random_positions

PURPOSE_SOURCES = "ubw-c/sources"
PURPOSE_SOURCE_POSITIONS = "ubw-c/source-positions"
PURPOSE_SURROGATE = "ubw-c/surrogate"
PURPOSE_AUGMENT = "ubw-c/augment"


@dataclass
class CleanLabelConfig:
    """Gradient-matching settings; the defaults are the paper's (spec §3, UBW-C)."""

    gamma: float = 0.1
    epsilon: float = 16 / 255
    beta: float = 2.0
    iterations: int = 250
    lr: float = 0.025
    milestones: tuple[float, ...] = (0.375, 0.625, 0.875)
    retrain_every: int = 50
    sources: int = 1000
    batch_size: int = 128
    surrogate: str = "small-cnn"
    surrogate_width: int = 32  # the default victim's width: matching it strengthens the mark
    surrogate_epochs: int = 8
    device: str = "auto"
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_params(cls, params: UbwParams, device: str = "auto") -> CleanLabelConfig:
        """The configuration a UBW-C key records."""
        return cls(
            gamma=params.gamma,
            epsilon=params.epsilon,
            beta=params.beta,
            iterations=params.iterations,
            lr=params.lr,
            retrain_every=params.retrain_every,
            sources=params.sources,
            surrogate=params.surrogate,
            surrogate_width=params.surrogate_width,
            surrogate_epochs=params.surrogate_epochs,
            device=device,
        )

    def milestone_steps(self) -> list[int]:
        """Iterations after which the step size drops tenfold (93, 156, 218 of 250)."""
        return [math.floor(f * self.iterations) for f in self.milestones]


@dataclass
class CleanLabelResult:
    """The poisoned indices (sorted), their perturbed images, and the optimisation trace."""

    poisoned: np.ndarray
    poisons: np.ndarray
    alignment: list[float]
    retrained_at: list[int]


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-row entropy (nats) of softmax(logits)."""
    logp = F.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def target_gradient(
    model: nn.Module, sources: torch.Tensor, labels: torch.Tensor, beta: float, batch: int
) -> list[torch.Tensor]:
    """Mean over triggered sources of grad_theta -(CE(f(x), y) + beta * H(softmax f(x)))."""
    params = _params(model)
    total = [torch.zeros_like(p) for p in params]
    n = sources.shape[0]
    for start in range(0, n, batch):
        xb, yb = sources[start : start + batch], labels[start : start + batch]
        logits = model(xb)
        objective = -(F.cross_entropy(logits, yb, reduction="sum") + beta * entropy(logits).sum())
        for acc, g in zip(total, torch.autograd.grad(objective, params), strict=True):
            acc += g
    return [g / n for g in total]


def gradient_norms(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 256
) -> torch.Tensor:
    """Per-sample L2 norm of grad_theta CE(f(x_i), y_i), vectorised with torch.func."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p, x, y):
        out = functional_call(model, (p, buffers), (x[None],))
        return F.cross_entropy(out, y[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    norms = []
    for start in range(0, images.shape[0], batch):
        grads = per_sample(params, images[start : start + batch], labels[start : start + batch])
        sq = sum(g.flatten(1).pow(2).sum(1) for g in grads.values())
        norms.append(sq.sqrt())
    return torch.cat(norms)


def alignment_loss(grads: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """1 - cosine similarity of two gradients taken over all parameters jointly."""
    dot = sum((g * t).sum() for g, t in zip(grads, target, strict=True))
    g_norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    t_norm = torch.sqrt(sum(t.pow(2).sum() for t in target))
    return 1 - dot / (g_norm * t_norm + 1e-12)


def _nchw(images: np.ndarray, device: torch.device) -> torch.Tensor:
    return (
        torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        .permute(0, 3, 1, 2)
        .to(device)
    )


class _Surrogate:
    """Trains the surrogate (from the key's seed) on the current data, clean labels."""

    def __init__(self, config: CleanLabelConfig, key: Key, shape, k: int, progress_factory):
        from ..models import build_model

        kwargs = {"in_channels": shape[-1], "num_classes": k}
        if config.surrogate == "small-cnn":
            kwargs["width"] = config.surrogate_width
        self.model = build_model(config.surrogate, **kwargs)
        self.config = config
        self.seed = derive_int(key.seed, PURPOSE_SURROGATE)
        self.progress_factory = progress_factory
        self.rounds = 0

    def fit(self, images: np.ndarray, labels: np.ndarray, device: torch.device) -> nn.Module:
        self.rounds += 1
        epochs = self.config.surrogate_epochs
        advance = None
        if self.progress_factory is not None:
            advance = self.progress_factory(f"train surrogate ({self.rounds})", epochs)
        train_cfg = replace(
            self.config.train, epochs=epochs, seed=self.seed, device=self.config.device
        )
        train_model(
            self.model,
            images,
            labels,
            train_cfg,
            progress=(lambda *_: advance(1)) if advance else None,
        )
        self.model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(True)
        return self.model


def _check(images: np.ndarray, labels: np.ndarray, config: CleanLabelConfig) -> None:
    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise TracemarkError(f"UBW-C needs (N, H, W, C) images with N labels, got {images.shape}")
    if not 0 < config.epsilon <= 1:
        raise TracemarkError(f"epsilon must be in (0, 1], got {config.epsilon}")
    if config.iterations < 1 or config.retrain_every < 1 or config.batch_size < 1:
        raise TracemarkError("iterations, retrain_every and batch_size must be at least 1")


def craft(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    trigger: Trigger,
    key: Key,
    config: CleanLabelConfig | None = None,
    *,
    progress_factory=None,
) -> CleanLabelResult:
    """Craft UBW-C poisons for a training set; ``images`` are not modified.

    ``trigger`` is the randomly placed patch pasted on the source images. Every random
    choice (sources, their patch positions, the surrogate's seed, augmentations) comes
    from ``key``. Runs on ``config.device`` ("auto" uses a GPU when there is one).
    """

    config = config or CleanLabelConfig()
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    _check(images, labels, config)
    device = resolve_device(config.device)
    n, h, w, _ = images.shape
    count = poison_count(n, config.gamma)
    surrogate = _Surrogate(config, key, images.shape, num_classes, progress_factory)
    model = surrogate.fit(images, labels, device)

    src = key.rng(PURPOSE_SOURCES, n).choice(n, min(config.sources, n), replace=False)
    positions = random_positions(key.rng(PURPOSE_SOURCE_POSITIONS, n), src.size, h, w, trigger.size)
    x_src = _nchw(trigger.apply(images[src], positions), device)
    y_src = torch.from_numpy(labels[src]).to(device)
    target = target_gradient(model, x_src, y_src, config.beta, config.batch_size)

    x_all = _nchw(images, device)
    y_all = torch.from_numpy(labels).to(device)
    norms = gradient_norms(model, x_all, y_all, config.batch_size)
    poisoned = torch.sort(torch.topk(norms, count).indices).values
    x_p, y_p = x_all[poisoned], y_all[poisoned]

    # delta lives in units of the data's per-channel std, like the authors' normalised
    # inputs, so lr = 0.025 means what it means in their code; projection is in pixels.
    std = x_all.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)
    delta = torch.zeros_like(x_p, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=config.milestone_steps(), gamma=0.1
    )
    aug_gen = torch.Generator(device="cpu").manual_seed(derive_int(key.seed, PURPOSE_AUGMENT))
    pad = max(1, h // 8)
    advance = (
        progress_factory("UBW-C gradient matching", config.iterations) if progress_factory else None
    )
    alignment: list[float] = []
    retrained: list[int] = []
    params = _params(model)
    for it in range(config.iterations):
        if it > 0 and it % config.retrain_every == 0:
            current = images.copy()
            current[poisoned.cpu().numpy()] = (
                _poisons(x_p, delta, std).permute(0, 2, 3, 1).cpu().numpy()
            )
            model = surrogate.fit(current, labels, device)
            params = _params(model)
            target = target_gradient(model, x_src, y_src, config.beta, config.batch_size)
            retrained.append(it)
        delta.grad = torch.zeros_like(delta)
        total = 0.0
        for start in range(0, count, config.batch_size):
            sl = slice(start, start + config.batch_size)
            xb = (x_p[sl] + delta[sl] * std).clamp(0, 1)
            xb = augment_batch(xb, aug_gen, pad=pad, flip=True)
            grads = torch.autograd.grad(
                F.cross_entropy(model(xb), y_p[sl]), params, create_graph=True
            )
            loss = alignment_loss(grads, target)
            loss.backward()
            total += float(loss.detach()) * xb.shape[0]
        alignment.append(total / count)
        delta.grad.sign_()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            pix = delta * std
            pix = torch.maximum(torch.minimum(pix, 1 - x_p), -x_p).clamp(
                -config.epsilon, config.epsilon
            )
            delta.copy_(pix / std)
        if advance is not None:
            advance(1)
    poisons = _poisons(x_p, delta, std).permute(0, 2, 3, 1).cpu().numpy()
    return CleanLabelResult(poisoned.cpu().numpy(), poisons, alignment, retrained)


@torch.no_grad()
def _poisons(x: torch.Tensor, delta: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """x + delta in pixels, inside [0, 1] (the projection already keeps it there)."""
    return (x + delta.detach() * std).clamp(0, 1)
