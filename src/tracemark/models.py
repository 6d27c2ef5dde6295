"""Victim model architectures used to test whether marked data leaves a trace.

Every model takes raw images in [0, 1] (NCHW) and normalises them itself, so a
saved or exported model needs no preprocessing outside it. Models are built
through :func:`build_model`, which records the architecture name and its
arguments on the model so that checkpoints can describe (and rebuild) themselves.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import TracemarkError
from .limits import MAX_CLASSES, MAX_MODEL_WIDTH

__all__ = [
    "ARCHITECTURES",
    "Normalize",
    "ResNet18",
    "Resize",
    "SmallCNN",
    "WideResNet",
    "build_model",
    "count_parameters",
    "initialize",
]

ChannelStats = float | Sequence[float] | None


def _channel_stats(value: ChannelStats, default: float, channels: int, name: str) -> list[float]:
    """Expand a scalar or per-channel sequence into exactly ``channels`` floats."""
    if value is None:
        return [default] * channels
    if isinstance(value, (int, float)):
        values = [float(value)] * channels
    else:
        values = [float(v) for v in value]
        if len(values) == 1:
            values = values * channels
    if len(values) != channels:
        raise TracemarkError(
            f"{name} has {len(values)} values but the model has {channels} input channels; "
            f"give one value or one per channel"
        )
    return values


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as part of the model, so exports take raw [0, 1] input."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float32)
        std_t = torch.tensor([float(s) for s in std], dtype=torch.float32)
        if mean_t.shape != std_t.shape or mean_t.ndim != 1:
            raise TracemarkError("Normalize needs mean and std with one value per channel each")
        if not bool(torch.all(std_t > 0)):
            raise TracemarkError("Normalize std values must all be positive")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Resize(nn.Module):
    """Bilinear resize of every input to ``size`` x ``size``: a victim whose pipeline
    rescales the images it is given (``None``: inputs are used as they are)."""

    def __init__(self, size: int | None) -> None:
        super().__init__()
        if size is not None and not 1 <= size <= 4096:
            raise TracemarkError(f"input_size must be in [1, 4096], got {size}")
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is None:
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)


@torch.jit.unused
def _in_onnx_export() -> bool:
    return torch.onnx.is_in_onnx_export()


def _pool_matrix(size: int, out: int) -> torch.Tensor:
    """(out, size) averaging matrix with the bins of ``adaptive_avg_pool`` along one axis."""
    i = torch.arange(out)[:, None]
    j = torch.arange(size)[None, :]
    start = (i * size) // out
    end = ((i + 1) * size + out - 1) // out
    return ((j >= start) & (j < end)).float() / (end - start).float()


class AdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(n)`` that also exports to ONNX when n does not divide H or W.

    The legacy ONNX exporter refuses e.g. 7×7 → 4×4 (SmallCNN on 28×28 input); during
    export only, the same bins are computed as two small matrix products instead.
    """

    def __init__(self, output_size: int) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return F.adaptive_avg_pool2d(x, self.output_size)
        if _in_onnx_export():
            return self._pool_by_matmul(x)
        return F.adaptive_avg_pool2d(x, self.output_size)

    @torch.jit.unused
    def _pool_by_matmul(self, x: torch.Tensor) -> torch.Tensor:
        # Export is for a fixed (C, H, W), so baking H and W into the graph is correct.
        rows = _pool_matrix(int(x.shape[-2]), self.output_size).to(x)
        cols = _pool_matrix(int(x.shape[-1]), self.output_size).to(x)
        return rows @ x @ cols.T

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def _kaiming_init(model: nn.Module) -> None:
    """He init for convs, unit BN, zero biases: the usual init for ReLU CNNs."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            m.reset_parameters()


class SmallCNN(nn.Module):
    """A fast VGG-style CNN (~0.2M parameters at width 32) for 28×28 or 32×32 images."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 32,
        dropout: float = 0.0,
        mean: ChannelStats = None,
        std: ChannelStats = None,
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        _check_common(in_channels, num_classes)
        if width < 1:
            raise TracemarkError(f"width must be positive, got {width}")
        self.resize = Resize(input_size)
        if not 0.0 <= dropout < 1.0:
            raise TracemarkError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.normalize = Normalize(
            _channel_stats(mean, 0.5, in_channels, "mean"),
            _channel_stats(std, 0.5, in_channels, "std"),
        )
        w2 = 2 * width
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, width),
            *_conv_bn_relu(width, width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(width, w2),
            *_conv_bn_relu(w2, w2),
            nn.MaxPool2d(2),
            AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(w2 * 16, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(self.resize(x))))


class BasicBlock(nn.Module):
    """The two-conv residual block of ResNet-18/34."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3×3 stride-1 stem and no max-pool, so small images keep detail."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        mean: ChannelStats = None,
        std: ChannelStats = None,
        width: int = 64,
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        _check_common(in_channels, num_classes)
        if width < 1:
            raise TracemarkError(f"width must be positive, got {width}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.resize = Resize(input_size)
        self.normalize = Normalize(
            _channel_stats(mean, 0.5, in_channels, "mean"),
            _channel_stats(std, 0.5, in_channels, "std"),
        )
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        cin = width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(self.normalize(self.resize(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class WideBlock(nn.Module):
    """Pre-activation wide residual block (BN-ReLU-conv ×2, optional dropout between)."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.equal_in_out: bool = cin == cout and stride == 1
        self.shortcut: nn.Module = nn.Identity()
        if not self.equal_in_out:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        # As in the reference WRN: a projection shortcut sees the pre-activated input.
        skip = x if self.equal_in_out else self.shortcut(o)
        out = self.conv1(o)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis 2016); WRN-28-10 is the standard CIFAR victim."""

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        in_channels: int = 3,
        num_classes: int = 10,
        dropout: float = 0.0,
        mean: ChannelStats = None,
        std: ChannelStats = None,
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        _check_common(in_channels, num_classes)
        self.resize = Resize(input_size)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise TracemarkError(
                f"WideResNet depth must be 6n+4 with n >= 1 (e.g. 16, 22, 28, 40), got {depth}"
            )
        if widen_factor < 1:
            raise TracemarkError(f"widen_factor must be positive, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise TracemarkError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.normalize = Normalize(
            _channel_stats(mean, 0.5, in_channels, "mean"),
            _channel_stats(std, 0.5, in_channels, "std"),
        )
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for g, cout in enumerate(widths[1:]):
            for i in range(n):
                stride = 2 if (g > 0 and i == 0) else 1
                blocks.append(WideBlock(cin, cout, stride, dropout))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _kaiming_init(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(self.normalize(self.resize(x))))
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _check_common(in_channels: int, num_classes: int) -> None:
    if in_channels < 1:
        raise TracemarkError(f"in_channels must be positive, got {in_channels}")
    if num_classes < 2:
        raise TracemarkError(f"num_classes must be at least 2, got {num_classes}")


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "small-cnn": SmallCNN,
    "resnet18": ResNet18,
    "wrn": WideResNet,
}


def _jsonable(value: Any, name: str) -> Any:
    """Plain JSON value (tuples become lists) so checkpoints load with ``weights_only``."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v, name) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TracemarkError(
        f"model argument {name}={value!r} is not a plain number, string or list; "
        f"checkpoints can only record plain values"
    )


def initialize(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise ``model`` from ``seed`` alone, leaving the caller's global RNG untouched.

    The model must be on CPU: only the CPU generator is seeded (and restored), and
    CPU initialisation gives the same weights on every machine.
    """
    if any(t.device.type != "cpu" for t in model.parameters()):
        raise TracemarkError("initialise the model on CPU, then move it to another device")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: what fork_rng restores
        if hasattr(model, "reset_parameters"):
            model.reset_parameters()
        else:
            for m in model.modules():
                if m is not model and hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    return model


def _check_sizes(arch: str, cls: type, arguments: dict[str, Any]) -> None:
    """Integer arguments are integers, within limits: a checkpoint is untrusted input,
    and ``width: 200000`` would ask for terabytes before any weight is read."""
    params = inspect.signature(cls).parameters
    for name, value in arguments.items():
        annotation = params[name].annotation
        if annotation in ("int", int):
            limit = MAX_CLASSES if name == "num_classes" else MAX_MODEL_WIDTH
            if not isinstance(value, int) or isinstance(value, bool):
                raise TracemarkError(
                    f"architecture {arch!r}: {name} must be an integer, got {value!r:.40}"
                )
            if not 0 <= value <= limit:
                raise TracemarkError(
                    f"architecture {arch!r}: {name} = {value} is outside [0, {limit}]"
                )
        elif annotation in ("float", float) and (
            not isinstance(value, (int, float)) or isinstance(value, bool)
        ):
            raise TracemarkError(
                f"architecture {arch!r}: {name} must be a number, got {value!r:.40}"
            )


def build_model(arch: str, *, seed: int = 0, **kwargs: Any) -> nn.Module:
    """Build a registered architecture, initialised from ``seed``, and tag it for checkpoints.

    The full argument set (defaults included) is recorded in
    ``model.tracemark_arch_kwargs`` so a checkpoint rebuilds the same model even if
    defaults change later.
    """
    if arch not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise TracemarkError(f"unknown architecture {arch!r}; known architectures: {known}")
    cls = ARCHITECTURES[arch]
    try:
        bound = inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise TracemarkError(f"bad arguments for architecture {arch!r}: {exc}") from None
    bound.apply_defaults()
    _check_sizes(arch, cls, bound.arguments)
    recorded = {k: _jsonable(v, k) for k, v in bound.arguments.items()}
    json.dumps(recorded)  # guaranteed by _jsonable; fails loudly if that ever changes
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: what fork_rng restores
        model = cls(**recorded)
    model.tracemark_arch = arch
    model.tracemark_arch_kwargs = recorded
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
