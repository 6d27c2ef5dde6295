"""What every verb of the command line shares: the app, the console, choices, parsers.

The verbs live in :mod:`tracemark.cli` (owners and the lab), :mod:`tracemark.cli_dataset`
(dataset publishers) and :mod:`tracemark.cli_serve`; each registers on :data:`app`.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

import typer
from rich.console import Console

from .errors import TracemarkError
from .limits import MAX_IMAGE_SIDE

app = typer.Typer(
    help="Mark your images, then tell from query access whether a model was trained on them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console()


class ImageFormat(str, Enum):
    png = "png"
    jpeg = "jpeg"


class ColourMode(str, Enum):
    auto = "auto"
    rgb = "RGB"
    grey = "L"


class Outputs(str, Enum):
    auto = "auto"
    probabilities = "probabilities"
    logits = "logits"


class AccessChoice(str, Enum):
    auto = "auto"
    probabilities = "probabilities"
    topk = "topk"
    label = "label"


class ProcedureChoice(str, Enum):
    calibrated = "calibrated"
    paper = "paper"
    physical = "physical"


class DemoMethod(str, Enum):
    tracker = "tracker"
    isotope = "isotope"
    ubw = "ubw"


def parse_params(items: list[str]) -> dict[str, Any]:
    """``--param NAME=VALUE`` items as a dict (values parsed as JSON where they are)."""
    params: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise TracemarkError(f"--param takes NAME=VALUE, got {item!r}")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value  # plain strings need no quotes
    return params


def parse_size(size: str | None) -> tuple[int, int] | None:
    """``--size HEIGHTxWIDTH``, within :data:`tracemark.limits.MAX_IMAGE_SIDE`."""
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise TracemarkError(f"--size takes HEIGHTxWIDTH, e.g. 32x32, got {size!r}") from None
    if not (1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE):
        raise TracemarkError(
            f"--size takes sides between 1 and {MAX_IMAGE_SIDE} pixels, got {size!r}"
        )
    return h, w
