"""One-call entry points for dataset publishers: watermark a release, verify, report.

import tracemark
tracemark.watermark_dataset("fashion-mnist", "release/", "release.key", variant="ubw-p")
verdict = tracemark.verify("suspect.onnx", "release.key", "release/")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .datasets import LabelledImages, load_dataset
from .errors import TracemarkError
from .fsutil import check_output
from .keys import Key, UbwVariant, load_key
from .oracle.base import expect_classes
from .oracle.open import open_oracle
from .verdict import Verdict

PathLike = str | os.PathLike
ProgressFactory = Callable[[str, int], Callable[[int], None]]


def _ubw_key(key: Key | PathLike) -> Key:
    return key if isinstance(key, Key) else load_key(key, method="ubw")


def _testset(test: PathLike | LabelledImages) -> LabelledImages:
    return test if isinstance(test, LabelledImages) else load_dataset(test, split="test")


def watermark_dataset(
    src: PathLike,
    out: PathLike,
    key_out: PathLike,
    variant: UbwVariant = "ubw-p",
    *,
    force: bool = False,
    device: str = "auto",
    progress_factory: ProgressFactory | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Watermark the training split of ``src`` into ``out`` (same layout) and write the key.

    ``params`` are :class:`~tracemark.keys.UbwParams` fields (gamma, trigger, target,
    epsilon, ...). Nothing is overwritten unless ``force``; the key (0600) is written
    only after the release, so a failed run leaves neither behind.
    """
    from .dataset_writers import write_release
    from .methods import ubw

    check_output(key_out, force=force, protect=[src] if Path(src).exists() else [], what="key")
    if Path(out).exists() and not force:
        raise TracemarkError(f"{out} already exists; pass --force to replace it")
    key = Key.generate("ubw", variant=variant, **params)
    data = load_dataset(src, split="train")
    release, key = ubw.watermark(data, key, progress_factory=progress_factory, device=device)
    files = write_release(release, src, out, force=force)
    key.save(key_out, force=force)
    p = key.typed_params()
    return {
        "variant": p.variant,
        "trigger": p.trigger,
        "gamma": p.gamma,
        "images": len(release),
        "poisoned": len(p.poisoned),
        "labels_changed": int(np.count_nonzero(release.labels != data.labels)),
        "max_pixel_change": float(np.abs(release.images - data.images).max()),
        "release": files,
        "key": str(key_out),
        "key_commitment": key.commitment(),
        "release_sha256": p.release_sha256,
    }


def verify(
    model,
    key: Key | PathLike,
    testset: PathLike | LabelledImages,
    *,
    m: int = 100,
    tau: float = 0.25,
    alpha: float = 0.01,
    trigger: Literal["key", "independent"] = "key",
    access: Literal["auto", "probabilities", "topk", "label"] = "auto",
    null_triggers: int = 0,
    outputs: Literal["auto", "probabilities", "logits"] = "auto",
    budget: int | None = None,
) -> Verdict:
    """Was ``model`` trained on the dataset watermarked with ``key``?

    ``testset``: labelled images the model did not train on ("fashion-mnist", a release
    folder with a test split, class folders, .npz). ``trigger="independent"`` runs the
    Independent-T control; ``null_triggers`` = J adds the rank calibration against J
    never-published triggers. See :func:`tracemark.methods.ubw.verify`.
    """
    from .methods import ubw

    key = _ubw_key(key)
    oracle = open_oracle(model, outputs, budget)
    n = key.typed_params().num_classes  # also a label-only endpoint's classes
    expect_classes(oracle, n, f"the key (num_classes = {n})")
    test = _testset(testset)
    check_test_labels(test, n)
    return ubw.verify(
        oracle,
        key,
        test,
        m=m,
        tau=tau,
        alpha=alpha,
        trigger=trigger,
        access=access,
        null_triggers=null_triggers,
    )


def check_test_labels(test: LabelledImages, num_classes: int | None) -> None:
    """Test labels must be classes of the watermarked dataset."""
    labels = np.asarray(test.labels)
    if num_classes is not None and labels.size and int(labels.max()) >= num_classes:
        raise TracemarkError(
            f"the test images have label {int(labels.max())}, but the watermarked dataset has "
            f"{num_classes} classes (0..{num_classes - 1}); give the test split of the same "
            "dataset"
        )


def watermark_report(
    model,
    key: Key | PathLike,
    testset: PathLike | LabelledImages,
    *,
    trigger: Literal["key", "independent"] = "key",
    limit: int | None = None,
    outputs: Literal["auto", "probabilities", "logits"] = "auto",
) -> dict[str, Any]:
    """BA, ASR-A, ASR-C, D_p, D_s, D_c of ``model`` on ``testset`` (needs probabilities)."""
    from .methods import ubw

    key = _ubw_key(key)
    test = _testset(testset)
    n = key.typed_params().num_classes
    check_test_labels(test, n)
    if limit is not None:
        test = test.subset(np.arange(min(limit, len(test))))
    oracle = open_oracle(model, outputs, None)
    expect_classes(oracle, n, f"the key (num_classes = {n})")

    def probs(images: np.ndarray) -> np.ndarray:
        resp = oracle.query(images)
        if resp.mode != "probabilities":
            raise TracemarkError("watermark-report needs a model that returns probabilities")
        return resp.probs

    metrics = ubw.report(probs, key, test, which=trigger)
    p = key.typed_params()
    return {"variant": p.variant, "trigger": trigger, **metrics, "queries": oracle.queries}
