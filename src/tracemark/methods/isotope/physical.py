"""Physical-object marks: photos that show the object against comparable photos without it.

The two folders hold different photos, so the test is Welch's unpaired one-sided t-test
on the y score. It is valid only if the two folders are otherwise comparable (same kinds
of scenes, classes and conditions); the verdict says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import TracemarkError
from ...keys import Key
from ...options import resolve
from ...stats import welch_greater
from ...verdict import Verdict
from ..base import build_verdict, check_budget
from .mark import NAME
from .options import IsotopeOptions
from .scores import describe_mode, query_scores


def physical_audit(
    oracle,
    with_mark: np.ndarray,
    without_mark: np.ndarray,
    label: int,
    *,
    key: Key | None = None,
    options: IsotopeOptions | None = None,
    **changes: Any,
) -> Verdict:
    """Do photos showing the object raise the model's belief in ``label``?

    ``with_mark``: photos showing the object; ``without_mark``: comparable photos
    without it. ``options`` (or ``alpha=``, ``access=``): :class:`IsotopeOptions`.
    """
    options = resolve(IsotopeOptions, options, changes)
    n_with, n_without = len(with_mark), len(without_mark)
    check_budget(
        oracle,
        n_with + n_without,
        f"{n_with} photos with the object and {n_without} without",
        "give fewer photos",
    )
    start = oracle.queries
    access = options.access
    a, mode = query_scores(oracle, np.asarray(with_mark, np.float32), label, None, access)
    b, _ = query_scores(oracle, np.asarray(without_mark, np.float32), label, mode, access)
    if len(a) < 2 or len(b) < 2:
        raise TracemarkError("Welch's test needs at least two photos in each folder")
    p_value, t_stat = welch_greater(a, b)
    sign = 1.0 if mode == "probability" else -1.0
    return build_verdict(
        NAME,
        key,
        options,
        p_value=p_value,
        queries=oracle.queries - start,
        label=label,
        label_source="given",
        effect=t_stat,
        effect_description="Welch t statistic: photos with the object score y higher",
        access=mode if mode == "probability" else "top-K ranks",
        test="physical-object mode: Welch's unpaired one-sided t-test (with vs without the mark)",
        statistics={
            "procedure": "physical",
            "score": describe_mode(mode),
            "with_mark_mean": sign * float(a.mean()),
            "without_mark_mean": sign * float(b.mean()),
            "with_mark_images": len(a),
            "without_mark_images": len(b),
        },
        notes=["valid only if both folders show comparable scenes apart from the object"],
    )
