"""One way in for a model however it is given: an oracle, a file, a URL, a module, a log.

:class:`ModelOptions` holds every setting of model access (what the model returns, the
query budget, its class names, and the HTTP settings when it is a URL); it is the one
place their defaults live, and the command line's model flags are its fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from ..errors import TracemarkError
from ..images import ColourMode, parse_size
from ..options import option, resolve
from .adapters import TorchModuleOracle, load_oracle
from .base import Oracle, expect_classes
from .http import is_url

__all__ = ["ModelOptions", "open_oracle", "parse_names"]

HTTP_PANEL = "HTTP endpoint (when MODEL is a URL)"


def parse_names(text: str | None) -> tuple[str, ...] | None:
    """``--class-names a,b,c``: names in the model's order."""
    return None if text is None else tuple(n.strip() for n in text.split(","))


@dataclass(frozen=True)
class ModelOptions:
    """How to reach a model, what it takes and how to read its answers.

    ``size`` and ``mode``: the input size and colour mode image folders are read in.
    ``replay``: the model is a query log (``tracemark replay``), answered from it alone;
    ``endpoint`` (with ``model_name``) then names the model the log must record.
    Credentials never come from here as values: ``auth_env`` names an environment
    variable and ``auth_file`` a file of ``Header: value`` lines.
    """

    outputs: Literal["auto", "probabilities", "logits"] = option("auto", "What the model returns.")
    budget: int | None = option(None, "Refuse to spend more queries.", min=1)
    size: tuple[int, int] | None = option(
        None, "Resize images to HxW for the model.", parse=parse_size
    )
    mode: ColourMode = option("auto", "Colour mode the model expects.")
    class_names: tuple[str, ...] | None = option(
        None, "Comma-separated class names in the model's order.", parse=parse_names
    )
    protocol: Literal["v2", "json"] | None = option(
        None,
        "v2 (KServe, Triton, MLServer, TorchServe) or json (base64 PNGs in, probabilities or "
        "{label, score} lists out) (default v2).",
        rich_help_panel=HTTP_PANEL,
    )
    model_name: str | None = option(
        None, "v2 model name, if not in the URL.", rich_help_panel=HTTP_PANEL
    )
    query_log: Path | None = option(
        None,
        "JSONL log of every query and answer, written as it goes. Re-running with the same "
        "log resumes an interrupted audit without repeating a query; `tracemark replay` "
        "recomputes the verdict from it.",
        rich_help_panel=HTTP_PANEL,
    )
    auth_env: str | None = option(
        None,
        "Name of an environment variable holding the Authorization header value (a bare "
        "token is sent as 'Bearer TOKEN').",
        rich_help_panel=HTTP_PANEL,
    )
    auth_file: Path | None = option(
        None,
        "File of 'Header-Name: value' lines sent with every request (chmod 600).",
        rich_help_panel=HTTP_PANEL,
    )
    concurrency: int | None = option(
        None, "Requests in flight at once (default 4).", min=1, rich_help_panel=HTTP_PANEL
    )
    timeout: float | None = option(
        None, "Seconds per request (default 30).", min=0.001, rich_help_panel=HTTP_PANEL
    )
    retries: int | None = option(
        None,
        "Retries of a request on 429, 5xx or a connection failure, with exponential backoff "
        "and Retry-After honoured (default 8).",
        min=0,
        rich_help_panel=HTTP_PANEL,
    )
    binary: Literal["auto", "on", "off"] | None = option(
        None,
        "v2 tensors as raw bytes, not JSON text (the binary tensor data extension): auto "
        "uses them when the server lists the extension (default auto).",
        rich_help_panel=HTTP_PANEL,
    )
    num_classes: int | None = option(
        None,
        "Classes of a label-only endpoint (or --class-names).",
        min=2,
        rich_help_panel=HTTP_PANEL,
    )
    endpoint_config: Path | None = option(
        None,
        "JSON file with further endpoint settings (batch_size, layout, input_name, "
        "output_name, json_fields, backoff, max_retry_after, ...); flags override it.",
        rich_help_panel=HTTP_PANEL,
    )
    replay: bool = option(
        False, "MODEL is a query log: answer from it only (see `tracemark replay`).", hidden=True
    )
    endpoint: str | None = option(
        None, "replay: the endpoint the log must record (and --model-name its model).", hidden=True
    )

    def http_flags(self) -> list[str]:
        """The HTTP settings that were given, as their flags."""
        return [
            "--" + f.name.replace("_", "-")
            for f in fields(self)
            if f.metadata.get("cli", {}).get("rich_help_panel") == HTTP_PANEL
            and f.name != "num_classes"
            and getattr(self, f.name) is not None
        ]


def open_oracle(model: Any, options: ModelOptions | None = None, **changes: Any) -> Oracle:
    """An oracle for ``model``: an oracle (used as it is), a model file (.onnx,
    TorchScript, checkpoint), an http(s) or grpc(s) URL, a torch module, or (``replay``) a
    query log.

    ``options`` (or its fields as keywords): :class:`ModelOptions`. Class names, when
    given, must match the model's number of classes.
    """
    options = resolve(ModelOptions, options, changes)
    if options.endpoint is not None and not options.replay:
        raise TracemarkError("--endpoint is for `tracemark replay`: MODEL is the endpoint here")
    if isinstance(model, Oracle):
        oracle = model
    elif options.replay:
        oracle = _replay(model, options)
    elif isinstance(model, (str, os.PathLike)) and not is_url(model):
        given = options.http_flags()
        if given:
            raise TracemarkError(f"{', '.join(given)} only apply when MODEL is an http(s) URL")
        oracle = load_oracle(model, outputs=options.outputs, budget=options.budget)
    elif is_url(model):
        oracle = _endpoint(str(model), options)
    else:
        oracle = TorchModuleOracle(model, outputs=options.outputs, budget=options.budget)
    if options.class_names:
        n = len(options.class_names)
        expect_classes(oracle, n, f"--class-names ({n} names)")
    return oracle


def _replay(log: Any, options: ModelOptions) -> Oracle:
    from .logged import ReplayOracle

    names = options.class_names
    n = options.num_classes or (len(names) if names else None)
    return ReplayOracle(
        log,
        outputs=options.outputs,
        num_classes=n,
        endpoint=options.endpoint,
        model_name=options.model_name,
    )


def _endpoint(url: str, options: ModelOptions) -> Oracle:
    from .auth import load_auth_headers
    from .endpoint import load_endpoint_config
    from .grpc import is_grpc_url, open_grpc_endpoint
    from .http import open_endpoint

    config = load_endpoint_config(
        options.endpoint_config,
        protocol=options.protocol,
        model_name=options.model_name,
        concurrency=options.concurrency,
        timeout=options.timeout,
        retries=options.retries,
        num_classes=options.num_classes,
        binary=options.binary,
    )
    opener = open_grpc_endpoint if is_grpc_url(url) else open_endpoint
    return opener(
        url,
        config,
        headers=load_auth_headers(options.auth_env, options.auth_file),
        log=options.query_log,
        budget=options.budget,
        outputs=options.outputs,
        class_names=list(options.class_names) if options.class_names else None,
    )
