"""Which methods exist: a name, and the package that defines it, imported on first use.

Adding a method means adding its package (one object with the :class:`~.base.Method`
surface, named ``METHOD``) and one line to :data:`BUILTIN`. Keys, the API and the
command line find it here, never through ``if method == ...`` chains. Method packages
import no torch, so marking and key handling stay torch-free.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import TracemarkError

if TYPE_CHECKING:
    from .base import Method

#: name -> the package whose ``METHOD`` implements it.
BUILTIN: dict[str, str] = {
    "tracker": "tracemark.methods.tracker",
    "isotope": "tracemark.methods.isotope",
    "ubw": "tracemark.methods.ubw",
}
_added: dict[str, Method] = {}


def names() -> list[str]:
    """Every registered method's name, sorted."""
    return sorted({*BUILTIN, *_added})


def get(name: str) -> Method:
    """The method registered as ``name``."""
    if name in _added:
        return _added[name]
    if name not in BUILTIN:
        raise TracemarkError(f"unknown method {name!r}; known methods: {', '.join(names())}")
    return importlib.import_module(BUILTIN[name]).METHOD


def register(method: Method) -> None:
    """Add a method at run time (a plug-in, or a test's toy method)."""
    if method.name in BUILTIN or method.name in _added:
        raise TracemarkError(f"a method named {method.name!r} is already registered")
    _added[method.name] = method


def unregister(name: str) -> None:
    """Remove a method added with :func:`register`."""
    if name not in _added:
        raise TracemarkError(f"{name!r} was not added with register()")
    del _added[name]


@contextlib.contextmanager
def registered(method: Method) -> Iterator[Method]:
    """``method`` registered for the duration of a ``with`` block."""
    register(method)
    try:
        yield method
    finally:
        unregister(method.name)
