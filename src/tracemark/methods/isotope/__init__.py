"""Data Isotopes: a spurious-feature mark blended into a share of an owner's images.

Marking (:mod:`.mark`) blends the key's mark, one random draw from a bank of marks, into
a share p of the images. The calibrated audit (:mod:`.audit`) ranks the shift the mark
causes towards the owner's class among the shifts of never-published marks from the same
bank, which makes its p-value exact. The paper's verifier (:mod:`.paper`), the
physical-object test (:mod:`.physical`) and the distinguisher (:mod:`.distinguish`) are
here too.

``METHOD`` is the object the registry finds; the functions below are the method's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import TracemarkError
from ...keys import Key
from ...options import resolve
from ...oracle.open import ModelOptions
from ...verdict import Verdict
from ..base import AuditData, AuditOptions, AuditSources, MarkedData, Progress
from .audit import audit
from .distinguish import Distinction, distinguish
from .inputs import isotope_flags, read_audit_data
from .mark import (
    NAME,
    PURPOSE_EXTERNAL,
    PURPOSE_PAPER_EXTERNAL,
    draw_mark,
    external_marks,
    key_mark,
    mark,
    select_marked,
)
from .options import IsotopeOptions
from .paper import PURPOSE_PAPER_SAMPLE, paper_rounds, paper_vote
from .params import IsotopeParams
from .physical import physical_audit
from .scores import (
    AuxPool,
    LabelDiscovery,
    ShiftNull,
    build_aux_pool,
    class_scores,
    discover_label,
    external_null,
    mark_shift,
    query_scores,
    score_mode,
)

__all__ = [
    "METHOD",
    "PURPOSE_EXTERNAL",
    "PURPOSE_PAPER_EXTERNAL",
    "PURPOSE_PAPER_SAMPLE",
    "AuxPool",
    "Distinction",
    "IsotopeOptions",
    "IsotopeParams",
    "LabelDiscovery",
    "ShiftNull",
    "audit",
    "build_aux_pool",
    "class_scores",
    "discover_label",
    "distinguish",
    "draw_mark",
    "external_marks",
    "external_null",
    "isotope_flags",
    "key_mark",
    "mark",
    "mark_shift",
    "paper_rounds",
    "paper_vote",
    "physical_audit",
    "query_scores",
    "score_mode",
    "select_marked",
]


class Isotope:
    """Data Isotopes behind the shared method surface (see :class:`~..base.Method`)."""

    name = NAME
    kind = "images"
    params = IsotopeParams
    options = IsotopeOptions
    needs: tuple[str, ...] = ()
    progress_unit = "external marks"

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
        """Blend the key's mark into its share p of the images; every image is published."""
        if publish is not None:
            raise TracemarkError("--publish is for tracker keys; isotope keys choose their share p")
        marked, chosen = mark(images, key, ids=ids)
        return MarkedData(marked, np.ones(len(chosen), dtype=bool), chosen, key, labels)

    def audit(
        self,
        oracle,
        key: Key,
        data: AuditData,
        options: AuditOptions | None = None,
        progress: Progress | None = None,
    ) -> Verdict:
        options = resolve(IsotopeOptions, options, {})
        aux = data.need("aux", "the isotope audit needs auxiliary images of the same domain")
        if options.procedure == "physical":
            if data.label is None or data.images is None:
                raise TracemarkError(
                    "physical mode needs --label, --marked (photos with the object) "
                    "and --aux (comparable photos without it)"
                )
            without = getattr(aux, "images", aux)
            return physical_audit(
                oracle, data.images, without, data.label, key=key, options=options
            )
        return audit(
            oracle,
            key,
            data.images,
            aux,
            label=data.label,
            carries_mark=data.carries_mark,
            options=options,
            progress=progress,
        )

    def read(self, key: Key, sources: AuditSources, model: ModelOptions) -> AuditData:
        return read_audit_data(key, sources, model)

    def progress_steps(self, options: IsotopeOptions) -> int:
        return options.cap  # a sequential audit may stop well before


METHOD = Isotope()
