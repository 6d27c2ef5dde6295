"""Data-level countermeasures: the trainer removes suspicious images before training.

Every filter scores each training image (higher: more suspicious) and removes the
``budget`` share of the training set with the highest scores, so filters compare at a
fixed cost in data. The scores:

- out-of-distribution scores from a reference model trained on held-out clean data, as
  many images as the victim's clean data and none of them (MembershipTracker §5.2.6 fits
  its detectors on clean samples outside the training set; a reference trained on the
  very images it scores would have memorised them, and so would know which are marked):
  ``msp`` (1 - maximum softmax probability), ``energy`` (-logsumexp of the logits),
  ``mahalanobis`` (distance of the penultimate features to the image's class mean under
  one shared covariance, scikit-learn's LedoitWolf), ``knn`` (distance to the k-th
  nearest other training image in normalised feature space, scikit-learn's
  NearestNeighbors);
- poisoning detectors of the Adversarial Robustness Toolbox, on the penultimate
  features of a model trained on the unfiltered data (as ART's defences run):
  ``spectral-signature`` (SpectralSignatureDefense, its top ``budget`` per class) and
  ``activation-clustering`` (ActivationDefence's per-class 2-means clustering; the
  images of each class's smaller cluster first, then by distance from the larger one).

pytorch-ood, which has MSP, energy, Mahalanobis and kNN, cannot be used: it requires
torchvision, which breaks beside the CPU torch this project pins; the four scores are a
few lines each on scikit-learn.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from .base import Countermeasure, Stage, Trainer


class _ScoreFilter(Countermeasure):
    budget: float = Field(0.05, gt=0, lt=1, description="share of the training set removed")
    stage: ClassVar[Stage] = "data"

    def scores(self, images: np.ndarray, labels: np.ndarray, trainer: Trainer) -> np.ndarray:
        raise NotImplementedError

    def keep(self, images: np.ndarray, labels: np.ndarray, trainer: Trainer) -> np.ndarray:
        return keep_all_but_top(self.scores(images, labels, trainer), self.budget)


def keep_all_but_top(scores: np.ndarray, budget: float) -> np.ndarray:
    """A mask keeping all but the ``budget`` share of the highest scores (ties by index)."""
    n = len(scores)
    drop = round(budget * n)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep = np.ones(n, dtype=bool)
    keep[order[:drop]] = False
    return keep


def last_linear(model):
    """The model's last linear layer: its input is the penultimate features."""
    from torch import nn

    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def penultimate(model, images: np.ndarray, device: str = "auto") -> np.ndarray:
    """The input of the model's last linear layer for every image: its features."""
    import torch

    from ..training import predict_logits

    last = last_linear(model)
    seen: list[torch.Tensor] = []
    handle = last.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().cpu()))
    try:
        predict_logits(model, images, device=device)
    finally:
        handle.remove()
    return torch.cat(seen).flatten(1).numpy().astype(np.float64)


class _ReferenceFilter(_ScoreFilter):
    """A filter that scores the training images with the held-out reference model."""

    needs_reference: ClassVar[bool] = True

    def revision(self) -> str | None:
        """0.7.6 and earlier scored with the clean model, trained on the victim's clean
        images themselves."""
        return "0.7.7: held-out reference"


class MSPFilter(_ReferenceFilter):
    """Remove the images the clean reference model is least sure of (1 - max softmax)."""

    name: Literal["filter-msp"]

    def scores(self, images, labels, trainer):
        from ..oracle.base import softmax
        from ..training import predict_logits

        p = softmax(predict_logits(trainer.reference, images, device=trainer.device))
        return 1 - p.max(axis=1)


class EnergyFilter(_ReferenceFilter):
    """Remove the images of highest energy, -logsumexp(logits), under the reference."""

    name: Literal["filter-energy"]

    def scores(self, images, labels, trainer):
        from scipy.special import logsumexp

        from ..training import predict_logits

        logits = predict_logits(trainer.reference, images, device=trainer.device)
        return -logsumexp(logits.astype(np.float64), axis=1)


class MahalanobisFilter(_ReferenceFilter):
    """Remove the images farthest from their class mean in the reference's features."""

    name: Literal["filter-mahalanobis"]

    def scores(self, images, labels, trainer):
        from sklearn.covariance import LedoitWolf

        f = penultimate(trainer.reference, images, trainer.device)
        classes = np.unique(labels)
        means = {c: f[labels == c].mean(axis=0) for c in classes}
        centred = f - np.stack([means[c] for c in labels])
        precision = LedoitWolf().fit(centred).precision_
        return np.einsum("ij,jk,ik->i", centred, precision, centred)


class KNNFilter(_ReferenceFilter):
    """Remove the images whose k-th nearest other training image (normalised reference
    features) is farthest."""

    name: Literal["filter-knn"]
    k: int = Field(10, ge=1, le=1_000)

    def scores(self, images, labels, trainer):
        from sklearn.neighbors import NearestNeighbors

        f = penultimate(trainer.reference, images, trainer.device)
        f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-12
        distances, _ = NearestNeighbors(n_neighbors=self.k + 1).fit(f).kneighbors(f)
        return distances[:, self.k]  # column 0 is the image itself


@contextmanager
def numpy_global_seed(seed: int) -> Iterator[None]:
    """numpy's global random state seeded from ``seed`` inside, restored after.

    ART's ActivationDefence builds scikit-learn's KMeans (and PCA) with no
    ``random_state``, so they draw from numpy's global state; ART gives no way to pass
    one, and unseeded, the same features gave a different 2-means split on every call.
    """
    saved = np.random.get_state()  # noqa: NPY002 (the legacy state is what ART reads)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(saved)  # noqa: NPY002


class _ARTFilter(_ScoreFilter):
    """An ART poisoning detector on a model trained on the unfiltered data."""

    def classifier(self, images, labels, trainer):
        """ART's PyTorchClassifier over the features (ART reads its last layer)."""
        import torch
        from art.estimators.classification import PyTorchClassifier
        from torch import nn

        from ..training import train_model

        model = trainer.unfiltered
        if model is None:  # the recipe's model on these images, as the victim was trained
            callback = (lambda *_: trainer.progress(1)) if trainer.progress else None
            model = train_model(
                trainer.fresh_model(), images, labels, trainer.config, progress=callback
            )
        last = last_linear(model)

        class Features(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.body = model

            def forward(self, x):
                seen = []
                h = last.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
                try:
                    self.body(x)
                finally:
                    h.remove()
                return seen[0].flatten(1)

        wrapper = nn.Sequential(Features(), nn.Identity()).eval()
        classes = int(labels.max()) + 1
        return PyTorchClassifier(
            model=wrapper,
            loss=nn.CrossEntropyLoss(),
            input_shape=images.shape[1:][::-1],
            nb_classes=classes,
            device_type="cpu",
            optimizer=torch.optim.SGD(wrapper.parameters(), lr=0.0),
        )

    @staticmethod
    def nchw(images: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))

    @staticmethod
    def onehot(labels: np.ndarray) -> np.ndarray:
        return np.eye(int(labels.max()) + 1)[labels]


class SpectralSignatureFilter(_ARTFilter):
    """ART's SpectralSignatureDefense (Tran et al. 2018) at ``budget`` per class."""

    name: Literal["filter-spectral"]

    def keep(self, images, labels, trainer):
        from art.defences.detector.poison import SpectralSignatureDefense

        defence = SpectralSignatureDefense(
            self.classifier(images, labels, trainer),
            self.nchw(images),
            self.onehot(labels),
            expected_pp_poison=float(self.budget),
            eps_multiplier=1.0,
            batch_size=256,
        )
        _, is_clean = defence.detect_poison()
        return np.asarray(is_clean, dtype=bool)


class ActivationClusteringFilter(_ARTFilter):
    """ART's ActivationDefence (Chen et al. 2019): 2-means per class on 10 ICA/PCA
    dimensions of the features; removes each class's smaller cluster first, then the
    images farthest from the larger cluster's centre, to ``budget`` of the class."""

    name: Literal["filter-activation-clustering"]

    def revision(self) -> str | None:
        """0.7.6 and earlier clustered from numpy's unseeded global state."""
        return "0.7.7: seeded clustering"

    def keep(self, images, labels, trainer):
        from art.defences.detector.poison import ActivationDefence

        defence = ActivationDefence(
            self.classifier(images, labels, trainer), self.nchw(images), self.onehot(labels)
        )
        defence.set_params(nb_clusters=2, nb_dims=10, reduce="PCA", cluster_analysis="smaller")
        with numpy_global_seed(trainer.seed):
            clusters, reduced = defence.cluster_activations()
        keep = np.ones(len(labels), dtype=bool)
        for c, (assign, points) in enumerate(zip(clusters, reduced, strict=True)):
            where = np.flatnonzero(labels == c)
            if len(where) == 0:
                continue
            assign = np.asarray(assign)
            big = np.bincount(assign, minlength=2).argmax()
            centre = points[assign == big].mean(axis=0)
            far = np.linalg.norm(points - centre, axis=1)
            score = (assign != big) * (far.max() + 1) + far  # smaller cluster first
            keep[where] = keep_all_but_top(score, self.budget)
        return keep
