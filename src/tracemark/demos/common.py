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

from ..errors import TracemarkError
from ..oracle.memo import ACCESSES, AnswerCache, CachedOracle, restrict

__all__ = ["ACCESSES", "AnswerCache", "CachedOracle", "restrict"]


def epoch_callback(progress_factory, name: str, epochs: int) -> Callable[..., None] | None:
    """A training progress callback that advances a ``train NAME`` bar once per epoch."""
    if progress_factory is None:
        return None
    advance = progress_factory(f"train {name}", epochs)
    return lambda *_: advance(1)


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
