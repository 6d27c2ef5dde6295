"""Black-box access to a suspicious model: everything an audit learns comes through here.

``oracle.query(images) -> Response`` with images (N, H, W, C) float32 in [0, 1].
Adapters load models (ONNX, TorchScript, tracemark checkpoints, torch modules,
plain functions); wrappers restrict what they reveal (top-k, label only, noise).
torch and onnxruntime are imported only when an adapter needs them.
"""

from .adapters import (
    CallableOracle,
    OnnxOracle,
    TorchModuleOracle,
    TorchScriptOracle,
    load_oracle,
)
from .base import ModelOracle, Oracle, OutputKind, softmax
from .response import AccessMode, Response
from .restrict import GaussianNoise, LabelOnly, OracleWrapper, TopK

__all__ = [
    "AccessMode",
    "CallableOracle",
    "GaussianNoise",
    "LabelOnly",
    "ModelOracle",
    "OnnxOracle",
    "Oracle",
    "OracleWrapper",
    "OutputKind",
    "Response",
    "TopK",
    "TorchModuleOracle",
    "TorchScriptOracle",
    "load_oracle",
    "softmax",
]
