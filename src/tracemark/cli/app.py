"""The typer app every verb registers on, and the console it prints to."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from .._version import __version__

app = typer.Typer(
    help="Mark your images, then tell from query access whether a model was trained on them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console()


def _version(value: bool) -> None:
    if value:
        stdout.print(f"tracemark {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """tracemark: data provenance for image classifiers."""
