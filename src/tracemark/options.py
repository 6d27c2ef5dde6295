"""Options declared once: a frozen dataclass per group, each field with its default and help.

Library code builds them (``TrackerOptions(n_pseudo=99)``), and the command line turns the
same fields into flags (:mod:`tracemark.cli.flags`), so every default is written in one
place. A field becomes a flag when it is declared with :func:`option`; fields declared
with a plain default are library-only.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import MISSING, Field, field, fields, replace
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from .errors import TracemarkError

T = TypeVar("T")


def option(
    default: Any,
    help: str,
    *names: str,
    parse: Callable[[str], Any] | None = None,
    **cli: Any,
) -> Any:
    """A dataclass field that is also a command-line flag.

    ``names``: the flag's spellings when not ``--field-name`` (e.g. ``"--json"``).
    ``parse``: the flag takes a string that this turns into the field's value (its
    errors are the user's). ``cli``: further ``typer.Option`` settings (``min``,
    ``max``, ``hidden``); they bound what the command line accepts, while the
    library's own checks live in each class's ``__post_init__``.
    """
    metadata = {"help": help, "names": names, "parse": parse, "cli": cli}
    return field(default=default, metadata=metadata)


def is_flag(f: Field) -> bool:
    """Whether a dataclass field was declared with :func:`option`."""
    return "help" in f.metadata


def flag_fields(cls: type) -> list[Field]:
    """The fields of an options class that are command-line flags, in declaration order."""
    return [f for f in fields(cls) if is_flag(f)]


def default_of(f: Field) -> Any:
    """A field's default value (its factory's product when it has one)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise TracemarkError(f"option {f.name} has no default")


def with_changes(options: T, **changes: Any) -> T:
    """A copy of ``options`` with ``changes``, refusing names it does not have."""
    known = {f.name for f in fields(options)}  # type: ignore[arg-type]
    unknown = sorted(set(changes) - known)
    if unknown:
        raise TracemarkError(
            f"unknown option(s) {', '.join(unknown)} for {type(options).__name__}; "
            f"known: {', '.join(sorted(known))}"
        )
    return replace(options, **changes)  # type: ignore[type-var]


def resolve(cls: type[T], options: T | None, changes: dict[str, Any]) -> T:
    """``options`` (or the class's defaults) with keyword ``changes`` applied.

    Lets an entry point take either an options object or its fields as keywords:
    ``audit(..., options=TrackerOptions(n_pseudo=99))`` or ``audit(..., n_pseudo=99)``.
    """
    base = cls() if options is None else options
    if not isinstance(base, cls):
        raise TracemarkError(
            f"expected {cls.__name__} options, got {type(base).__name__}: each method reads "
            "its own options class"
        )
    return with_changes(base, **changes) if changes else base


def check_values(cls: type, values: dict[str, Any]) -> None:
    """Refuse option values of the wrong type or outside the bounds their flags declare.

    For values that do not come through the command line (a spec's ``options`` table):
    an ``int`` option takes an integer (not ``1e9``, a float, nor ``true``), a ``float``
    one a number, and both stay within the field's ``min``/``max``.
    """
    hints = get_type_hints(cls)
    by_name = {f.name: f for f in fields(cls)}
    for name, value in values.items():
        f, kind = by_name.get(name), hints.get(name)
        if f is None:
            continue
        if get_origin(kind) in (Union, types.UnionType):  # ``int | None``: None is fine
            if value is None:
                continue
            kind = next((a for a in get_args(kind) if a is not type(None)), kind)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int and not (number and isinstance(value, int)):
            raise TracemarkError(f"option {name} takes an integer, got {value!r}")
        if kind is float and not number:
            raise TracemarkError(f"option {name} takes a number, got {value!r}")
        bounds = f.metadata.get("cli", {}) if is_flag(f) else {}
        low, high = bounds.get("min"), bounds.get("max")
        if number and ((low is not None and value < low) or (high is not None and value > high)):
            raise TracemarkError(
                f"option {name} must be between {low if low is not None else '-inf'} and "
                f"{high if high is not None else 'inf'}, got {value!r}"
            )
