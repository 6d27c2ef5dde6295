"""The oracle: black-box query access to a classifier, counted and checked.

The core is deliberately small (like ART's ``BlackBoxClassifier``): a predict
function and a number of classes. :class:`ModelOracle` adds what every audit
needs and no model provides: input checks, batching, a query counter and budget,
and strict checks on what comes back, so a broken or mismatched model fails
loudly instead of producing a meaningless verdict.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from typing import Literal, get_args

import numpy as np

from ..errors import BudgetExceededError, TracemarkError
from .response import Response

OutputKind = Literal["auto", "probabilities", "logits"]

PROB_ATOL = 1e-6  # how far outside [0, 1] a probability may stray (float32 rounding)
ROW_SUM_ATOL = 1e-3  # how far from 1 a row of probabilities may sum
RENORM_ATOL = 1e-12  # rows closer than this to summing to 1 are left as they are


def balanced_batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of ceil(n / batch_size) batches of near-equal size covering n items.

    A model's float results can depend on the batch size (CPU kernels differ below about
    16 images), so a query is never split into full batches and a tiny tail: in-process
    and over HTTP, with other batch sizes, the batches stay large and the answers equal.
    """
    if n <= 0:
        return []
    count = -(-n // batch_size)
    edges = [round(i * n / count) for i in range(count + 1)]
    return list(itertools.pairwise(edges))


class Oracle(ABC):
    """Everything an audit learns about a model comes through :meth:`query`.

    ``num_classes`` is None until known. ``queries`` counts images sent to the model
    through this oracle; ``budget`` (None = unlimited) caps it.
    """

    num_classes: int | None
    budget: int | None

    @property
    @abstractmethod
    def queries(self) -> int:
        """Number of images queried so far."""

    @abstractmethod
    def query(self, images: np.ndarray) -> Response:
        """The model's answer for (N, H, W, C) float32 images in [0, 1]."""

    @property
    def remaining(self) -> int | None:
        """Queries left in the budget (None when unlimited)."""
        return None if self.budget is None else max(0, self.budget - self.queries)


def check_images(images: np.ndarray) -> np.ndarray:
    """Validate a query batch and return it as C-contiguous float32 (N, H, W, C)."""
    if not isinstance(images, np.ndarray):
        raise TracemarkError(
            f"images must be a numpy array of shape (N, H, W, C), got {type(images).__name__}; "
            "convert with np.asarray(...) (torch tensors: .permute(0, 2, 3, 1).numpy())"
        )
    if images.ndim != 4:
        hint = " (a single image? add a batch axis: images[None])" if images.ndim == 3 else ""
        raise TracemarkError(
            f"images must be 4-D (N, H, W, C), got shape {images.shape}{hint}; greyscale "
            "images need a channel axis of size 1"
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise TracemarkError(
            f"images must be floats in [0, 1], got dtype {images.dtype}; for 8-bit images use "
            "images.astype(np.float32) / 255"
        )
    if images.shape[0] and min(images.shape[1:]) == 0:
        raise TracemarkError(f"images have an empty axis: shape {images.shape}")
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.size:
        lo, hi = images.min(), images.max()
        if np.isnan(lo) or np.isnan(hi):
            raise TracemarkError("images contain NaN values; every pixel must be in [0, 1]")
        if lo < 0 or hi > 1:
            raise TracemarkError(
                f"image values must be in [0, 1], got min {lo:g} and max {hi:g}; scale 8-bit "
                "images by 1/255, and undo any normalisation (the model should normalise itself)"
            )
    return images


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable row-wise softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _probability_problem(out: np.ndarray) -> str | None:
    """Why ``out`` is not a batch of probability rows, or None when it is."""
    lo, hi = out.min(), out.max()
    if lo < -PROB_ATOL or hi > 1 + PROB_ATOL:
        return f"values range over [{lo:.4g}, {hi:.4g}], outside [0, 1]"
    sums = out.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1)))
    if abs(sums[worst] - 1) > ROW_SUM_ATOL:
        return f"row {worst} sums to {sums[worst]:.6g}, not 1"
    return None


class ModelOracle(Oracle):
    """Base for oracles backed by a raw predict function (subclasses implement ``_predict``).

    ``outputs`` says what the model returns: ``"probabilities"`` (checked, then
    renormalised exactly), ``"logits"`` (softmaxed; responses record
    ``softmax_applied``) or ``"auto"``: decided on the first answer (valid probability
    rows are taken as probabilities, anything else as logits) and then held to.
    ``num_classes`` is inferred from the first answer when None.
    """

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        batch_size: int = 256,
        outputs: OutputKind = "auto",
        budget: int | None = None,
    ) -> None:
        if num_classes is not None and (not is_int(num_classes) or num_classes < 2):
            raise TracemarkError(f"num_classes must be an int >= 2 (or None), got {num_classes!r}")
        if not is_int(batch_size) or batch_size < 1:
            raise TracemarkError(f"batch_size must be a positive int, got {batch_size!r}")
        if outputs not in get_args(OutputKind):
            raise TracemarkError(f"outputs must be one of {get_args(OutputKind)}, got {outputs!r}")
        if budget is not None and (not is_int(budget) or budget < 0):
            raise TracemarkError(f"budget must be a non-negative int (or None), got {budget!r}")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.batch_size = int(batch_size)
        self.outputs = outputs
        self.budget = None if budget is None else int(budget)
        self._queries = 0
        self._kind: Literal["probabilities", "logits"] | None = (
            None if outputs == "auto" else outputs
        )

    def __repr__(self) -> str:
        budget = "" if self.budget is None else f", budget={self.budget}"
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, outputs={self.outputs!r}, "
            f"queries={self._queries}{budget})"
        )

    @abstractmethod
    def _predict(self, batch: np.ndarray) -> np.ndarray:
        """Raw model outputs (n, C) for a float32 (n, H, W, C) batch."""

    @property
    def queries(self) -> int:
        return self._queries

    @property
    def output_kind(self) -> Literal["probabilities", "logits"] | None:
        """What the model's outputs were taken to be (None while ``"auto"`` is undecided)."""
        return self._kind

    def query(self, images: np.ndarray) -> Response:
        """Check the images and the budget, then ask the model batch by batch."""
        images = check_images(images)
        n = images.shape[0]
        if n == 0:
            c = self.num_classes or 0
            return Response.from_probabilities(
                np.zeros((0, c)), c, softmax_applied=self._kind == "logits"
            )
        if self.budget is not None and self._queries + n > self.budget:
            raise BudgetExceededError(
                f"query budget exceeded: {self._queries} of {self.budget} queries used, and "
                f"{n} more asked ({self.budget - self._queries} left). Nothing was queried; "
                "raise the budget or query fewer images"
            )
        parts = []
        for start, end in balanced_batches(n, self.batch_size):
            batch = images[start:end]
            self._queries += batch.shape[0]  # the model has seen them, whatever happens next
            try:
                raw = self._predict(batch)
            except TracemarkError:
                raise
            except Exception as exc:
                raise TracemarkError(
                    f"the model failed on a batch of shape {batch.shape} (N, H, W, C): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            parts.append(self._to_probabilities(raw, batch.shape[0]))
        probs = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return Response.from_probabilities(
            probs, self.num_classes, softmax_applied=self._kind == "logits"
        )

    def _to_probabilities(self, raw: object, n: int) -> np.ndarray:
        """Check one batch of raw outputs and turn it into probability rows."""
        if hasattr(raw, "detach"):  # a torch tensor from a callable
            raw = raw.detach().cpu().numpy()
        try:
            out = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TracemarkError(
                f"the model's outputs are not numeric ({type(raw).__name__}): {exc}"
            ) from None
        if out.ndim != 2 or out.shape[0] != n:
            raise TracemarkError(
                f"the model returned outputs of shape {out.shape} for {n} images; expected "
                f"({n}, num_classes) scores. A model that returns only labels can be wrapped: "
                "return one-hot rows and restrict the oracle with LabelOnly"
            )
        c = out.shape[1]
        if self.num_classes is None:
            if c < 2:
                raise TracemarkError(
                    f"the model returned {c} score per image; a classifier needs at least 2 "
                    "(for a single sigmoid output return [1 - p, p])"
                )
            self.num_classes = c
        elif c != self.num_classes:
            source = getattr(self, "classes_source", None) or "given, or seen in earlier answers"
            raise TracemarkError(
                f"the model returned {c} scores per image, but this oracle expects "
                f"num_classes={self.num_classes} ({source})"
            )
        if not np.isfinite(out).all():
            bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
            raise TracemarkError(
                f"the model returned non-finite outputs (NaN or inf), first in row {bad}: "
                "check the model and its input preprocessing"
            )
        if self._kind is None:  # "auto": decide once, at the first answer
            self._kind = "logits" if _probability_problem(out) else "probabilities"
        if self._kind == "logits":
            return softmax(out)
        problem = _probability_problem(out)
        if problem:
            if self.outputs == "auto":
                raise TracemarkError(
                    f"the model's first answer looked like probabilities, but this one does not "
                    f"({problem}); pass outputs='logits' or outputs='probabilities' explicitly"
                )
            raise TracemarkError(
                f"the model's outputs are not probabilities ({problem}); if it returns logits "
                "(unnormalised scores), use outputs='logits' (or 'auto')"
            )
        np.clip(out, 0.0, 1.0, out=out)
        # Renormalise only rows that need it: rows already summing to 1 keep their exact
        # bits, so probabilities relayed over HTTP equal the ones computed in-process.
        sums = out.sum(axis=1)
        off = np.abs(sums - 1.0) > RENORM_ATOL
        if off.any():
            out[off] /= sums[off, None]
        return out


def expect_classes(oracle: object, n: int | None, source: str) -> None:
    """Hold ``oracle`` to ``n`` classes, named by ``source`` (``--class-names``, the key)
    in the error a model with another number of classes draws."""
    if n is None or not hasattr(oracle, "num_classes"):
        return
    known = oracle.num_classes
    if known is not None and known != n:
        raise TracemarkError(
            f"the model has {known} classes, but {source} says {n}; they do not belong together"
        )
    if known is None:
        oracle.num_classes = int(n)
        oracle.classes_source = source


def is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
