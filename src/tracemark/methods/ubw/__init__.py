"""Untargeted Backdoor Watermarks (UBW-P, UBW-C) and the targeted baselines, for datasets.

A dataset publisher watermarks a share gamma of a labelled dataset before release
(:mod:`.watermark`; UBW-C by gradient matching in :mod:`.clean_label`); a model trained on
the release answers triggered inputs *dispersedly*. Verification (:mod:`.verify`) asks
whether the trigger costs the model its correct answers by more than a margin tau.
:mod:`.metrics` measures BA, ASR and the dispersibilities.

``METHOD`` is the object the registry finds; the functions below are the method's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...datasets import LabelledImages
from ...keys import Key
from ...oracle.base import expect_classes
from ...oracle.open import ModelOptions
from ...stats import calibration_size
from ...verdict import Verdict
from ..base import AuditData, AuditOptions, AuditSources, MarkedData, Progress, check_key
from .inputs import check_test_labels, load_testset, read_audit_data
from .key_trigger import NAME, TriggerChoice, make_trigger, patch_size
from .metrics import watermark_metrics
from .options import UbwOptions
from .params import UbwParams, UbwVariant
from .triggers import CORNER_PATTERN, Trigger, poison_count, random_positions, upscale
from .verify import report, select_correct, triggered, verify
from .watermark import pixels_sha256, watermark

__all__ = [
    "CORNER_PATTERN",
    "METHOD",
    "Trigger",
    "TriggerChoice",
    "UbwOptions",
    "UbwParams",
    "UbwVariant",
    "calibration_size",
    "check_test_labels",
    "load_testset",
    "make_trigger",
    "patch_size",
    "pixels_sha256",
    "poison_count",
    "random_positions",
    "report",
    "select_correct",
    "triggered",
    "upscale",
    "verify",
    "watermark",
    "watermark_metrics",
]


class Ubw:
    """UBW behind the shared method surface (see :class:`~..base.Method`)."""

    name = NAME
    kind = "dataset"
    params = UbwParams
    options = UbwOptions
    needs = ("testset",)
    progress_unit = "verification"

    def mark(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        key: Key,
        *,
        ids: Sequence[int | str] | None = None,
        labels: np.ndarray | None = None,
        publish: int | None = None,
        progress_factory=None,
        device: str = "auto",
    ) -> MarkedData:
        """Watermark a labelled dataset; every image is released, the key completed.

        ``images`` may be a :class:`~tracemark.datasets.LabelledImages` (its class names
        then fix the number of classes); otherwise give ``labels``.
        """
        from ...errors import TracemarkError

        if isinstance(images, LabelledImages):
            data = images
        elif labels is None:
            raise TracemarkError("a UBW watermark takes a whole labelled dataset (labels=...)")
        else:
            ids = None if ids is None else [str(i) for i in ids]
            data = LabelledImages(np.asarray(images, np.float32), np.asarray(labels), [], ids)
        if publish is not None:
            raise TracemarkError("--publish is for tracker keys; a dataset watermark releases all")
        release, completed = watermark(data, key, progress_factory=progress_factory, device=device)
        flags = np.zeros(len(release), dtype=bool)
        flags[completed.typed_params().poisoned] = True
        return MarkedData(
            release.images, np.ones(len(release), dtype=bool), flags, completed, release.labels
        )

    def audit(
        self,
        oracle,
        key: Key,
        data: AuditData,
        options: AuditOptions | None = None,
        progress: Progress | None = None,
    ) -> Verdict:
        n = check_key(key, NAME).num_classes  # also a label-only endpoint's classes
        expect_classes(oracle, n, f"the key (num_classes = {n})")
        test = data.need("testset", "a UBW audit needs labelled test images (--testset)")
        result = verify(oracle, key, test, options=options)
        if progress is not None:
            progress(1)
        return result

    def read(self, key: Key, sources: AuditSources, model: ModelOptions) -> AuditData:
        return read_audit_data(key, sources)

    def progress_steps(self, options: UbwOptions) -> int:
        return 1

    def measure(self, predict_probs, key: Key, test: LabelledImages) -> dict:
        """BA, ASR-A, ASR-C and the dispersibilities of a model (full probabilities)."""
        return report(predict_probs, key, test)

    def audit_revision(self, params: dict, options: dict) -> str | None:
        """What changed in the audit of keys with ``params`` (and spec ``options``) since
        the evaluation's COMPUTE_VERSION: 0.7.0 draws UBW-C's patch pattern from the key
        and calibrates its verification (unless ``null_triggers`` is given)."""
        trigger = UbwParams.model_validate(params).trigger
        if trigger != "patch":
            return None
        return "0.7.0: drawn patch pattern" + (
            "" if options.get("null_triggers") else ", calibrated"
        )


METHOD = Ubw()
