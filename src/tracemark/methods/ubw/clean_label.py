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

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import TracemarkError
from ...keys import Key
from ...resume_folder import progress_folder
from ...rng import derive_int
from ...training import TrainConfig, augment_batch, resolve_device, train_model
from ...training_resume import EpochCheckpoint, data_fingerprint
from .params import UbwParams
from .triggers import Trigger, poison_count, random_positions

PURPOSE_SOURCES = "ubw-c/sources"
PURPOSE_SOURCE_POSITIONS = "ubw-c/source-positions"
PURPOSE_SURROGATE = "ubw-c/surrogate"
PURPOSE_AUGMENT = "ubw-c/augment"
PURPOSE_RESTART = "ubw-c/restart"


# The paper's schedule around the key's settings: the step size drops tenfold at these
# fractions of the iterations (93, 156 and 218 of 250), and batches of this many poisons.
MILESTONES = (0.375, 0.625, 0.875)
BATCH_SIZE = 128


def milestone_steps(iterations: int) -> list[int]:
    """Iterations after which the step size drops tenfold (93, 156, 218 of 250)."""
    return [math.floor(f * iterations) for f in MILESTONES]


@dataclass
class CleanLabelResult:
    """The poisoned indices (sorted), their perturbed images, and the optimisation trace
    of the restart kept (``restart``; ``finals``: every restart's final alignment loss)."""

    poisoned: np.ndarray
    poisons: np.ndarray
    alignment: list[float]
    retrained_at: list[int]
    restart: int = 0
    finals: list[float] = field(default_factory=list)


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


class Surrogate:
    """One surrogate (from the key's seed; member ``member`` of an ensemble from its own
    seed), trained afresh on the current data with clean labels each time it is fit."""

    def __init__(
        self,
        params: UbwParams,
        key: Key,
        shape,
        k: int,
        device: str,
        progress_factory,
        member: int = 0,
    ):
        from ...models import build_model

        kwargs = {"in_channels": shape[-1], "num_classes": k}
        if params.surrogate == "small-cnn":
            kwargs["width"] = params.surrogate_width
        self.model = build_model(params.surrogate, **kwargs)
        self.epochs = params.surrogate_epochs
        self.device = device
        ids = () if member == 0 else (member,)  # member 0 is the single surrogate of old
        self.seed = derive_int(key.seed, PURPOSE_SURROGATE, *ids)
        self.name = "train surrogate"
        if params.surrogates > 1:
            self.name = f"train surrogate {member + 1} of {params.surrogates}"
        self.progress_factory = progress_factory
        self.rounds = 0

    def fit(
        self, images: np.ndarray, labels: np.ndarray, device: torch.device, checkpoint=None
    ) -> nn.Module:
        self.rounds += 1
        advance = None
        if self.progress_factory is not None:
            advance = self.progress_factory(f"{self.name} ({self.rounds})", self.epochs)
        train_cfg = TrainConfig(epochs=self.epochs, seed=self.seed, device=self.device)
        train_model(
            self.model,
            images,
            labels,
            train_cfg,
            progress=(lambda *_: advance(1)) if advance else None,
            checkpoint=checkpoint,
        )
        return self._ready(device)

    def restore(self, weights: dict, rounds: int, device: torch.device) -> nn.Module:
        """The surrogate as a killed run had last trained it (``rounds`` trainings)."""
        self.model.load_state_dict(weights)
        self.rounds = rounds
        return self._ready(device)

    def weights(self) -> dict[str, torch.Tensor]:
        """A copy of the current weights, on the CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def _ready(self, device: torch.device) -> nn.Module:
        self.model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(True)
        return self.model


def _check(images: np.ndarray, labels: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise TracemarkError(f"UBW-C needs (N, H, W, C) images with N labels, got {images.shape}")


@dataclass
class Matching:
    """What gradient matching works on: the poisons (their images, labels, indices and the
    data's per-channel std, the unit of delta) and the triggered sources' target."""

    x: torch.Tensor
    y: torch.Tensor
    poisoned: torch.Tensor
    std: torch.Tensor
    x_src: torch.Tensor
    y_src: torch.Tensor


def craft(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    trigger: Trigger,
    key: Key,
    *,
    device: str = "auto",
    progress_factory=None,
) -> CleanLabelResult:
    """Craft UBW-C poisons for a training set with the key's settings; ``images`` are
    not modified.

    ``trigger`` is the randomly placed patch pasted on the source images. Every random
    choice (sources, their patch positions, the surrogates' seeds, the restarts' starting
    points, augmentations) comes from ``key``. With ``surrogates`` > 1 the alignment is
    averaged over an ensemble; with ``restarts`` > 1 the matching runs again from random
    starting points and the run with the best final alignment is kept (Witches' Brew).
    Runs on ``device`` ("auto" uses a GPU when there is one).
    """
    params: UbwParams = key.typed_params()
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    _check(images, labels)
    dev = resolve_device(device)
    n, h, w, _ = images.shape
    members = [
        Surrogate(params, key, images.shape, num_classes, device, progress_factory, e)
        for e in range(params.surrogates)
    ]
    saved = crafting_progress(key, images, labels, num_classes)
    state = None if saved is None else saved.load()
    if state is None:
        models = [
            s.fit(images, labels, dev, _kept(saved, ".surrogate", e)) for e, s in enumerate(members)
        ]
        initial = [s.weights() for s in members] if params.restarts > 1 else None
    else:  # a killed run's last surrogates: matching goes on from its next iteration
        weights = state.get("surrogates") or [state["surrogate"]]  # 0.7.5's state: one
        models = [s.restore(w, state["rounds"], dev) for s, w in zip(members, weights, strict=True)]
        initial = state.get("initial")

    src = key.rng(PURPOSE_SOURCES, n).choice(n, min(params.sources, n), replace=False)
    positions = random_positions(key.rng(PURPOSE_SOURCE_POSITIONS, n), src.size, h, w, trigger.size)
    x_src = _nchw(trigger.apply(images[src], positions), dev)
    y_src = torch.from_numpy(labels[src]).to(dev)
    x_all = _nchw(images, dev)
    y_all = torch.from_numpy(labels).to(dev)
    if state is None:  # the largest gradients, summed over the ensemble
        norms = gradient_norms(models[0], x_all, y_all, BATCH_SIZE)
        for model in models[1:]:
            norms = norms + gradient_norms(model, x_all, y_all, BATCH_SIZE)
        poisoned = torch.sort(torch.topk(norms, poison_count(n, params.gamma)).indices).values
    else:  # chosen by the first surrogates, which the killed run no longer holds
        poisoned = state["poisoned"].to(dev)
    # delta lives in units of the data's per-channel std, like the authors' normalised
    # inputs, so lr = 0.025 means what it means in their code; projection is in pixels.
    std = x_all.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)
    m = Matching(x_all[poisoned], y_all[poisoned], poisoned, std, x_src, y_src)
    crafting = Crafting(m, members, images, labels, params, key, progress_factory, saved)
    return crafting.run(models, state, initial)


def _kept(saved: EpochCheckpoint | None, stem: str, member: int) -> Path | None:
    """Where one surrogate training keeps its epochs: ``stem`` for the ensemble's first
    member (the single surrogate's file of old), ``stem-<member>`` for the others."""
    if saved is None:
        return None
    return saved.path.with_suffix(f"{stem}.pt" if member == 0 else f"{stem}-{member}.pt")


def crafting_progress(
    key: Key, images: np.ndarray, labels: np.ndarray, num_classes: int
) -> EpochCheckpoint | None:
    """Where this crafting keeps its progress, when the caller named a folder for it
    (:mod:`tracemark.resume_folder`); named and fingerprinted by the key and the data."""
    folder = progress_folder()
    if folder is None:
        return None
    header = [key.seed, key.params, num_classes]
    digest = data_fingerprint(header, np.asarray(images, np.float32), np.asarray(labels, np.int64))
    name = hashlib.sha256(f"ubw-c crafting/{digest}".encode()).hexdigest()
    return EpochCheckpoint(folder / f"{name}.pt", digest)


@dataclass
class Crafting:
    """Sign-Adam on delta against the alignment loss, once per restart, retraining the
    surrogates on the current poisons every ``retrain_every`` iterations. ``saved``: where
    the state after each iteration is kept, to go on from after a kill."""

    m: Matching
    members: list[Surrogate]
    images: np.ndarray
    labels: np.ndarray
    params: UbwParams
    key: Key
    progress_factory: Any
    saved: EpochCheckpoint | None

    def run(
        self,
        models: list[nn.Module],
        state: dict[str, Any] | None,
        initial: list[dict] | None,
    ) -> CleanLabelResult:
        """Every restart from the killed run's (or the first), keeping the best."""
        restarts, dev = self.params.restarts, self.m.x.device
        first = 0 if state is None else int(state.get("restart", 0))
        best = None if state is None else state.get("best")
        finals = [] if best is None else list(best["finals"])
        for r in range(first, restarts):
            if r > first or (state is not None and state["next"] == 0):
                state = None  # a fresh restart: from the first surrogates
                if r > 0:
                    models = [
                        s.restore(w, 1, dev) for s, w in zip(self.members, initial, strict=True)
                    ]
            result = self._match(models, r, state, best, initial)
            finals.append(result.alignment[-1])
            if best is None or result.alignment[-1] < best["alignment"][-1]:
                best = {
                    "restart": r,
                    "poisons": torch.from_numpy(result.poisons),
                    "alignment": result.alignment,
                    "retrained": result.retrained_at,
                }
            best["finals"] = list(finals)
            if self.saved is not None and r + 1 < restarts:  # between restarts
                self._save({"restart": r + 1, "next": 0, "best": best, "initial": initial}, models)
        if self.saved is not None:
            self.saved.remove()
        return CleanLabelResult(
            self.m.poisoned.cpu().numpy(),
            best["poisons"].numpy(),
            list(best["alignment"]),
            list(best["retrained"]),
            restart=int(best["restart"]),
            finals=finals,
        )

    def _save(self, state: dict[str, Any], models: list[nn.Module]) -> None:
        self.saved.save(
            {
                **state,
                "surrogates": [model.state_dict() for model in models],
                "rounds": self.members[0].rounds,
                "poisoned": self.m.poisoned.cpu(),
            }
        )

    def _targets(self, models: list[nn.Module]) -> list[list[torch.Tensor]]:
        """Each surrogate's target gradient on the triggered sources."""
        m, beta = self.m, self.params.beta
        return [target_gradient(mo, m.x_src, m.y_src, beta, BATCH_SIZE) for mo in models]

    def _start(self, restart: int) -> tuple[torch.Tensor, torch.Generator]:
        """Restart 0 starts at delta = 0; the others at a uniform point of the epsilon
        ball, each from the key; each restart has its own augmentations."""
        m, params, seed = self.m, self.params, self.key.seed
        ids = () if restart == 0 else (restart,)
        aug_gen = torch.Generator(device="cpu").manual_seed(derive_int(seed, PURPOSE_AUGMENT, *ids))
        delta = torch.zeros_like(m.x, requires_grad=True)
        if restart > 0:
            gen = torch.Generator(device="cpu").manual_seed(
                derive_int(seed, PURPOSE_RESTART, restart)
            )
            pixels = (torch.rand(m.x.shape, generator=gen) * 2 - 1) * params.epsilon
            with torch.no_grad():
                delta.copy_(pixels.to(m.x.device) / m.std)
            _project(delta, m, params.epsilon)
        return delta, aug_gen

    def _match(
        self,
        models: list[nn.Module],
        restart: int,
        state: dict[str, Any] | None,
        best: dict[str, Any] | None,
        initial: list[dict] | None,
    ) -> CleanLabelResult:
        """One restart's matching, from its start or from a killed run's ``state``."""
        m, params, members, saved = self.m, self.params, self.members, self.saved
        dev, count, pad = m.x.device, m.x.shape[0], max(1, self.images.shape[1] // 8)
        targets = self._targets(models)
        delta, aug_gen = self._start(restart)
        optimizer = torch.optim.Adam([delta], lr=params.lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=milestone_steps(params.iterations), gamma=0.1
        )
        name = "UBW-C gradient matching"
        if params.restarts > 1:
            name += f" (start {restart + 1} of {params.restarts})"
        advance = self.progress_factory(name, params.iterations) if self.progress_factory else None
        alignment: list[float] = []
        retrained: list[int] = []
        first = 0
        if state is not None:
            with torch.no_grad():
                delta.copy_(state["delta"].to(dev))
            optimizer.load_state_dict(state["optimizer"])  # the step size is in there
            first = state["next"]
            scheduler.last_epoch = first  # all MultiStepLR needs to drop the step on time
            aug_gen.set_state(state["augment"])
            alignment, retrained = list(state["alignment"]), list(state["retrained"])
        weights = [_params(mo) for mo in models]
        for it in range(first, params.iterations):
            if it > 0 and it % params.retrain_every == 0:
                current = self.images.copy()
                current[m.poisoned.cpu().numpy()] = (
                    _poisons(m.x, delta, m.std).permute(0, 2, 3, 1).cpu().numpy()
                )
                stem = f".retrain-{it}" if restart == 0 else f".start-{restart}-retrain-{it}"
                models = [  # their epochs kept too
                    s.fit(current, self.labels, dev, _kept(saved, stem, e))
                    for e, s in enumerate(members)
                ]
                weights = [_params(mo) for mo in models]
                targets = self._targets(models)
                retrained.append(it)
            delta.grad = torch.zeros_like(delta)
            total = 0.0
            for start in range(0, count, BATCH_SIZE):
                sl = slice(start, start + BATCH_SIZE)
                xb = (m.x[sl] + delta[sl] * m.std).clamp(0, 1)
                xb = augment_batch(xb, aug_gen, pad=pad, flip=True)
                for model, weight, target in zip(models, weights, targets, strict=True):
                    grads = torch.autograd.grad(
                        F.cross_entropy(model(xb), m.y[sl]), weight, create_graph=True
                    )
                    loss = alignment_loss(grads, target) / len(models)
                    loss.backward(retain_graph=model is not models[-1])  # xb's graph
                    total += float(loss.detach()) * xb.shape[0]
            alignment.append(total / count)
            delta.grad.sign_()
            optimizer.step()
            scheduler.step()
            _project(delta, m, params.epsilon)
            if saved is not None and it + 1 < params.iterations:
                self._save(
                    {
                        "restart": restart,
                        "next": it + 1,
                        "delta": delta.detach().cpu(),
                        "optimizer": optimizer.state_dict(),
                        "augment": aug_gen.get_state(),
                        "alignment": alignment,
                        "retrained": retrained,
                        "best": best,
                        "initial": initial,
                    },
                    models,
                )
            if advance is not None:
                advance(1)
        poisons = _poisons(m.x, delta, m.std).permute(0, 2, 3, 1).cpu().numpy()
        return CleanLabelResult(m.poisoned.cpu().numpy(), poisons, alignment, retrained)


@torch.no_grad()
def _project(delta: torch.Tensor, m: Matching, epsilon: float) -> None:
    """Keep x + delta inside [0, 1] and delta inside [-epsilon, epsilon] (in pixels)."""
    pix = delta * m.std
    pix = torch.maximum(torch.minimum(pix, 1 - m.x), -m.x).clamp(-epsilon, epsilon)
    delta.copy_(pix / m.std)


@torch.no_grad()
def _poisons(x: torch.Tensor, delta: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """x + delta in pixels, inside [0, 1] (the projection already keeps it there)."""
    return (x + delta.detach() * std).clamp(0, 1)
