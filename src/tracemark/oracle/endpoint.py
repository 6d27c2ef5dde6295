"""How to talk to one HTTP endpoint, as a validated config (a JSON file or keyword arguments).

Every API differs in small ways (protocol, model name, field names, layout, limits); the
settings live in one pydantic model so a config file is checked up front, with errors
naming the bad field, instead of failing halfway through a paid audit.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import TracemarkError
from ..fsutil import read_json
from .wire import JsonFields

__all__ = ["EndpointConfig", "load_endpoint_config", "open_endpoint", "split_v2_url"]

_V2_MODEL_URL = re.compile(
    r"^(?P<base>.*?)/v2/models/(?P<name>[^/]+)(?:/versions/(?P<ver>[^/]+))?(?:/infer)?$"
)


class EndpointConfig(BaseModel):
    """Settings of an HTTP endpoint; every field has a sensible default."""

    model_config = ConfigDict(extra="forbid")

    protocol: Literal["v2", "json"] = "v2"
    model_name: str | None = None
    version: str | None = None
    input_name: str | None = Field(None, description="v2 input tensor (default: from metadata)")
    layout: Literal["auto", "nchw", "nhwc"] = "auto"
    output_name: str | None = Field(None, description="v2 output tensor to read")
    json_fields: JsonFields = Field(default_factory=JsonFields)
    batch_size: int = Field(64, ge=1, le=100_000)
    concurrency: int = Field(4, ge=1, le=256)
    timeout: float = Field(30.0, gt=0)
    retries: int = Field(8, ge=0, le=100)
    backoff: float = Field(0.5, ge=0)
    max_backoff: float = Field(30.0, ge=0)
    max_retry_after: float = Field(300.0, ge=0)
    num_classes: int | None = Field(None, ge=2)


def load_endpoint_config(path: str | os.PathLike | None, **overrides: Any) -> EndpointConfig:
    """The config in ``path`` (JSON; none: defaults), with non-None ``overrides`` applied."""
    data = {} if path is None else read_json(path, "endpoint config")
    if not isinstance(data, dict):
        raise TracemarkError(f"endpoint config {path} must be a JSON object")
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return EndpointConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise TracemarkError(f"invalid endpoint settings ({problems})") from None


def split_v2_url(url: str) -> tuple[str, str | None, str | None]:
    """``http://h/v2/models/NAME[/versions/V][/infer]`` → (``http://h``, NAME, V)."""
    match = _V2_MODEL_URL.match(url.rstrip("/"))
    if match is None:
        return url, None, None
    return match["base"], match["name"], match["ver"]


def open_endpoint(
    url: str,
    config: EndpointConfig | None = None,
    *,
    headers: dict[str, str] | None = None,
    log: str | os.PathLike | None = None,
    budget: int | None = None,
    outputs: str = "auto",
    class_names: list[str] | None = None,
    transport: Any = None,
):
    """An :class:`~tracemark.oracle.http.HttpOracle` for ``url`` with ``config``.

    For v2, the model may be named in the URL (``.../v2/models/NAME``) or in the config.
    """
    from .http import HttpOracle

    config = config or EndpointConfig()
    model_name, version = config.model_name, config.version
    if config.protocol == "v2":
        url, named, ver = split_v2_url(url)
        if named is not None and model_name is not None and named != model_name:
            raise TracemarkError(
                f"the URL names model {named!r} but --model-name says {model_name!r}"
            )
        model_name, version = model_name or named, version or ver
        if model_name is None:
            raise TracemarkError(
                "which model? give the v2 URL as http://HOST:PORT/v2/models/NAME, or pass "
                "--model-name NAME"
            )
    num_classes = config.num_classes or (len(class_names) if class_names else None)
    return HttpOracle(
        url,
        protocol=config.protocol,
        model_name=model_name,
        version=version,
        input_name=config.input_name,
        layout=config.layout,
        output_name=config.output_name,
        json_fields=config.json_fields,
        class_names=class_names,
        batch_size=config.batch_size,
        concurrency=config.concurrency,
        timeout=config.timeout,
        retries=config.retries,
        backoff=config.backoff,
        max_backoff=config.max_backoff,
        max_retry_after=config.max_retry_after,
        headers=headers,
        log=log,
        budget=budget,
        outputs=outputs,
        num_classes=num_classes,
        transport=transport,
    )
