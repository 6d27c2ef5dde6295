"""Watermark quality metrics on plain arrays (UBW paper, Definitions 1 and 2).

BA and ASR say whether the watermark is learned without hurting the model; the three
dispersibilities say how *untargeted* it is (natural-log entropies, maximum ln K):
D_p on predicted labels per true class, D_s on each softmax output, D_c on each true
class's mean softmax. Lemma 1: D_s <= D_c. No model code here.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import entropy

from ...errors import TracemarkError


def _labels(labels: np.ndarray, n: int | None = None) -> np.ndarray:
    y = np.asarray(labels).ravel()
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise TracemarkError(f"labels must be integers, got {y.dtype}")
    if n is not None and y.size != n:
        raise TracemarkError(f"expected {n} labels, got {y.size}")
    if y.size == 0:
        raise TracemarkError("no images to measure")
    return y.astype(np.int64)


def _probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise TracemarkError(f"probabilities must be a non-empty (N, K) array, got {p.shape}")
    if not np.isfinite(p).all() or p.min() < 0 or not np.allclose(p.sum(axis=1), 1, atol=1e-4):
        raise TracemarkError("probability rows must be finite, non-negative and sum to 1")
    return p


def benign_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """BA: share of clean test images classified correctly."""
    y = _labels(labels)
    return float(np.mean(_labels(predicted, y.size) == y))


def attack_success(
    predicted_triggered: np.ndarray, labels: np.ndarray, predicted_clean: np.ndarray
) -> tuple[float, float]:
    """(ASR-A, ASR-C): triggered images predicted != true label, over all / over correct.

    ASR-C counts only images the model classifies correctly when clean; NaN if none.
    """
    y = _labels(labels)
    wrong = _labels(predicted_triggered, y.size) != y
    correct = _labels(predicted_clean, y.size) == y
    asr_c = float(np.mean(wrong[correct])) if correct.any() else float("nan")
    return float(np.mean(wrong)), asr_c


def _class_weighted(values: dict[int, float], y: np.ndarray) -> float:
    counts = {c: int(np.count_nonzero(y == c)) for c in values}
    return float(sum(counts[c] * v for c, v in values.items()) / y.size)


def prediction_dispersibility(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """D_p (Definition 1): entropy of the predicted-label histogram per true class,
    averaged with weights |class| / N."""
    y = _labels(labels)
    pred = _labels(predicted, y.size)
    if pred.max() >= num_classes or pred.min() < 0:
        raise TracemarkError(f"predicted labels must lie in [0, {num_classes})")
    per_class = {
        int(c): float(entropy(np.bincount(pred[y == c], minlength=num_classes)))
        for c in np.unique(y)
    }
    return _class_weighted(per_class, y)


def sample_dispersibility(probs: np.ndarray) -> float:
    """D_s (Definition 2): mean entropy of the softmax outputs."""
    return float(np.mean(entropy(_probs(probs), axis=1)))


def class_dispersibility(probs: np.ndarray, labels: np.ndarray) -> float:
    """D_c (Definition 2): entropy of each true class's mean softmax, class-weighted."""
    p = _probs(probs)
    y = _labels(labels, p.shape[0])
    per_class = {int(c): float(entropy(p[y == c].mean(axis=0))) for c in np.unique(y)}
    return _class_weighted(per_class, y)


def watermark_metrics(
    clean_probs: np.ndarray,
    triggered_probs: np.ndarray,
    labels: np.ndarray,
    target: int | None = None,
) -> dict[str, float | int]:
    """BA, ASR-A, ASR-C, D_p, D_s, D_c from a model's softmax on clean/triggered test images.

    With a ``target`` (BadNets, Blended) the ASR and dispersibilities use only images
    whose true class is not the target, as the papers do, and ``target_rate`` (share
    sent to the target) is added. BA always uses every image.
    """
    clean = _probs(clean_probs)
    trig = _probs(triggered_probs)
    y = _labels(labels, clean.shape[0])
    if trig.shape != clean.shape:
        raise TracemarkError(f"clean {clean.shape} and triggered {trig.shape} outputs differ")
    k = clean.shape[1]
    pred_clean, pred_trig = clean.argmax(axis=1), trig.argmax(axis=1)
    keep = np.ones(y.size, dtype=bool) if target is None else y != target
    if not keep.any():
        raise TracemarkError("every test image is of the target class")
    asr_a, asr_c = attack_success(pred_trig[keep], y[keep], pred_clean[keep])
    out: dict[str, float | int] = {
        "BA": benign_accuracy(pred_clean, y),
        "ASR-A": asr_a,
        "ASR-C": asr_c,
        "D_p": prediction_dispersibility(pred_trig[keep], y[keep], k),
        "D_s": sample_dispersibility(trig[keep]),
        "D_c": class_dispersibility(trig[keep], y[keep]),
        "max_dispersibility": float(np.log(k)),
        "images": int(y.size),
    }
    if target is not None:
        out["target_rate"] = float(np.mean(pred_trig[keep] == target))
    return out
