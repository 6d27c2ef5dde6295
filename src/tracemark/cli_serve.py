"""``tracemark serve``: a saved model behind an HTTP API, for demos and tests.

Registered on the main ``tracemark`` app (:mod:`tracemark.cli` imports this module at its end).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_common import app
from .progress import stderr

PANEL = "Faults to inject (for testing)"


@app.command()
def serve(
    model: Annotated[
        Path, typer.Argument(help="Model to serve: .onnx, TorchScript or tracemark checkpoint.")
    ],
    name: Annotated[str, typer.Option(help="Model name in the v2 URLs.")] = "model",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8000,
    allow_remote: Annotated[
        bool, typer.Option(help="Allow a non-loopback --host (the server has no authentication).")
    ] = False,
    top_k: Annotated[
        Optional[int], typer.Option(min=1, help="Reveal only the top K labels with scores.")
    ] = None,
    label_only: Annotated[bool, typer.Option(help="Reveal only the predicted label.")] = False,
    noise: Annotated[
        float, typer.Option(min=0.0, help="Add N(0, s^2) noise to the probabilities.")
    ] = 0.0,
    input_shape: Annotated[
        Optional[str],
        typer.Option(help="C,H,W of the model's input, for the v2 metadata (ONNX: read)."),
    ] = None,
    error_rate: Annotated[
        float,
        typer.Option(min=0.0, max=0.99, help="Share of requests that fail.", rich_help_panel=PANEL),
    ] = 0.0,
    error_codes: Annotated[
        str,
        typer.Option(help="Comma-separated statuses failures use.", rich_help_panel=PANEL),
    ] = "500,429",
    latency: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Each request waits up to this many seconds (uniform).",
            rich_help_panel=PANEL,
        ),
    ] = 0.0,
    rate_limit: Annotated[
        Optional[float],
        typer.Option(
            min=0.001, help="Requests per second served; the rest get 429.", rich_help_panel=PANEL
        ),
    ] = None,
    retry_after: Annotated[
        float,
        typer.Option(
            min=0.0, help="Retry-After seconds sent with injected 429/503.", rich_help_panel=PANEL
        ),
    ] = 0.0,
    seed: Annotated[
        str, typer.Option(help="Hex seed for the server's random choices (faults, noise).")
    ] = "00",
    access_log: Annotated[
        Optional[Path],
        typer.Option(help="Append the SHA-256 of every image answered to this JSONL file."),
    ] = None,
    url_file: Annotated[
        Optional[Path],
        typer.Option(help="Write the server's URL to this file once it listens (for scripts)."),
    ] = None,
) -> None:
    """Serve a model under the Open Inference Protocol v2 (and a simple JSON /predict).

    Stands in for a suspicious party's API in demos and tests: it can reveal only the
    top-K or the label, add noise, fail requests, answer late and rate-limit.
    """
    from .errors import TracemarkError
    from .fsutil import atomic_write_text
    from .serve import FaultPlan, ServeOptions, check_host, create_app, parse_shape, run

    check_host(host, allow_remote)  # before loading anything

    try:
        codes = tuple(int(c) for c in error_codes.split(","))
    except ValueError:
        raise TracemarkError(
            f"--error-codes takes statuses like 500,429, got {error_codes!r}"
        ) from None
    try:
        bytes.fromhex(seed)
    except ValueError:
        raise TracemarkError(f"--seed must be hex, got {seed!r}") from None
    faults = FaultPlan(
        error_rate=error_rate,
        error_codes=codes,
        latency=latency,
        rate_limit=rate_limit,
        retry_after=retry_after,
    )
    options = ServeOptions(
        name=name,
        top_k=top_k,
        label_only=label_only,
        noise=noise,
        faults=faults,
        seed=seed,
        input_shape=parse_shape(input_shape),
    )
    application = create_app(model, options, access_log=access_log)

    def ready(url: str) -> None:
        stderr.print(
            f"serving {model} ({options.reveals}) at {url}/v2/models/{name} "
            f"(JSON: {url}/predict); Ctrl-C stops",
            highlight=False,
            soft_wrap=True,
        )
        if url_file is not None:
            atomic_write_text(url_file, url + "\n")

    run(application, host=host, port=port, allow_remote=allow_remote, on_ready=ready)
