"""Cells: one (method, recipe, countermeasure, seed) of an experiment, and its identity.

A cell trains the victim that the method's members marked, audits every owner on it and
on the clean model of the same recipe and seed, once per access mode. Its identity is a
hash of everything that determines its rows (the cell's part of the spec and the
tracemark COMPUTE_VERSION), so a finished cell is never computed twice, even across specs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from .._version import COMPUTE_VERSION
from ..errors import TracemarkError
from ..methods import registry
from .spec import CountermeasureSpec, ExperimentSpec, MethodSpec, RecipeSpec


def identity(model: BaseModel) -> dict[str, Any]:
    """A spec section as it enters a hash: only what differs from the defaults, so a field
    added later (with a default) leaves every existing cell's identity alone."""
    return model.model_dump(exclude_defaults=True)


def digest(payload: Any) -> str:
    """SHA-256 of canonical JSON: the identity of whatever ``payload`` describes."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Cell:
    """One unit of work: a method's owners, a recipe's victims, a countermeasure, a seed."""

    method_name: str  # the spec's name for this method entry
    recipe_name: str
    seed: int
    method: MethodSpec
    recipe: RecipeSpec
    countermeasure: CountermeasureSpec
    spec: ExperimentSpec

    def payload(self) -> dict[str, Any]:
        """Everything that determines the cell's rows (names aside)."""
        s = self.spec
        return (
            {
                "dataset": identity(s.dataset),
                "recipe": identity(self.recipe),
                "method": identity(self.method),
                "countermeasure": identity(self.countermeasure),
                "seed": self.seed,
                "alpha": s.alpha,
                "accesses": list(s.accesses),
                "top_k": s.top_k,
                "torch_threads": s.torch_threads,
                "tracemark_version": COMPUTE_VERSION,
            }
            | audit_revision(self.method)
            | countermeasure_revision(self.countermeasure)
        )

    @property
    def cell_id(self) -> str:
        return digest(self.payload())

    @property
    def label(self) -> str:
        return (
            f"{self.method_name} / {self.recipe_name} / {self.countermeasure.label} / "
            f"seed {self.seed}"
        )


def audit_revision(method: MethodSpec) -> dict[str, str]:
    """A change to the method's audit since COMPUTE_VERSION that touches this entry's keys
    (UBW-C's calibration in 0.7.0), as a part of the cell's identity: only those cells are
    computed again."""
    hook = getattr(registry.get(method.method), "audit_revision", None)
    revision = hook(method.params, method.options) if hook is not None else None
    return {"audit_revision": revision} if revision else {}


def countermeasure_revision(cm: CountermeasureSpec) -> dict[str, str]:
    """A change to what the countermeasure does since COMPUTE_VERSION (0.7.7: fine-tuning
    on held-out data), as a part of the cell's identity: only its cells run again."""
    revision = cm.revision()
    return {"countermeasure_revision": revision} if revision else {}


def cells_of(spec: ExperimentSpec) -> list[Cell]:
    """Every cell of ``spec``: seeds outermost, so an early stop covers every method."""
    return [
        Cell(m_name, r_name, seed, method, recipe, cm, spec)
        for seed in spec.seeds
        for r_name, recipe in spec.recipes.items()
        for cm in spec.countermeasures
        for m_name, method in spec.methods.items()
        if method.recipes is None or r_name in method.recipes
    ]


def select(
    cells: list[Cell],
    methods: Collection[str] | None = None,
    seeds: Collection[int] | None = None,
) -> list[Cell]:
    """The cells of the named method entries and seeds (None: all), so one spec can be
    split across machines or sessions; a name or seed the spec lacks is an error, not an
    empty run. A cell's identity does not depend on the others: a selected run's rows are
    the whole run's."""
    for wanted, have, what in (
        (methods, {c.method_name for c in cells}, "method entry"),
        (seeds, {c.seed for c in cells}, "seed"),
    ):
        missing = sorted(set(wanted or ()) - have)
        if missing:
            known = ", ".join(map(str, sorted(have)))
            raise TracemarkError(
                f"the spec has no {what} {', '.join(map(str, missing))} (it has {known})"
            )
    return [
        c
        for c in cells
        if (methods is None or c.method_name in methods) and (seeds is None or c.seed in seeds)
    ]
