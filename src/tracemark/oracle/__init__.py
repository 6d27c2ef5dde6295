"""Black-box access to a suspicious model: everything an audit learns comes through here.

``oracle.query(images) -> Response`` with images (N, H, W, C) float32 in [0, 1].
Adapters load models (ONNX, TorchScript, tracemark checkpoints, torch modules,
plain functions) or reach them over HTTP (:class:`HttpOracle`, with a query log that
:class:`ReplayOracle` answers from); wrappers restrict what they reveal (top-k,
label only, noise). torch, onnxruntime and httpx are imported only when needed.
"""

from .adapters import (
    CallableOracle,
    OnnxOracle,
    TorchModuleOracle,
    TorchScriptOracle,
    load_oracle,
)
from .auth import load_auth_headers
from .base import ModelOracle, Oracle, OutputKind, softmax
from .endpoint import EndpointConfig, load_endpoint_config
from .http import HttpOracle, is_url, open_endpoint
from .logged import LoggedOracle, ReplayOracle
from .open import open_oracle
from .querylog import QueryLog
from .response import AccessMode, Response
from .restrict import GaussianNoise, ImageSeededNoise, LabelOnly, OracleWrapper, TopK

__all__ = [
    "AccessMode",
    "CallableOracle",
    "EndpointConfig",
    "GaussianNoise",
    "HttpOracle",
    "ImageSeededNoise",
    "LabelOnly",
    "LoggedOracle",
    "ModelOracle",
    "OnnxOracle",
    "Oracle",
    "OracleWrapper",
    "OutputKind",
    "QueryLog",
    "ReplayOracle",
    "Response",
    "TopK",
    "TorchModuleOracle",
    "TorchScriptOracle",
    "is_url",
    "load_auth_headers",
    "load_endpoint_config",
    "load_oracle",
    "open_endpoint",
    "open_oracle",
    "softmax",
]
