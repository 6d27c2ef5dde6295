"""What a UBW verification reads: labelled test images of the watermarked dataset."""

from __future__ import annotations

import numpy as np

from ...datasets import LabelledImages, load_dataset
from ...errors import TracemarkError
from ...keys import Key
from ..base import AuditData, AuditSources


def load_testset(test) -> LabelledImages:
    """Labelled test images: given as they are, or read from a dataset path (its test split)."""
    return test if isinstance(test, LabelledImages) else load_dataset(test, split="test")


def check_test_labels(test: LabelledImages, num_classes: int | None) -> None:
    """Test labels must be classes of the watermarked dataset."""
    labels = np.asarray(test.labels)
    if num_classes is not None and labels.size and int(labels.max()) >= num_classes:
        raise TracemarkError(
            f"the test images have label {int(labels.max())}, but the watermarked dataset has "
            f"{num_classes} classes (0..{num_classes - 1}); give the test split of the same "
            "dataset"
        )


def read_audit_data(key: Key, sources: AuditSources) -> AuditData:
    """The test images a verification queries (``--testset``), checked against the key."""
    if sources.testset is None:
        raise TracemarkError("a UBW audit needs labelled test images (--testset)")
    test = load_testset(sources.testset)
    check_test_labels(test, key.typed_params().num_classes)
    return AuditData(testset=test, label=sources.label)
