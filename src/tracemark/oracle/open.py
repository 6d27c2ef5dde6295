"""One way in for a model however it is given: an oracle, a file, a URL or a module."""

from __future__ import annotations

import os
from typing import Any, Literal

from .adapters import TorchModuleOracle, load_oracle
from .base import Oracle
from .endpoint import open_endpoint
from .http import is_url

__all__ = ["open_oracle"]


def open_oracle(
    model: Any,
    outputs: Literal["auto", "probabilities", "logits"] = "auto",
    budget: int | None = None,
) -> Oracle:
    """An oracle for ``model``: an oracle (returned as is), a model file (.onnx,
    TorchScript, checkpoint), an http(s) URL, or a torch module."""
    if isinstance(model, Oracle):
        return model
    if is_url(model):
        return open_endpoint(model, budget=budget, outputs=outputs)
    if isinstance(model, (str, os.PathLike)):
        return load_oracle(model, outputs=outputs, budget=budget)
    return TorchModuleOracle(model, outputs=outputs, budget=budget)
