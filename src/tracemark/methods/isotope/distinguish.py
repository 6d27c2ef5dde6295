"""The isotope distinguisher V_D: does each of several known marks shift its own class most?

For marks t_j (class y_j) and t_k, a paired one-sided test asks whether t_j shifts y_j
more than t_k does, on aux images of neither class; two marks are told apart when both
directions hold (an intersection-union test).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...errors import TracemarkError
from ...oracle.response import Response
from ...stats import paired_greater
from .marks import Mark, blend
from .options import IsotopeOptions
from .params import IsotopeParams
from .scores import QUERY_BATCH, class_scores, score_mode


@dataclass
class Distinction:
    """V_D: pairwise one-sided paired tests between marks known to a third party."""

    labels: list[int]
    p_values: np.ndarray  # [j, k]: p of "t_j shifts y_j more than t_k does"
    alpha: float
    queries: int

    @property
    def distinguished(self) -> np.ndarray:
        """[j, k] True when both directions hold at alpha (an intersection-union test)."""
        ok = self.p_values <= self.alpha
        both = ok & ok.T
        np.fill_diagonal(both, False)
        return both

    def all_distinguished(self) -> bool:
        m = len(self.labels)
        return bool(self.distinguished.sum() == m * (m - 1))


def distinguish(
    oracle,
    marks: Sequence[Mark],
    labels: Sequence[int],
    aux: np.ndarray,
    visibility: float | Sequence[float] | None = None,
    *,
    alpha: float | None = None,
    aux_labels: np.ndarray | None = None,
    access: str = "auto",
) -> Distinction:
    """For marks t_j (class y_j): does t_j shift y_j more than t_k does, and the reverse?

    Each mark is blended into the same aux images once; the test for (j, k) uses aux
    images of neither class (by ``aux_labels``, else by the unmarked prediction).
    """
    alpha = IsotopeOptions().alpha if alpha is None else alpha  # the defaults' one home
    if visibility is None:
        visibility = IsotopeParams.model_fields["visibility"].default
    if len(marks) != len(labels) or len(marks) < 2:
        raise TracemarkError("distinguish needs at least two marks, each with its class")
    aux = np.asarray(aux, dtype=np.float32)
    vis = [visibility] * len(marks) if np.isscalar(visibility) else list(visibility)
    start = oracle.queries
    base = oracle.query(aux)
    mode = score_mode(base, access)
    classes = aux_labels if aux_labels is not None else base.top1()
    responses = [
        [
            oracle.query(blend(aux[s : s + QUERY_BATCH], m, v))
            for s in range(0, len(aux), QUERY_BATCH)
        ]
        for m, v in zip(marks, vis, strict=True)
    ]
    merged = [Response.concat(r) for r in responses]
    m = len(marks)
    p = np.ones((m, m))
    for j in range(m):
        for k in range(m):
            if j == k:
                continue
            keep = (classes != labels[j]) & (classes != labels[k])
            if keep.sum() < 2:
                raise TracemarkError("too few aux images outside both marks' classes")
            a = class_scores(merged[j].take(keep), labels[j], mode)
            b = class_scores(merged[k].take(keep), labels[j], mode)
            p[j, k] = paired_greater(a, b)
    return Distinction(list(labels), p, alpha, oracle.queries - start)
