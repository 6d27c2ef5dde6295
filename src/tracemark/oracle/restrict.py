"""Wrappers that make an oracle reveal less: top-k lists, labels only, noisy probabilities.

They simulate the restricted access real deployments give (APIs that return a
label, or rounded/perturbed scores), so an audit can be tested against each.
Wrappers compose, e.g. ``LabelOnly(GaussianNoise(TorchModuleOracle(model), ...))``;
the query count and budget are always the innermost oracle's.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..errors import TracemarkError
from .base import Oracle, is_int, softmax
from .response import Response


class OracleWrapper(Oracle):
    """An oracle that answers through ``inner`` and transforms its responses."""

    def __init__(self, inner: Oracle) -> None:
        if not isinstance(inner, Oracle):
            raise TracemarkError(
                f"{type(self).__name__} wraps an Oracle, got {type(inner).__name__}; "
                "wrap plain functions with CallableOracle first"
            )
        self.inner = inner

    @property
    def num_classes(self) -> int | None:  # type: ignore[override]
        return self.inner.num_classes

    @property
    def queries(self) -> int:
        return self.inner.queries

    @property
    def budget(self) -> int | None:  # type: ignore[override]
        return self.inner.budget

    @budget.setter
    def budget(self, value: int | None) -> None:
        self.inner.budget = value

    def query(self, images: np.ndarray) -> Response:
        """The inner oracle's response, transformed."""
        return self._transform(self.inner.query(images))

    def _transform(self, response: Response) -> Response:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"


class TopK(OracleWrapper):
    """Reveal only the k best classes per image, with their scores unless ``with_scores=False``."""

    def __init__(self, inner: Oracle, k: int, with_scores: bool = True) -> None:
        super().__init__(inner)
        if not is_int(k) or k < 1:
            raise TracemarkError(f"k must be a positive int, got {k!r}")
        c = inner.num_classes
        if c is not None and k > c:
            raise TracemarkError(f"k={k} exceeds the model's {c} classes")
        self.k = int(k)
        self.with_scores = bool(with_scores)

    def _transform(self, r: Response) -> Response:
        if r.mode == "label":
            raise TracemarkError(
                "cannot take the top-k of a label-only oracle: it reveals one label; "
                "apply TopK inside LabelOnly, not outside"
            )
        if len(r) and self.k > r.k:
            have = f"only {r.k} classes" if r.mode == "probabilities" else f"only its top {r.k}"
            raise TracemarkError(f"cannot reveal the top {self.k}: the inner oracle reveals {have}")
        if self.with_scores and r.scores is None:
            raise TracemarkError(
                "the inner oracle reveals no scores; use TopK(..., with_scores=False)"
            )
        k = min(self.k, r.k) if len(r) == 0 else self.k
        return Response(
            mode="topk",
            labels=r.labels[:, :k],
            probs=None,
            scores=r.scores[:, :k] if self.with_scores else None,
            num_classes=r.num_classes,
            softmax_applied=r.softmax_applied,
        )

    def __repr__(self) -> str:
        return f"TopK({self.inner!r}, k={self.k}, with_scores={self.with_scores})"


class LabelOnly(OracleWrapper):
    """Reveal only the top-1 label: the most restricted (and most common API) access."""

    def _transform(self, r: Response) -> Response:
        return Response(
            mode="label",
            labels=r.labels[:, :1],
            probs=None,
            scores=None,
            num_classes=r.num_classes,
            softmax_applied=r.softmax_applied,
        )


class GaussianNoise(OracleWrapper):
    """Perturb the probabilities with N(0, sigma^2) noise (a common output-perturbation defence).

    ``space="probabilities"``: noise is added to each probability, then negatives are
    clipped to 0 and rows renormalised (a row whose every entry went negative becomes
    one-hot at its largest noisy value). ``space="logits"``: noise is added to the
    log-probabilities, then softmaxed. ``rng`` is explicit so runs are reproducible.
    """

    def __init__(
        self,
        inner: Oracle,
        sigma: float,
        rng: np.random.Generator,
        space: Literal["probabilities", "logits"] = "probabilities",
    ) -> None:
        super().__init__(inner)
        if not isinstance(sigma, (int, float, np.floating, np.integer)) or not (
            np.isfinite(sigma) and sigma >= 0
        ):
            raise TracemarkError(f"sigma must be a finite number >= 0, got {sigma!r}")
        if not isinstance(rng, np.random.Generator):
            raise TracemarkError(
                f"rng must be a numpy Generator, e.g. np.random.default_rng(seed); "
                f"got {type(rng).__name__}"
            )
        if space not in ("probabilities", "logits"):
            raise TracemarkError(f"space must be 'probabilities' or 'logits', got {space!r}")
        self.sigma = float(sigma)
        self.rng = rng
        self.space = space

    def _transform(self, r: Response) -> Response:
        _need_probabilities(r, type(self).__name__)
        return perturb(r, self.rng.normal(0.0, self.sigma, size=r.probs.shape), self.space)

    def __repr__(self) -> str:
        return f"GaussianNoise({self.inner!r}, sigma={self.sigma}, space={self.space!r})"


def _need_probabilities(r: Response, who: str) -> None:
    if r.mode != "probabilities":
        raise TracemarkError(
            f"{who} needs probabilities, but the inner oracle is {r.mode}-only; "
            f"apply {who} first, then TopK or LabelOnly around it"
        )


def perturb(r: Response, noise: np.ndarray, space: str) -> Response:
    """``r``'s probabilities with ``noise`` added: to each probability (negatives clipped
    to 0, rows renormalised; a row with no positive entry becomes one-hot at its largest
    noisy value), or to the log-probabilities (then softmaxed)."""
    if space == "logits":
        with np.errstate(divide="ignore"):
            noisy = softmax(np.log(r.probs) + noise)
    else:
        raw = r.probs + noise
        noisy = np.clip(raw, 0.0, None)
        sums = noisy.sum(axis=1, keepdims=True)
        dead = sums[:, 0] == 0
        if dead.any():
            noisy[dead] = np.eye(r.num_classes)[raw[dead].argmax(axis=1)]
            sums[dead] = 1.0
        noisy /= sums
    return Response.from_probabilities(noisy, r.num_classes, r.softmax_applied)


class ImageSeededNoise(OracleWrapper):
    """Gaussian noise on the probabilities, the same for the same image every time.

    A server that draws its noise from each input (seeded by a hash of the image) cannot
    be averaged away by asking again. ``seed`` (hex) keys the draws; everything else is
    as :class:`GaussianNoise`.
    """

    def __init__(
        self,
        inner: Oracle,
        sigma: float,
        seed: str,
        space: Literal["probabilities", "logits"] = "probabilities",
    ) -> None:
        super().__init__(inner)
        if not (np.isfinite(sigma) and sigma >= 0):
            raise TracemarkError(f"sigma must be a finite number >= 0, got {sigma!r}")
        if space not in ("probabilities", "logits"):
            raise TracemarkError(f"space must be 'probabilities' or 'logits', got {space!r}")
        self.sigma, self.seed, self.space = float(sigma), seed, space

    def query(self, images: np.ndarray) -> Response:
        from ..rng import derive
        from .image_hash import image_hashes

        r = self.inner.query(images)
        _need_probabilities(r, type(self).__name__)
        noise = np.stack(
            [
                derive(self.seed, "oracle/image-seeded-noise", h).normal(
                    0.0, self.sigma, r.num_classes
                )
                for h in image_hashes(np.asarray(images, dtype=np.float32))
            ]
        )
        return perturb(r, noise, self.space)

    def __repr__(self) -> str:
        return f"ImageSeededNoise({self.inner!r}, sigma={self.sigma})"


class MapProbabilities(OracleWrapper):
    """Answer ``transform(probabilities)``: rounding or a temperature a deployment applies
    (``what`` names it in errors and in ``repr``)."""

    def __init__(self, inner: Oracle, transform, what: str) -> None:
        super().__init__(inner)
        self.transform, self.what = transform, what

    def _transform(self, r: Response) -> Response:
        _need_probabilities(r, self.what)
        return Response.from_probabilities(self.transform(r.probs), r.num_classes)

    def __repr__(self) -> str:
        return f"MapProbabilities({self.inner!r}, {self.what})"
