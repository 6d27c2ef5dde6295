"""What every method shares: its surface, the audit's options and inputs, and the verdict.

A method is an object with the same small surface (:class:`Method`), registered under its
name in :mod:`tracemark.methods.registry`:

- ``method.mark(images, key, ids=..., labels=..., publish=...) -> MarkedData``
  (``progress_factory`` and ``device`` serve methods that train while marking)
- ``method.audit(oracle, key, data, options) -> Verdict``

Each method's ``options`` class (a frozen dataclass extending :class:`AuditOptions`) is
the only place its audit defaults live; the API and the command line read them from it.
The checks every audit makes (the key's method, the smallest reachable p-value, which
answers the model gives) and the verdict's assembly are written once, here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np

from ..errors import TracemarkError
from ..options import option
from ..stats import SEQUENTIAL_STOP, sequential_cap, smallest_p_value
from ..verdict import Verdict

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..datasets import LabelledImages
    from ..keys import Key
    from ..oracle.base import Oracle
    from ..oracle.open import ModelOptions
    from ..oracle.response import Response

Access = Literal["auto", "probabilities", "topk", "label"]
ACCESSES: tuple[str, ...] = ("auto", "probabilities", "topk", "label")
Progress = Callable[[int], None]


@dataclass(frozen=True)
class AuditOptions:
    """What every audit takes: the false-positive level and how much of the answers to use.

    ``access`` "auto" uses everything the model reveals; "probabilities" insists on
    them; "topk" and "label" use only the top-K or top-1 labels even when the model
    gives more. ``include_evidence`` keeps the raw scores in the verdict.
    """

    alpha: float = option(0.01, "False-positive level.", min=1e-9, max=0.5)
    access: Access = option(
        "auto", "Use less than the model gives: 'topk', or 'label' (the top-1 label only)."
    )
    include_evidence: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise TracemarkError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.access not in ACCESSES:
            raise TracemarkError(f"access must be one of {', '.join(ACCESSES)}, got {self.access}")


@dataclass(frozen=True)
class SequentialOptions(AuditOptions):
    """The rank audits' rule: sequential (Besag and Clifford) by default, or fixed-size.

    Null draws (the tracker's pseudo-users, isotope's external marks) are read in order
    until ``stop_after`` of them score at least as well as the owner, or until the cap (the
    subclass's ``cap_option`` field; default 10/alpha, so p can fall ten times below
    alpha). ``fixed`` = N ranks among exactly N instead, as earlier versions did.
    """

    stop_after: int = option(
        SEQUENTIAL_STOP,
        "tracker, isotope: the sequential test stops once this many null draws (pseudo-users, "
        "external marks) score at least as well as yours (Besag-Clifford h).",
        min=1,
        max=10_000,
    )
    fixed: int | None = option(
        None,
        "tracker, isotope: rank among exactly this many null draws instead (the fixed-size "
        "test of earlier versions).",
        min=1,
        max=1_000_000,
    )
    cap_option: ClassVar[str] = ""  # the subclass's field holding the sequential cap

    def __post_init__(self) -> None:
        super().__post_init__()
        limit = getattr(self, self.cap_option)
        for name, value in ((self.cap_option, limit), ("fixed", self.fixed)):
            if value is not None and (isinstance(value, bool) or value < 1):
                raise TracemarkError(f"{name} must be a positive integer, got {value!r}")
        if self.stop_after < 1:
            raise TracemarkError("stop_after must be positive")
        if self.fixed is not None and limit is not None:
            raise TracemarkError(
                f"give either {self.cap_option} (the sequential test's cap) or fixed (the "
                "fixed-size test's draws), not both"
            )

    @property
    def cap(self) -> int:
        """The most null draws the audit reads."""
        return self.fixed or getattr(self, self.cap_option) or sequential_cap(self.alpha)

    @property
    def sequential(self) -> bool:
        return self.fixed is None


@dataclass
class AuditData:
    """What an audit reads besides the model; each method takes the fields it needs.

    ``collection``/``ids``/``published``: the tracker owner's originals, their ids and
    which were published (a mask, or how many the key chose). ``images``: the owner's
    published images (isotope: their class is voted on those not ``carries_mark``;
    physical mode: photos showing the object). ``aux``: images of the same domain that
    are not the owner's (physical mode: photos without the object). ``testset``:
    labelled images the model did not train on (dataset watermarks). ``label``: the
    owner's class, when known. ``checked``: what was verified about these inputs before
    the audit (the collection against its manifest), recorded in the verdict.
    """

    collection: np.ndarray | None = None
    ids: Sequence[int | str] | None = None
    published: np.ndarray | int | None = None
    images: np.ndarray | None = None
    carries_mark: np.ndarray | None = None
    aux: Any = None
    testset: LabelledImages | None = None
    label: int | None = None
    checked: dict[str, Any] | None = None

    def need(self, name: str, why: str) -> Any:
        """The field ``name``, or a clear error saying what it is for."""
        value = getattr(self, name)
        if value is None:
            raise TracemarkError(why)
        return value


@dataclass
class AuditSources:
    """Where an audit's data is, as the user gave it: folders, or arrays already in memory.

    ``marked``: the published images; ``originals``: every image given to ``mark`` (the
    tracker draws its pseudo-users from them); ``aux``: images of the same domain, not
    the owner's; ``testset``: labelled test images (dataset watermarks); ``label``: the
    owner's class; ``holdout``: refused by the per-image audits (kept to say why);
    ``manifest``: the marking manifest (default: ``MARKED.manifest.json`` beside ``marked``).
    """

    marked: Any = None
    originals: Any = None
    aux: Any = None
    testset: Any = None
    label: int | None = None
    holdout: Any = None
    manifest: Any = None


@dataclass
class MarkedData:
    """What ``mark`` returns: the images to publish and how they relate to the input.

    ``images``: the published images, marked or copied, in input order. ``published``:
    which inputs they are (a boolean mask over the input). ``carries_mark``: which of
    the published images carry the mark. ``labels``: the release's labels (dataset
    watermarks may change some). ``key``: the key to audit with (a dataset watermark
    completes it with what it did).
    """

    images: np.ndarray | list[np.ndarray]
    published: np.ndarray
    carries_mark: np.ndarray
    key: Key
    labels: np.ndarray | None = None


class Method(Protocol):
    """The surface every method has. See :mod:`tracemark.methods.tracker` for one.

    ``kind`` is "images" for methods that mark an owner's own images (``tracemark
    mark``) and "dataset" for watermarks of a whole labelled dataset (``tracemark
    watermark``). ``params`` validates a key's parameters; ``options`` holds the
    audit's defaults; ``read`` turns folders into :class:`AuditData` (at the model's
    size and colour mode); ``needs`` names the :class:`AuditSources` the command line
    insists on; ``progress_unit`` names what an audit's progress bar counts.
    """

    name: str
    kind: Literal["images", "dataset"]
    params: type[BaseModel]
    options: type[AuditOptions]
    needs: tuple[str, ...]
    progress_unit: str

    def mark(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        key: Key,
        *,
        ids: Sequence[int | str] | None = None,
        labels: np.ndarray | None = None,
        publish: int | None = None,
        progress_factory: Callable[[str, int], Progress] | None = None,
        device: str = "auto",
    ) -> MarkedData: ...

    def audit(
        self,
        oracle: Oracle,
        key: Key,
        data: AuditData,
        options: AuditOptions | None = None,
        progress: Progress | None = None,
    ) -> Verdict: ...

    def read(self, key: Key, sources: AuditSources, model: ModelOptions) -> AuditData: ...

    def progress_steps(self, options: AuditOptions) -> int: ...

    # Optional: ``measure(predict_probs, key, test) -> dict`` of what a method measures on
    # a model besides its audit (UBW: BA, ASR, dispersibility); evaluations record it.
    # Optional: ``audit_revision(params, options) -> str | None``, a change to the audit of
    # keys with these params (and a spec's options) since the evaluation's COMPUTE_VERSION;
    # it enters the identity of only the cells it touches, so every other stays valid.


# ----------------------------------------------------------------------------- checks


def check_key(key: Key, method: str) -> Any:
    """The key's typed parameters, refusing a key of another method."""
    if key.method != method:
        article = "an" if method[0] in "aeiou" else "a"
        raise TracemarkError(
            f"this is a {key.method!r} key; the {method} method needs {article} {method} key "
            f"(use it with the {key.method} audit)"
        )
    return key.typed_params()


FLOOR_MARGIN = 10  # a test whose smallest p-value is above alpha / this is warned about


def check_reachable(draws: int, alpha: float, what: str, remedy: str) -> None:
    """Refuse a rank test against ``draws`` null draws that could never reach ``alpha``,
    and warn about one that reaches it only at its floor: there a member is flagged only
    when it ranks first, so the test detects little (keep the floor below alpha / 10)."""
    floor = smallest_p_value(draws)
    if floor > alpha:
        raise TracemarkError(
            f"with {draws} {what} the smallest possible p-value is {floor:.3g} > alpha = "
            f"{alpha}; {remedy}"
        )
    if floor > alpha / FLOOR_MARGIN:
        import warnings

        warnings.warn(
            f"with {draws} {what} the smallest possible p-value is {floor:.3g}, within "
            f"{FLOOR_MARGIN}x of alpha = {alpha}: only a first-ranked result can be flagged, "
            f"so this audit has little power; {remedy}",
            stacklevel=3,
        )


def check_budget(oracle: Oracle, most: int, plan: str, remedy: str) -> None:
    """Refuse before the first query an audit that may send more images than the budget
    leaves (``most``: its worst case, known from the options and inputs; ``plan``: how it
    adds up). Answers already on hand (a query log being resumed) cost nothing, so they
    are counted as free; the oracle still checks every call."""
    left = getattr(oracle, "remaining", None)
    if left is None:
        return
    free = int(getattr(oracle, "answers_on_hand", 0))
    if most - free > left:
        from ..errors import BudgetExceededError

        on_hand = f", {free:,} answers already on hand" if free else ""
        raise BudgetExceededError(
            f"this audit may send up to {most:,} images ({plan}); the query budget leaves "
            f"{left:,}{on_hand}. Nothing was sent: raise --budget, or {remedy}"
        )


def resolve_access(requested: str, response: Response) -> Literal["full", "restricted"]:
    """Whether an audit scores full probabilities or only the labels it was shown.

    "probabilities" insists on them (an error when the model gives less); "topk" and
    "label" restrict the audit on purpose; "auto" takes what the model gives.
    """
    if requested == "probabilities" and response.mode != "probabilities":
        raise TracemarkError(
            f"--access probabilities was asked for, but the model answers with {response.mode}"
        )
    if requested in ("topk", "label") or response.mode != "probabilities":
        return "restricted"
    return "full"


@dataclass(frozen=True)
class Vote:
    """The model's majority top-1 class over some images, and its support."""

    label: int
    share: float
    votes: list[int]


def majority_vote(response: Response) -> Vote:
    """The most frequent top-1 label (ties: the smallest class) and its share of the votes."""
    votes = np.bincount(response.top1(), minlength=response.num_classes)
    label = int(votes.argmax())
    return Vote(label, float(votes[label] / votes.sum()), votes.tolist())


def build_verdict(
    method: str,
    key: Key | None,
    options: AuditOptions,
    *,
    p_value: float,
    queries: int,
    evidence: dict[str, Any] | None = None,
    **fields: Any,
) -> Verdict:
    """The verdict every audit returns: the decision is ``p_value <= alpha``.

    ``fields`` are the rest of :class:`~tracemark.verdict.Verdict` (effect, test,
    access, statistics, notes, ...); ``decision`` and ``alpha`` may be given for a
    procedure that decides otherwise (the isotope paper procedure's round vote).
    ``evidence`` is kept only when the options ask for it.
    """
    fields.setdefault("decision", p_value <= options.alpha)
    fields.setdefault("alpha", options.alpha)
    return Verdict(
        method=method,
        p_value=p_value,
        queries=queries,
        key_commitment=key.commitment() if key is not None else "",
        evidence=(evidence or {}) if options.include_evidence else {},
        **fields,
    )
