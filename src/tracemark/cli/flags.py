"""Flags from options classes: a verb takes an options object, the command line sees flags.

Every options class (:mod:`tracemark.options`) declares its fields once, with defaults
and help. :func:`with_options` gives a typer verb one flag per field and hands the verb
the built object, so a default is never written twice and a verb's signature stays
short::

    @app.command()
    @with_options(settings=UbwOptions, model_options=Flags(ModelOptions, exclude={"replay"}))
    def verify(model: str, settings: UbwOptions, model_options: ModelOptions) -> None: ...

:class:`Flags` can also merge several classes (every method's audit options) into one
set of flags, handed to the verb as a dict; each class then takes the fields it has.
"""

from __future__ import annotations

import enum
import functools
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import Field, dataclass, fields
from typing import Annotated, Any, Literal, get_args, get_origin

import typer

from ..errors import TracemarkError
from ..options import default_of, flag_fields


@dataclass(frozen=True)
class Flags:
    """Flags made from ``classes``: one class gives the verb an instance; several give it
    a dict of every flag's value. ``exclude`` leaves fields out (``only``: keeps just
    these); ``panels`` names the help panel of each class's own fields (fields all
    classes share go in the main panel)."""

    classes: tuple[type, ...]
    exclude: frozenset[str] = frozenset()
    only: frozenset[str] | None = None
    panels: tuple[str | None, ...] = ()

    def __init__(self, *classes: type, exclude=(), only=None, panels=()) -> None:
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "exclude", frozenset(exclude))
        object.__setattr__(self, "only", None if only is None else frozenset(only))
        object.__setattr__(self, "panels", tuple(panels))

    def declared(self) -> dict[str, tuple[Field, type, str | None]]:
        """name -> (its field, the class that declares it, its panel), in order."""
        out: dict[str, tuple[Field, type, str | None]] = {}
        shared = set.intersection(*({f.name for f in flag_fields(c)} for c in self.classes))
        for i, cls in enumerate(self.classes):
            panel = self.panels[i] if i < len(self.panels) else None
            for f in flag_fields(cls):
                if f.name in self.exclude or (self.only is not None and f.name not in self.only):
                    continue
                if f.name in out:
                    if default_of(out[f.name][0]) != default_of(f):
                        raise TracemarkError(f"option {f.name} has two defaults in {self}")
                    continue
                out[f.name] = (f, cls, None if f.name in shared else panel)
        return out


@functools.cache
def _choices(name: str, values: tuple[str, ...]) -> type[enum.Enum]:
    """A str Enum for a Literal's values: typer shows it as [a|b|c] and checks it."""
    return enum.Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


def _parameter(f: Field, hint: Any, panel: str | None) -> tuple[inspect.Parameter, Callable]:
    """The typer parameter for one field, and the converter back to the field's value.

    A field with ``parse`` takes a string (None: the field's default); a Literal becomes
    a choice; everything else is typed as the field is.
    """
    default, parse = default_of(f), f.metadata.get("parse")
    annotation, cli_default = hint, default
    convert: Callable[[Any], Any] = lambda v: v  # noqa: E731
    if parse is not None:
        annotation, cli_default = str | None, None
        convert = lambda v: default if v is None else parse(v)  # noqa: E731
    else:
        options = [a for a in get_args(hint) if a is not type(None)]
        optional = get_origin(hint) in (typing.Union, types.UnionType) and len(options) == 1
        inner = options[0] if optional else hint
        if get_origin(inner) is Literal:
            choices = _choices(f.name, tuple(get_args(inner)))
            annotation = choices | None if optional else choices
            cli_default = None if default is None else choices(default)
            convert = lambda v: None if v is None else v.value  # noqa: E731
    settings = dict(f.metadata.get("cli", {}))
    if panel is not None:
        settings.setdefault("rich_help_panel", panel)
    info = typer.Option(*f.metadata.get("names", ()), help=f.metadata["help"], **settings)
    param = inspect.Parameter(
        f.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=cli_default,
        annotation=Annotated[annotation, info],
    )
    return param, convert


def with_options(**groups: type | Flags) -> Callable[[Callable], Callable]:
    """Give a verb one flag per field of each group's options class (see the module doc).

    Each keyword names a parameter of the verb; its value is an options class (the verb
    receives an instance) or :class:`Flags` (an instance, or a dict when it merges
    several classes). Two groups may not declare the same flag.
    """

    def wrap(fn: Callable) -> Callable:
        signature = inspect.signature(fn, eval_str=True)
        params = [p for p in signature.parameters.values() if p.name not in groups]
        builders: dict[str, Callable[[dict], Any]] = {}
        taken = {p.name for p in params}
        for group, spec in groups.items():
            spec = spec if isinstance(spec, Flags) else Flags(spec)
            made, converters = _group_parameters(spec, taken)
            params += made
            builders[group] = _builder(spec, converters)

        @functools.wraps(fn)
        def verb(**kwargs: Any) -> Any:
            for group, build in builders.items():
                kwargs[group] = build(kwargs)
            return fn(**kwargs)

        verb.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        return verb

    return wrap


def _group_parameters(spec: Flags, taken: set[str]) -> tuple[list, dict[str, Callable]]:
    made, converters = [], {}
    for name, (f, cls, panel) in spec.declared().items():
        if name in taken:
            raise TracemarkError(f"flag --{name} is declared twice for one verb")
        taken.add(name)
        hint = typing.get_type_hints(cls)[name]
        param, convert = _parameter(f, hint, panel)
        made.append(param)
        converters[name] = convert
    return made, converters


def _builder(spec: Flags, converters: dict[str, Callable]) -> Callable[[dict], Any]:
    """Pop a group's flags from the verb's arguments and build what the verb receives."""

    def build(kwargs: dict) -> Any:
        values = {name: convert(kwargs.pop(name)) for name, convert in converters.items()}
        return values if len(spec.classes) > 1 else pick(spec.classes[0], values)

    return build


def pick(cls: type, values: dict[str, Any]) -> Any:
    """An instance of ``cls`` from flag values (the fields it has; the rest are others')."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})
