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

__all__ = ["EndpointConfig", "load_endpoint_config", "split_v2_url", "with_settings"]

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
    binary: Literal["auto", "on", "off"] = Field(
        "auto",
        description="v2 tensors as raw bytes (the binary tensor data extension): auto uses "
        "them when the server's metadata (GET /v2) lists the extension",
    )
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
    try:
        base = EndpointConfig.model_validate(data)
    except ValidationError as exc:
        raise TracemarkError(f"invalid endpoint settings ({_problems(exc)})") from None
    return with_settings(base, **{k: v for k, v in overrides.items() if v is not None})


def with_settings(config: EndpointConfig, **changes: Any) -> EndpointConfig:
    """``config`` with ``changes`` applied and validated (errors name the bad setting)."""
    if not changes:
        return config
    try:
        return EndpointConfig.model_validate({**config.model_dump(), **changes})
    except ValidationError as exc:
        raise TracemarkError(f"invalid endpoint settings ({_problems(exc)})") from None


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
    )


def split_v2_url(url: str) -> tuple[str, str | None, str | None]:
    """``http://h/v2/models/NAME[/versions/V][/infer]`` → (``http://h``, NAME, V)."""
    match = _V2_MODEL_URL.match(url.rstrip("/"))
    if match is None:
        return url, None, None
    return match["base"], match["name"], match["ver"]
