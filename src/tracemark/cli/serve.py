"""``tracemark serve``: a saved model behind an HTTP API, for demos and tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..progress import stderr
from ..serve import FaultPlan, ServeOptions
from .app import app
from .flags import with_options


@app.command()
@with_options(options=ServeOptions, faults=FaultPlan)
def serve(
    model: Annotated[
        Path, typer.Argument(help="Model to serve: .onnx, TorchScript or tracemark checkpoint.")
    ],
    options: ServeOptions,
    faults: FaultPlan,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8000,
    allow_remote: Annotated[
        bool, typer.Option(help="Allow a non-loopback --host (the server has no authentication).")
    ] = False,
    access_log: Annotated[
        Optional[Path],
        typer.Option(help="Append the SHA-256 of every image answered to this JSONL file."),
    ] = None,
    url_file: Annotated[
        Optional[Path],
        typer.Option(
            help="Write the server's URL to this file once it listens (for scripts); an "
            "existing file is replaced only if an earlier serve wrote it."
        ),
    ] = None,
) -> None:
    """Serve a model under the Open Inference Protocol v2 (and a simple JSON /predict).

    Stands in for a suspicious party's API in demos and tests: it can reveal only the
    top-K or the label, add noise, fail requests, answer late and rate-limit.
    """
    from ..fsutil import atomic_write_text, check_output
    from ..serve import check_host, create_app, run

    check_host(host, allow_remote)  # before loading anything
    if url_file is not None:  # before starting: replace only a URL file an earlier serve wrote
        check_output(url_file, force=is_url_file(url_file), protect=[model], what="--url-file")
    options = replace(options, faults=faults)
    application = create_app(model, options, access_log=access_log)

    def ready(url: str) -> None:
        stderr.print(
            f"serving {model} ({options.reveals}) at {url}/v2/models/{options.name} "
            f"(JSON: {url}/predict); Ctrl-C stops",
            highlight=False,
            soft_wrap=True,
        )
        if url_file is not None:
            atomic_write_text(url_file, url + "\n")

    run(application, host=host, port=port, allow_remote=allow_remote, on_ready=ready)


def is_url_file(path: Path) -> bool:
    """Whether ``path`` is a regular file holding one server URL (what --url-file writes)."""
    if path.is_symlink() or not path.is_file() or path.stat().st_size > 200:
        return False
    text = path.read_bytes().decode("utf-8", "replace")
    return text.endswith("\n") and text.count("\n") == 1 and text.startswith("http://")
