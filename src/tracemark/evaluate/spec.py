"""An experiment, declared: a TOML file validated by pydantic, so a bad field is named.

An experiment lists a dataset, victim *recipes* (how a model trainer trains), *methods*
(which keys, how many owners, their parameters and audit options), countermeasures,
access modes, alpha and seeds. Every (method, recipe, countermeasure, seed) is a *cell*
(:mod:`.cells`). The shipped specs are in ``tracemark/specs/`` (``specs/`` in a checkout);
``tracemark evaluate demo-tracker`` finds one by name.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..countermeasures import CountermeasureSpec
from ..countermeasures.output import NoCountermeasure
from ..errors import TracemarkError

Access = Literal["probabilities", "topk", "label"]
MAX_SEED = 2**32 - 1  # what numpy and torch seed from, and what SQLite stores as an INTEGER
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class Strict(BaseModel):
    """A spec section: unknown fields are errors (a typo must not pass silently), and
    numbers keep their types (``epochs = 1e9`` is a float, not an epoch count)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DatasetSpec(Strict):
    """Where the images come from, and how many training images owners' data is drawn from.

    ``owner_images`` training images (a key-independent random share, per seed) are set
    aside for owners' collections; victims' clean data is drawn from the rest, so a
    non-member owner's images are never in any victim's training set.
    """

    name: Literal["fashion-mnist"] = "fashion-mnist"
    path: str | None = Field(None, description="folder of the IDX files (default: Debian's)")
    owner_images: int = Field(20_000, ge=0, le=60_000)
    test_images: int = Field(
        10_000, ge=100, le=10_000, description="test images accuracy is measured on"
    )
    aux_images: int = Field(
        1_000, ge=10, le=10_000, description="test images audits may use (aux, testset)"
    )


class RecipeSpec(Strict):
    """How a model trainer trains a victim (and its clean twin)."""

    arch: Literal["small-cnn", "resnet18", "wrn"] = "small-cnn"
    width: int | None = Field(
        None, ge=1, le=1024, description="small-cnn/resnet18 width, wrn widen factor"
    )
    depth: int | None = Field(None, ge=10, le=100, description="wrn depth (6n+4)")
    images: int = Field(2_000, ge=10, le=60_000, description="clean training images")
    balanced: bool = Field(True, description="the same number of images from every class")
    epochs: int = Field(10, ge=1, le=1_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float | None = Field(None, gt=0, le=10, description="default: 0.05 for SGD, 1e-3 for Adam")
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    augment: Literal["none", "crop-flip", "strong"] = "none"
    weight_decay: float = Field(5e-4, ge=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    resolution: int | None = Field(
        None, ge=8, le=512, description="the victim resizes every input to this side"
    )


class MethodSpec(Strict):
    """One method's owners: how many, what they publish, their keys' parameters.

    ``members`` owners' published images are trained on; ``never_published`` owners hold
    keys whose marks were never published. Each owner holds ``collection`` images of one
    class (``classes``, in turn) and publishes ``images_per_user`` of them (tracker: the
    key's random choice). ``placement`` "add" puts members' images into the victim's
    training data beside its clean images; "replace" makes them the clean data's own
    images of their class (the owner *is* a class's contributor). Dataset methods (UBW)
    watermark the victim's whole training set: ``members`` is 0 or 1 (the publisher).
    ``options`` are the audit's (the method's options class); ``never_options`` are
    applied on top for never-published keys (UBW: ``trigger = "independent"``, since a
    fresh corner key's trigger is the same public pattern).
    """

    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    never_options: dict[str, Any] = Field(default_factory=dict)
    members: int = Field(10, ge=0, le=10_000)
    never_published: int = Field(50, ge=0, le=100_000)
    images_per_user: int = Field(25, ge=1, le=60_000)
    collection: int | None = Field(None, ge=1, le=60_000, description="default: images_per_user")
    never_collection: int | None = Field(
        None,
        ge=1,
        le=60_000,
        description="what a never-published owner holds (default: as a member)",
    )
    classes: list[int] = Field(default_factory=lambda: list(range(10)), min_length=1)
    placement: Literal["add", "replace"] = "add"
    recipes: list[str] | None = Field(None, description="only these recipes (default: all)")

    @model_validator(mode="after")
    def _check(self) -> MethodSpec:
        if self.collection is not None and self.collection < self.images_per_user:
            raise ValueError("collection must hold at least images_per_user images")
        # A never-published owner's collection may be smaller than images_per_user only
        # where nothing is chosen for publication (no collection: isotope's audits read
        # none of their images); where the key chooses K of a collection, it needs K.
        never = self.never_collection
        if never is not None and self.collection is not None and never < self.images_per_user:
            raise ValueError("never_collection must hold at least images_per_user images")
        if self.members + self.never_published == 0:
            raise ValueError("give members or never_published owners")
        return self

    def held(self, member: bool = True) -> int:
        """Images an owner holds."""
        if not member and self.never_collection is not None:
            return self.never_collection
        return self.collection or self.images_per_user

    def published(self, member: bool = True) -> int | None:
        """How many of them the key chooses to publish (None: all)."""
        return self.images_per_user if self.held(member) > self.images_per_user else None


class ExperimentSpec(Strict):
    """A whole experiment: every combination of methods, recipes, countermeasures, seeds."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seeds: list[Seed] = Field(min_length=1, max_length=10_000)
    alpha: float = Field(0.01, gt=0, lt=1)
    accesses: list[Access] = Field(default_factory=lambda: ["probabilities"], min_length=1)
    top_k: int = Field(5, ge=1, le=1_000)
    torch_threads: int = Field(
        1, ge=1, le=256, description="per cell: float results depend on the thread count"
    )
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    recipes: dict[str, RecipeSpec] = Field(min_length=1)
    methods: dict[str, MethodSpec] = Field(min_length=1)
    countermeasures: list[CountermeasureSpec] = Field(
        default_factory=lambda: [NoCountermeasure()], min_length=1
    )

    @model_validator(mode="after")
    def _check(self) -> ExperimentSpec:
        if len(set(self.accesses)) != len(self.accesses):
            raise ValueError("accesses must be distinct")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        labels = [c.label for c in self.countermeasures]
        if len(set(labels)) != len(labels):
            raise ValueError("countermeasures must be distinct")
        return self


def shipped_specs() -> list[str]:
    """Names of the specs that ship with tracemark."""
    folder = resources.files("tracemark") / "specs"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def spec_path(name: str | Path) -> Path:
    """A spec file: a path, or the name of a shipped spec (``null``, ``demo-tracker``).

    What looks like a path (it exists, holds a folder separator or ends in .toml) is a
    path, never silently a shipped spec of the same name.
    """
    text = str(name)
    path = Path(name)
    if (
        isinstance(name, Path)
        or "/" in text
        or os.sep in text
        or text.endswith(".toml")
        or (path.exists())
    ):
        if path.is_file():
            return path
        what = "is a folder, not" if path.is_dir() else "does not exist: give"
        raise TracemarkError(
            f"{name} {what} a spec file (TOML); a shipped spec is named without a folder or "
            f"suffix: {', '.join(shipped_specs())}"
        )
    shipped = resources.files("tracemark") / "specs" / f"{text}.toml"
    if shipped.is_file():
        return Path(str(shipped))
    raise TracemarkError(f"no spec file {name}; shipped specs: {', '.join(shipped_specs())}")


def load_spec(name: str | Path) -> ExperimentSpec:
    """Read and validate a spec (TOML); errors name the field and the file."""
    path = spec_path(name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TracemarkError(f"cannot read spec {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TracemarkError(f"spec {path} is not valid TOML: {exc}") from None
    return parse_spec(data, str(path))


def parse_spec(data: dict[str, Any], where: str = "") -> ExperimentSpec:
    """Validate a spec given as a dict (as TOML reads it)."""
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as err:
        lines = [f"invalid spec{_in(where)}:"]
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            lines.append(f"  {loc}: {e['msg'].removeprefix('Value error, ')}")
        raise TracemarkError("\n".join(lines)) from None
    _check_methods(spec, where)
    return spec


def _in(where: str) -> str:
    return f" {where}" if where else ""


def _check_methods(spec: ExperimentSpec, where: str) -> None:
    """Method names, key parameters and audit options, checked before anything runs."""
    from dataclasses import fields

    from ..keys import Key
    from ..methods import registry
    from ..options import check_values

    for name, m in spec.methods.items():
        method = registry.get(m.method)
        try:
            Key.generate(m.method, **m.params)
            known = {f.name for f in fields(method.options)}
            unknown = sorted((set(m.options) | set(m.never_options)) - known)
            if unknown:
                raise TracemarkError(f"unknown option(s) {', '.join(unknown)}")
            check_values(method.options, {**m.options, **m.never_options})
            method.options(**{**m.options, "alpha": spec.alpha})
        except TracemarkError as exc:
            raise TracemarkError(f"invalid spec{_in(where)}: methods.{name}: {exc}") from None
        if method.kind == "dataset" and m.members > 1:
            raise TracemarkError(
                f"invalid spec{_in(where)}: methods.{name}: a dataset watermark has one publisher "
                "per victim (members = 0 or 1)"
            )
        unknown = sorted(set(m.recipes or []) - set(spec.recipes))
        if unknown:
            raise TracemarkError(
                f"invalid spec{_in(where)}: methods.{name}.recipes: no recipe {', '.join(unknown)}"
            )
        if any(not 0 <= c < 10 for c in m.classes):
            raise TracemarkError(f"invalid spec{_in(where)}: methods.{name}.classes: 0..9")
