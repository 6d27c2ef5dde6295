"""Small pieces the demos share: training progress, and audits under restricted access.

Every demo audits each model once per access mode (full probabilities, top-K, label
only). The models are deterministic, so the restricted audits need not query them
again: :class:`AnswerCache` memoises each model's answers by image fingerprint, and
each access mode gets its own counting view of it, wrapped with
:class:`~tracemark.oracle.TopK` or :class:`~tracemark.oracle.LabelOnly` as a real
deployment would be. The wrappers see exactly the answers the model gives, and their
query counts are what a stand-alone audit with that access would spend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import TracemarkError
from ..oracle.base import Oracle, check_images
from ..oracle.image_hash import image_hashes
from ..oracle.response import Response

ACCESSES: tuple[str, ...] = ("probabilities", "topk", "label")


def epoch_callback(progress_factory, name: str, epochs: int) -> Callable[..., None] | None:
    """A training progress callback that advances a ``train NAME`` bar once per epoch."""
    if progress_factory is None:
        return None
    advance = progress_factory(f"train {name}", epochs)
    return lambda *_: advance(1)


class AnswerCache:
    """The answers of one deterministic model, memoised by image SHA-256.

    :meth:`view` gives oracles that answer from the memo and ask the model only about
    images it has not answered yet. ``model_queries`` counts the images that reached
    the model; each view counts every image asked of it.
    """

    def __init__(self, model: Oracle) -> None:
        self.model = model
        self._rows: dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = {}
        self._form: tuple[str, int, bool, bool] | None = None  # mode, k, has probs, scores
        self._num_classes = 0
        self._softmax_applied = False

    @property
    def model_queries(self) -> int:
        return self.model.queries

    def view(self, passthrough: bool = False) -> CachedOracle:
        """A fresh counting oracle over the memo.

        ``passthrough``: send every batch to the model exactly as asked (and remember
        the answers), so this view's answers are bit for bit those of an uncached run;
        use it for the first access mode, and plain views for the others.
        """
        return CachedOracle(self, passthrough)

    def _remember(self, hashes: Sequence[str], response: Response) -> None:
        form = (response.mode, response.k, response.probs is not None, response.scores is not None)
        if self._form is None:
            self._form = form
        elif form != self._form:
            raise TracemarkError(
                f"the model answered with {response.mode} (k={response.k}) after answering "
                f"with {self._form[0]} (k={self._form[1]}); its answers cannot be memoised"
            )
        self._num_classes = response.num_classes
        self._softmax_applied |= response.softmax_applied
        for i, h in enumerate(hashes):
            self._rows[h] = (
                response.labels[i],
                None if response.probs is None else response.probs[i],
                None if response.scores is None else response.scores[i],
            )

    def _answer(self, hashes: Sequence[str]) -> Response:
        rows = [self._rows[h] for h in hashes]
        mode = self._form[0]
        return Response(
            mode=mode,  # type: ignore[arg-type]
            labels=np.stack([r[0] for r in rows]),
            probs=np.stack([r[1] for r in rows]) if self._form[2] else None,
            scores=np.stack([r[2] for r in rows]) if self._form[3] else None,
            num_classes=self._num_classes,
            softmax_applied=self._softmax_applied,
        )


class CachedOracle(Oracle):
    """One access mode's view of an :class:`AnswerCache` (see :meth:`AnswerCache.view`)."""

    def __init__(self, cache: AnswerCache, passthrough: bool = False) -> None:
        self.cache = cache
        self.passthrough = passthrough
        self.budget = None
        self._queries = 0

    @property
    def num_classes(self) -> int | None:  # type: ignore[override]
        return self.cache.model.num_classes

    @property
    def queries(self) -> int:
        return self._queries

    def query(self, images: np.ndarray) -> Response:
        images = check_images(images)
        if len(images) == 0:
            return self.cache.model.query(images)
        hashes = image_hashes(images)
        if self.passthrough:
            response = self.cache.model.query(images)
            self.cache._remember(hashes, response)
            self._queries += len(images)
            return response
        first: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if h not in self.cache._rows:
                first.setdefault(h, i)
        if first:
            idx = np.fromiter(first.values(), dtype=np.int64, count=len(first))
            self.cache._remember(list(first), self.cache.model.query(images[idx]))
        self._queries += len(images)
        return self.cache._answer(hashes)


def restrict(oracle: Oracle, access: str, top_k: int) -> Oracle:
    """``oracle`` as an audit with ``access`` sees it: as is, top-k, or labels only."""
    from ..oracle import LabelOnly, TopK

    if access == "probabilities":
        return oracle
    if access == "topk":
        return TopK(oracle, top_k)
    if access == "label":
        return LabelOnly(oracle)
    raise TracemarkError(f"unknown access {access!r}; use one of {ACCESSES}")


def check_accesses(accesses: Sequence[str], top_k: int) -> tuple[str, ...]:
    """The demo's access modes, validated (at least one, no repeats)."""
    accesses = tuple(accesses)
    bad = [a for a in accesses if a not in ACCESSES]
    if bad or not accesses or len(set(accesses)) != len(accesses):
        raise TracemarkError(f"accesses must be distinct modes among {ACCESSES}, got {accesses}")
    if "topk" in accesses and not 1 <= top_k <= 10:
        raise TracemarkError(f"top_k must be in [1, 10] (Fashion-MNIST classes), got {top_k}")
    return accesses


def access_name(access: str, top_k: int) -> str:
    """How a table names an access mode: probabilities, top-5, label."""
    return f"top-{top_k}" if access == "topk" else access


def access_block(
    audit_reads: Sequence[str],
    flagged: dict[str, int],
    trials: dict[str, int],
    queries_per_audit: float,
    queries: dict[str, int],
    **extra,
) -> dict:
    """One access mode's entry in a demo's ``by_access``: the same keys for every demo.

    ``flagged``/``trials``: counts for "tpr", "fpr" and "fpr_clean_model"; the rates
    are their ratios. ``audit_reads``: the verdicts' access strings (what the test used).
    """
    block = {"access": " / ".join(sorted(set(audit_reads)))}
    for name in ("tpr", "fpr", "fpr_clean_model"):
        block[name] = flagged[name] / trials[name] if trials[name] else None
    block |= {
        "flagged": dict(flagged),
        "trials": dict(trials),
        "queries_per_audit": queries_per_audit,
        "queries": dict(queries),
    }
    return block | extra


def access_table(result: dict, what: dict[str, str]):
    """The "TPR / FPR by access mode" table of a demo's ``by_access`` (a rich Table).

    ``what``: column headings for "tpr", "fpr" and "fpr_clean_model".
    """
    from rich.table import Table

    config = result["config"]
    table = Table(title=f"TPR / FPR by access mode (alpha = {config['alpha']})")
    table.add_column("access")
    table.add_column("test reads")
    for name in ("tpr", "fpr", "fpr_clean_model"):
        table.add_column(what[name], justify="right")
    table.add_column("queries/audit", justify="right")
    for access, block in result["by_access"].items():
        cells = [
            "-"
            if block[n] is None
            else f"{block[n]:.3f} ({block['flagged'][n]}/{block['trials'][n]})"
            for n in ("tpr", "fpr", "fpr_clean_model")
        ]
        table.add_row(
            access_name(access, config.get("top_k", 5)),
            block["access"],
            *cells,
            f"{block['queries_per_audit']:.0f}",
        )
    return table
