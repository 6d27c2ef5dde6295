"""tracemark: data provenance for image classifiers.

Mark images before publishing them; later, from query access alone, test whether a
model was trained on them. See :func:`mark_folder` and :func:`audit`; dataset
publishers see :func:`watermark_dataset` and :func:`verify`.

The entry points are imported on first use (PEP 562), so ``import tracemark.stats``
loads neither Pillow nor pydantic, and ``import tracemark`` loads no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

# name -> the module that defines it
_EXPORTS = {
    "audit": "api",
    "mark_folder": "api",
    "verify": "api",
    "watermark_dataset": "api",
    "watermark_report": "api",
    "TracemarkError": "errors",
    "Key": "keys",
    "load_key": "keys",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # the next lookup does not come here
        return value
    raise AttributeError(f"module 'tracemark' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
