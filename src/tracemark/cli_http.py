"""Command-line options for models reached over HTTP, shared by `audit` and `verify`.

A MODEL argument is a file or an ``http(s)://`` URL. Credentials never come from
the command line (``ps`` and shell history would show them): ``--auth-env VAR`` names
an environment variable, ``--auth-file FILE`` a file of ``Header: value`` lines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .progress import stderr
from .text import printable

PANEL = "HTTP endpoint (when MODEL is a URL)"


class ProtocolChoice(str, Enum):
    v2 = "v2"
    json = "json"


ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="Suspicious model: .onnx, TorchScript or tracemark checkpoint file, or an "
        "http(s) URL (Open Inference Protocol v2: http://HOST:PORT/v2/models/NAME).",
    ),
]
ProtocolOpt = Annotated[
    Optional[ProtocolChoice],
    typer.Option(
        help="v2 (KServe, Triton, MLServer, TorchServe) or json (base64 PNGs in, "
        "probabilities or {label, score} lists out) (default v2).",
        rich_help_panel=PANEL,
    ),
]
ModelNameOpt = Annotated[
    Optional[str],
    typer.Option(help="v2 model name, if not in the URL.", rich_help_panel=PANEL),
]
QueryLogOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="JSONL log of every query and answer, written as it goes. Re-running with the "
        "same log resumes an interrupted audit without repeating a query; `tracemark replay` "
        "recomputes the verdict from it.",
        rich_help_panel=PANEL,
    ),
]
AuthEnvOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Name of an environment variable holding the Authorization header value "
        "(a bare token is sent as 'Bearer TOKEN').",
        rich_help_panel=PANEL,
    ),
]
AuthFileOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="File of 'Header-Name: value' lines sent with every request (chmod 600).",
        rich_help_panel=PANEL,
    ),
]
ConcurrencyOpt = Annotated[
    Optional[int],
    typer.Option(min=1, help="Requests in flight at once (default 4).", rich_help_panel=PANEL),
]
TimeoutOpt = Annotated[
    Optional[float],
    typer.Option(min=0.001, help="Seconds per request (default 30).", rich_help_panel=PANEL),
]
RetriesOpt = Annotated[
    Optional[int],
    typer.Option(
        min=0,
        help="Retries of a request on 429, 5xx or a connection failure, with exponential "
        "backoff and Retry-After honoured (default 8).",
        rich_help_panel=PANEL,
    ),
]
NumClassesOpt = Annotated[
    Optional[int],
    typer.Option(
        min=2, help="Classes of a label-only endpoint (or --class-names).", rich_help_panel=PANEL
    ),
]
EndpointConfigOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="JSON file with further endpoint settings (batch_size, layout, input_name, "
        "output_name, json_fields, backoff, max_retry_after, ...); flags override it.",
        rich_help_panel=PANEL,
    ),
]


EvidenceOpt = Annotated[
    Optional[Path], typer.Option(help="Also write the full verdict with raw scores here.")
]
ForceOpt = Annotated[bool, typer.Option(help="Overwrite an existing --evidence file.")]


def check_evidence(path: Path | None, force: bool, protect: list) -> None:
    """Refuse an --evidence path that would replace a file (without --force) or land among
    the originals, before any query is spent."""
    if path is not None:
        from .fsutil import check_output

        protect = [p for p in protect if p is not None and Path(p).exists()]
        check_output(path, force=force, protect=protect, what="evidence file")


def write_evidence(path: Path | None, verdict, force: bool, protect: list) -> None:
    """Write the full verdict (with its raw scores) atomically to ``path``."""
    if path is not None:
        from .fsutil import atomic_write_text

        protect = [p for p in protect if p is not None and Path(p).exists()]
        text = verdict.model_dump_json(indent=2) + "\n"
        atomic_write_text(path, text, force=force, protect=protect)


def open_model(
    model: str,
    *,
    outputs: str = "auto",
    budget: int | None = None,
    class_names: list[str] | None = None,
    protocol: ProtocolChoice | None = None,
    model_name: str | None = None,
    query_log: Path | None = None,
    auth_env: str | None = None,
    auth_file: Path | None = None,
    concurrency: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    num_classes: int | None = None,
    endpoint_config: Path | None = None,
    replay: bool = False,
    endpoint: str | None = None,
):
    """An oracle for MODEL: a local file, an HTTP endpoint, or (``replay``) a query log."""
    from .errors import TracemarkError
    from .oracle import ReplayOracle, is_url, load_oracle
    from .oracle.base import expect_classes

    http_flags = {
        "--protocol": protocol,
        "--model-name": model_name,
        "--query-log": query_log,
        "--auth-env": auth_env,
        "--auth-file": auth_file,
        "--concurrency": concurrency,
        "--timeout": timeout,
        "--retries": retries,
        "--endpoint-config": endpoint_config,
    }
    if replay:
        n = num_classes or (len(class_names) if class_names else None)
        oracle = ReplayOracle(
            model, outputs=outputs, num_classes=n, endpoint=endpoint, model_name=model_name
        )
    elif not is_url(model):
        given = [flag for flag, value in http_flags.items() if value is not None]
        if given:
            raise TracemarkError(f"{', '.join(given)} only apply when MODEL is an http(s) URL")
        oracle = load_oracle(model, outputs=outputs, budget=budget)
    else:
        oracle = _open_url(
            model, query_log, auth_env, auth_file, endpoint_config, budget, outputs, class_names,
            protocol=None if protocol is None else protocol.value, model_name=model_name,
            concurrency=concurrency, timeout=timeout, retries=retries, num_classes=num_classes,
        )  # fmt: skip
    if class_names:
        n = len(class_names)
        expect_classes(oracle, n, f"--class-names ({n} names)")
    return oracle


def _open_url(
    model, query_log, auth_env, auth_file, endpoint_config, budget, outputs, class_names, **flags
):
    from .oracle import load_auth_headers, load_endpoint_config, open_endpoint

    config = load_endpoint_config(endpoint_config, **flags)
    headers = load_auth_headers(auth_env, auth_file)
    return open_endpoint(
        model,
        config,
        headers=headers,
        log=query_log,
        budget=budget,
        outputs=outputs,
        class_names=class_names,
    )


@contextlib.contextmanager
def querying(oracle, query_log: Path | None = None) -> Iterator[None]:
    """Run an audit through ``oracle``: Ctrl-C exits 130 (saying how to resume from the
    query log); afterwards the traffic is reported and the connection closed."""
    try:
        yield
    except KeyboardInterrupt:
        if query_log is not None:
            stderr.print(
                f"interrupted: every answer received is in {query_log}; run the same command "
                "again to resume without repeating a query"
            )
        raise typer.Exit(130) from None
    finally:
        report_traffic(oracle)
        getattr(oracle, "close", lambda: None)()


def report_traffic(oracle) -> None:
    """One stderr line on what an HTTP audit cost (nothing for local models)."""
    from .oracle import HttpOracle, ReplayOracle

    if isinstance(oracle, ReplayOracle):
        stderr.print(
            escape(printable(f"replayed {oracle.from_log} answers; no query was sent. "))
            + escape(printable(oracle.provenance()))
        )
    elif isinstance(oracle, HttpOracle):
        failures = ", ".join(f"{n}× {why}" for why, n in oracle.failures.most_common())
        log = f"; query log {oracle.log.path}" if oracle.log is not None else ""
        stderr.print(
            f"{oracle.url}: {oracle.queries} images sent in {oracle.requests} requests "
            f"({oracle.retried} retried{': ' + failures if failures else ''}), "
            f"{oracle.from_log} answered from the log or earlier in the run; access seen: "
            f"{oracle.access_seen}{log}"
        )
