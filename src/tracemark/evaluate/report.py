"""What a results store says: rates with exact intervals, per cell and pooled, and the null.

Every rate is a count of audits deciding "trained on" out of audits of one kind, with its
exact Clopper-Pearson 95% interval (``scipy.stats.binomtest(...).proportion_ci()``):

- TPR: members' keys audited on the victim trained on their data;
- FPR (never published): keys whose marks were never published, on that same victim;
- FPR (clean): every key, on the clean model of the same recipe and seed.

The *null* pools every audit of a key whose data the model never saw (the last two),
per method and access mode, with a one-sided binomial test of "FPR > alpha".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest

from ..stats import fpr_at_tpr, roc_auc
from .run import evidence_of
from .store import Store

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Rate:
    """k of n audits flagged, with the exact interval."""

    k: int
    n: int

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def ci(self) -> list[float] | None:
        if not self.n:
            return None
        ci = binomtest(self.k, self.n).proportion_ci(CONFIDENCE, method="exact")
        return [float(ci.low), float(ci.high)]

    def above(self, alpha: float) -> float | None:
        """p-value of the one-sided binomial test of "the rate exceeds alpha"."""
        return (
            float(binomtest(self.k, self.n, alpha, alternative="greater").pvalue)
            if self.n
            else None
        )


def rate(audits: Iterable[dict]) -> Rate:
    flags = [a["decision"] for a in audits]
    return Rate(int(sum(flags)), len(flags))


def _groups(audits: list[dict]) -> dict[str, list[dict]]:
    return {
        "tpr": [a for a in audits if a["model"] == "marked" and a["member"]],
        "fpr_never_published": [a for a in audits if a["model"] == "marked" and not a["member"]],
        "fpr_clean": [a for a in audits if a["model"] == "clean"],
    }


def _rates_entry(groups: dict[str, list[dict]]) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for name, audits in groups.items():
        r = rate(audits)
        entry[name], entry[f"{name}_ci"] = r.value, r.ci
    entry["n_members"] = len(groups["tpr"])
    entry["n_never_published"] = len(groups["fpr_never_published"])
    entry["n_clean"] = len(groups["fpr_clean"])
    return entry


def cell_entries(store: Store) -> list[dict[str, Any]]:
    """One entry per cell and access mode (the fields ``tracemark report --json`` lists)."""
    out = []
    for cell in store.cells():
        audits = store.audits(cell["cell_id"])
        for access in cell["spec"]["accesses"]:
            mine = [a for a in audits if a["access"] == access]
            entry = {
                "cell_id": cell["cell_id"],
                "method": cell["method_name"],
                "method_kind": cell["method"],
                "recipe": cell["recipe"],
                "countermeasure": cell["countermeasure"],
                "seed": cell["seed"],
                "access": access,
                "alpha": cell["alpha"],
                **_rates_entry(_groups(mine)),
                "marked_accuracy": cell["marked_accuracy"],
                "clean_accuracy": cell["clean_accuracy"],
                "queries_per_audit": float(np.mean([a["queries"] for a in mine])) if mine else 0,
            }
            if access == "probabilities":
                entry["research"] = research_metrics(mine)
            if cell["metrics"]:
                entry["watermark_metrics"] = cell["metrics"]
            out.append(entry)
    return out


def research_metrics(audits: list[dict]) -> dict[str, Any]:
    """The papers' own metrics on the victim: members against never-published keys, ranked
    by p-value (set-based), and by each image's loss (instance-based, when the audits
    kept per-image losses: the tracker's)."""
    groups = _groups(audits)
    members, never = groups["tpr"], groups["fpr_never_published"]
    if not members or not never:
        return {}
    pos = -np.array([a["p_value"] for a in members])
    neg = -np.array([a["p_value"] for a in never])
    out: dict[str, Any] = {
        "set_based": {"auc": roc_auc(pos, neg), "fpr_at_100_tpr": fpr_at_tpr(pos, neg, 1.0)}
    }
    losses = [evidence_of(a["evidence"]).get("user_losses") for a in members + never]
    if all(x is not None for x in losses):
        m_loss = -np.concatenate(losses[: len(members)])
        n_loss = -np.concatenate(losses[len(members) :])
        out["instance_based"] = {
            "auc": roc_auc(m_loss, n_loss),
            "fpr_at_100_tpr": fpr_at_tpr(m_loss, n_loss, 1.0),
        }
    return out


def pooled_entries(cells: list[dict[str, Any]], store: Store) -> list[dict[str, Any]]:
    """Rates pooled over seeds, per (method, recipe, countermeasure, access)."""
    by: dict[tuple, list[dict]] = defaultdict(list)
    meta: dict[tuple, list[dict]] = defaultdict(list)
    for cell in store.cells():
        audits = store.audits(cell["cell_id"])
        for access in cell["spec"]["accesses"]:
            k = (cell["method_name"], cell["recipe"], cell["countermeasure"], access)
            by[k] += [a for a in audits if a["access"] == access]
            meta[k].append(cell)
    out = []
    for (method, recipe, cm, access), audits in by.items():
        cs = meta[(method, recipe, cm, access)]
        marked = [c["marked_accuracy"] for c in cs if c["marked_accuracy"] is not None]
        out.append(
            {
                "method": method,
                "recipe": recipe,
                "countermeasure": cm,
                "access": access,
                "alpha": cs[0]["alpha"],
                "seeds": sorted(c["seed"] for c in cs),
                **_rates_entry(_groups(audits)),
                "marked_accuracy": float(np.mean(marked)) if marked else None,
                "clean_accuracy": float(np.mean([c["clean_accuracy"] for c in cs])),
                **countermeasure_figures(cs),
            }
        )
    return out


COUNTERMEASURE_FIGURES = (
    "accuracy_cost",
    "plain_accuracy",
    "epsilon",
    "precision",
    "recall",
    "removed_share",
)


def countermeasure_figures(cells: list[dict]) -> dict[str, Any]:
    """What a countermeasure reported, averaged over the seeds' cells: the accuracy it
    cost the marked victim (against the plain clean model), DP-SGD's epsilon, a filter's
    precision and recall on marked images. Empty for cells without a countermeasure."""
    reports = [c["metrics"].get("countermeasure") for c in cells if c["metrics"]]
    reports = [r for r in reports if r]
    if not reports:
        return {}
    out: dict[str, Any] = {"stage": reports[0].get("stage")}
    for name in COUNTERMEASURE_FIGURES:
        values = [r[name] for r in reports if r.get(name) is not None]
        out[name] = float(np.mean(values)) if values else None
    return out


def null_entries(store: Store, by: str = "method") -> list[dict[str, Any]]:
    """Every null audit (a key whose data the model never saw), pooled per method (or per
    spec entry: ``by="method_name"``) and access mode (and alpha), with the binomial test
    of "FPR > alpha"."""
    pooled: dict[tuple, list[dict]] = defaultdict(list)
    p_values: dict[tuple, list[float]] = defaultdict(list)
    for cell in store.cells():
        for a in store.audits(cell["cell_id"]):
            if a["model"] == "marked" and a["member"]:
                continue
            key = (cell[by], a["access"], cell["alpha"])
            pooled[key].append(a)
            p_values[key].append(a["p_value"])
    out = []
    for (method, access, alpha), audits in sorted(pooled.items()):
        r = rate(audits)
        out.append(
            {
                "method": method,
                "access": access,
                "n": r.n,
                "fpr": r.value,
                "fpr_ci": r.ci,
                "alpha": alpha,
                "p_fpr_above_alpha": r.above(alpha),
                "p_values": p_values[(method, access, alpha)],
            }
        )
    return out


FALSE_POSITIVE_RATES = ("fpr_never_published", "fpr_clean")


def fpr_above_alpha(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every false-positive rate whose exact interval lies wholly above its alpha.

    A valid test flags a null audit with probability at most alpha, so such an interval
    is a defect in an audit (or in what the harness fed it) to find, not a result: the
    report lists each one, per cell and pooled over seeds."""
    found = []
    for e in entries:
        for name in FALSE_POSITIVE_RATES:
            ci = e.get(f"{name}_ci")
            if ci is not None and ci[0] > e["alpha"]:
                where = {k: e.get(k) for k in ("method", "recipe", "countermeasure", "access")}
                found.append({**where, "seed": e.get("seed"), "rate": name, "fpr": e[name]})
                found[-1].update(ci=ci, alpha=e["alpha"])
    return found


def summarise(store: Store) -> dict[str, Any]:
    """The machine-readable summary ``tracemark report --json`` prints."""
    cells = cell_entries(store)
    pooled = pooled_entries(cells, store)
    null = null_entries(store)
    runs = store.runs()
    return {
        "store": str(store.path),
        "runs": [
            {
                k: r[k]
                for k in (
                    "spec_name",
                    "started",
                    "finished",
                    "cells",
                    "computed",
                    "seconds",
                    "tracemark_version",
                )
            }
            for r in runs
        ],
        "cells": cells,
        "pooled": pooled,
        "fpr_above_alpha": fpr_above_alpha(cells + pooled),
        "fpr_intervals": sum(
            e.get(f"{name}_ci") is not None for e in cells + pooled for name in FALSE_POSITIVE_RATES
        ),
        "null": [{k: v for k, v in e.items() if k != "p_values"} for e in null],
        "null_by_entry": [
            {k: v for k, v in e.items() if k != "p_values"}
            for e in null_entries(store, by="method_name")
        ],
        "sharing": SHARING,
    }


# What the harness shares between audits, and why the intervals hold anyway.
SHARING = (
    "Audits share nothing that enters a test: every audit draws its own pseudo-users, "
    "external marks or null triggers from its own key. Within one audit, the model's "
    "answers are memoised by image so that its top-K and label-only runs read the answers "
    "its full run got. Audits of different keys on one model are independent given the "
    "model for the exact rank tests (tracker, isotope calibrated): each p-value is "
    "uniform (or conservative) given the model, so pooled counts are binomial. UBW's "
    "margin tests are not exact given the model: its null counts pool keys on a few "
    "models, so read their intervals per model as well."
)
