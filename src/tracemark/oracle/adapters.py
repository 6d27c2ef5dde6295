"""Oracles for the ways a suspicious model reaches us: a function, a torch module, a file.

torch and onnxruntime are optional: they are imported only by the adapters that
need them, so marking and key handling work without either.
"""

from __future__ import annotations

import copy
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import TracemarkError
from .base import ModelOracle, Oracle

if TYPE_CHECKING:
    import torch

_ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}

SUPPORTED_FORMATS = (
    "ONNX models (*.onnx), TorchScript archives (torch.jit.save) and tracemark checkpoints "
    "(tracemark train, tracemark.training.save_checkpoint)"
)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise TracemarkError(
            f"PyTorch models need torch, which is not installed ({exc}); "
            "pip install 'tracemark[torch]'"
        ) from None
    return torch


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise TracemarkError(
            f"ONNX models need onnxruntime, which is not installed ({exc}); "
            "pip install 'tracemark[onnx]'"
        ) from None
    return onnxruntime


class CallableOracle(ModelOracle):
    """Wrap any function from (n, H, W, C) float32 images in [0, 1] to (n, C) scores.

    The function gets a copy of each batch, so it may preprocess in place.
    """

    def __init__(self, fn: Callable[[np.ndarray], Any], **kwargs: Any) -> None:
        if not callable(fn):
            raise TracemarkError(f"CallableOracle needs a function, got {type(fn).__name__}")
        super().__init__(**kwargs)
        self.fn = fn

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        return self.fn(batch.copy())


def _resolve_device(torch: Any, device: str | torch.device) -> torch.device:
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise TracemarkError(
            f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TracemarkError(f"device {device!r} asked for, but CUDA is not available; use 'cpu'")
    if dev.type == "cuda" and dev.index is None:  # compare equal to tensors' "cuda:N"
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


class TorchModuleOracle(ModelOracle):
    """A ``torch.nn.Module`` taking NCHW float input in [0, 1] (it normalises itself).

    The module runs in eval mode under ``torch.inference_mode`` on ``device``
    (``"auto"``: CUDA when available, else CPU). On CPU, weights and inputs use the
    channels-last layout, which is faster for convolutions. The caller's module is
    never changed: when it is not already in eval mode on the right device and
    layout, a prepared copy is used.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        device: str | torch.device = "auto",
        channels_last: bool = True,
        **kwargs: Any,
    ) -> None:
        self._init_torch(module, device, channels_last, owned=False, kwargs=kwargs)

    @classmethod
    def _owning(
        cls,
        module: Any,
        device: str | torch.device = "auto",
        channels_last: bool = True,
        **kwargs: Any,
    ) -> TorchModuleOracle:
        """An oracle that may change ``module`` in place (it was made for us, e.g. loaded)."""
        oracle = cls.__new__(cls)
        oracle._init_torch(module, device, channels_last, owned=True, kwargs=kwargs)
        return oracle

    def _init_torch(
        self,
        module: Any,
        device: str | torch.device,
        channels_last: bool,
        owned: bool,
        kwargs: dict[str, Any],
    ) -> None:
        torch = _import_torch()
        if not isinstance(module, torch.nn.Module):
            raise TracemarkError(
                f"TorchModuleOracle needs a torch.nn.Module, got {type(module).__name__}; "
                "wrap plain functions with CallableOracle"
            )
        super().__init__(**kwargs)
        self._torch = torch
        self.device = _resolve_device(torch, device)
        self.channels_last = bool(channels_last) and self.device.type == "cpu"
        self.module = self._prepare(module, owned)
        floating = [p.dtype for p in self.module.parameters() if p.is_floating_point()]
        self._dtype = floating[0] if floating else torch.float32

    def _prepare(self, module: Any, owned: bool) -> Any:
        """The module in eval mode on our device and layout, copied unless ``owned``."""
        torch = self._torch
        memory_format = torch.channels_last if self.channels_last else None
        tensors = list(module.parameters()) + list(module.buffers())
        on_device = all(t.device == self.device for t in tensors)
        laid_out = memory_format is None or all(
            t.dim() != 4 or t.is_contiguous(memory_format=memory_format) for t in tensors
        )
        in_eval = not any(m.training for m in module.modules())
        if on_device and laid_out and in_eval:
            return module
        if not owned:
            try:
                module = copy.deepcopy(module)
            except Exception as exc:
                raise TracemarkError(
                    f"could not copy the module to prepare it ({exc}); put it in eval mode on "
                    f"{self.device} yourself (module.eval().to('{self.device}')) and pass "
                    "channels_last=False"
                ) from None
        module.eval()
        if memory_format is None:
            return module.to(device=self.device)
        return module.to(device=self.device, memory_format=memory_format)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(batch).permute(0, 3, 1, 2)  # NCHW view with channels-last strides
        if not self.channels_last:
            x = x.contiguous()
        x = x.to(device=self.device, dtype=self._dtype)
        with torch.inference_mode():
            try:
                out = self.module(x)
            except RuntimeError:
                if not self.channels_last:
                    raise
                # Some modules .view() their input, which needs the contiguous layout.
                out = self.module(x.contiguous())
                self.channels_last = False
        if not isinstance(out, torch.Tensor):
            raise TracemarkError(
                f"the module returned {type(out).__name__}, not a tensor; wrap it so that "
                "forward() returns the (n, num_classes) scores"
            )
        return out.detach().float().cpu().numpy()


class TorchScriptOracle(TorchModuleOracle):
    """A TorchScript archive saved with ``torch.jit.save``.

    Loaded with ``torch.jit.load``, which runs TorchScript, never pickled Python code.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        channels_last: bool = True,
        **kwargs: Any,
    ) -> None:
        torch = _import_torch()
        self.path = _existing_file(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(self.path), map_location="cpu")
        except Exception as exc:
            raise TracemarkError(
                f"could not load {self.path} as a TorchScript archive ({exc}); it must be "
                "saved with torch.jit.save"
            ) from None
        self._init_torch(module, device, channels_last, owned=True, kwargs=kwargs)


class OnnxOracle(ModelOracle):
    """An ONNX model run with onnxruntime on CPU.

    Feeds the model's first input, ``layout`` "NCHW" (the torch convention) or
    "NHWC"; reads its first output. A model with a fixed batch size is fed batches
    of exactly that size (the last one padded; padding is not counted as queries).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        layout: Literal["NCHW", "NHWC"] = "NCHW",
        **kwargs: Any,
    ) -> None:
        if layout not in ("NCHW", "NHWC"):
            raise TracemarkError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
        ort = _import_onnxruntime()
        self.path = _existing_file(path)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise TracemarkError(f"could not load {self.path} as an ONNX model: {exc}") from None
        inputs = self.session.get_inputs()
        if not inputs:
            raise TracemarkError(f"the ONNX model {self.path} has no inputs")
        self.input = inputs[0]
        self.layout = layout
        shape = list(self.input.shape)
        if len(shape) != 4:
            raise TracemarkError(
                f"the ONNX model's input {self.input.name!r} has shape {shape}; tracemark feeds "
                "4-D image batches (N, C, H, W) or (N, H, W, C)"
            )
        if self.input.type not in _ONNX_DTYPES:
            raise TracemarkError(
                f"the ONNX model's input {self.input.name!r} is {self.input.type}; tracemark "
                "feeds float images (tensor(float) or tensor(double))"
            )
        self._np_dtype = _ONNX_DTYPES[self.input.type]
        batch = shape[0]
        self._fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        if self._fixed_batch is not None:
            kwargs["batch_size"] = self._fixed_batch
        super().__init__(**kwargs)

    def _expected(self) -> str:
        dims = ", ".join(f"{a}={d}" for a, d in zip(self.layout, self.input.shape, strict=True))
        return f"input {self.input.name!r} expects ({dims}) in {self.layout} layout"

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        x = batch.transpose(0, 3, 1, 2) if self.layout == "NCHW" else batch
        x = np.ascontiguousarray(x, dtype=self._np_dtype)
        for axis, (want, got) in enumerate(zip(self.input.shape[1:], x.shape[1:], strict=True)):
            if isinstance(want, int) and want > 0 and want != got:
                what = self.layout[1:][axis]
                other = "NHWC" if self.layout == "NCHW" else "NCHW"
                raise TracemarkError(
                    f"the images do not fit the ONNX model: {self._expected()}, but the "
                    f"images give {what}={got} (shape {x.shape}). Resize the images "
                    f"(--size HxW), convert their colour mode (--mode), or pass layout='{other}' "
                    f"if the model takes {other} input"
                )
        n = x.shape[0]
        if self._fixed_batch is not None and n < self._fixed_batch:
            pad = np.zeros((self._fixed_batch - n, *x.shape[1:]), dtype=x.dtype)
            x = np.concatenate([x, pad])
        try:
            out = self.session.run(None, {self.input.name: x})[0]
        except Exception as exc:
            raise TracemarkError(
                f"the ONNX model rejected a batch of shape {x.shape}: {self._expected()}. "
                f"onnxruntime said: {exc}"
            ) from None
        return np.asarray(out)[:n] if np.ndim(out) >= 1 else out


def _existing_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise TracemarkError(f"model file {p} does not exist")
    if not p.is_file():
        raise TracemarkError(f"{p} is not a file; give the path of a model file")
    return p


def _is_torchscript(path: Path) -> bool | None:
    """True for a TorchScript archive, False for another torch zip, None for no torch zip."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return True
    if any(n.endswith("/data.pkl") for n in names):
        return False
    return None


def _looks_like_pickle(path: Path) -> bool:
    """Legacy (pre-zip) ``torch.save`` files are pickles: protocol 2+ starts with 0x80."""
    with open(path, "rb") as fh:
        return fh.read(1) == b"\x80"


def load_oracle(path: str | os.PathLike, **kwargs: Any) -> Oracle:
    """An oracle for a model file: ONNX, TorchScript archive or tracemark checkpoint.

    ``kwargs`` go to the oracle (``num_classes``, ``batch_size``, ``outputs``,
    ``budget``; ``device`` for torch models, ``layout`` for ONNX ones).
    """
    p = _existing_file(path)
    if p.suffix.lower() == ".onnx":
        return OnnxOracle(p, **kwargs)
    kind = _is_torchscript(p)
    if kind is True:
        return TorchScriptOracle(p, **kwargs)
    if kind is None and not _looks_like_pickle(p):
        raise TracemarkError(
            f"{p} is not a model file tracemark can read. Supported: {SUPPORTED_FORMATS}. "
            "An ONNX model needs the .onnx extension"
        )
    _import_torch()
    from ..training import load_checkpoint

    try:
        module = load_checkpoint(p)
    except TracemarkError as exc:
        raise TracemarkError(f"{exc}. Supported model files: {SUPPORTED_FORMATS}") from None
    return TorchModuleOracle._owning(module, **kwargs)
