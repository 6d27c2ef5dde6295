"""Train, evaluate, save and export victim models.

Images arrive as the library's NHWC float32 arrays in [0, 1]; they become NCHW
tensors only here. Training is a pure function of (model architecture, data,
config): the seed drives weight init, shuffling, augmentation and dropout through
explicit or forked generators, so the caller's global RNG state is never touched
and the same seed gives bit-identical weights on CPU.
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import TracemarkError
from .fsutil import atomic_open
from .models import ARCHITECTURES, build_model, initialize
from .train_config import TrainConfig
from .training_resume import EpochCheckpoint, fingerprint

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainConfig",
    "accuracy",
    "augment_batch",
    "cutout_batch",
    "export_onnx",
    "export_torchscript",
    "load_checkpoint",
    "predict_logits",
    "resolve_device",
    "save_checkpoint",
    "train_model",
]

CHECKPOINT_FORMAT = "tracemark-checkpoint"
CHECKPOINT_VERSION = 1


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` means CUDA when available, else CPU; an unavailable device is a user error."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise TracemarkError(
                f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'"
            ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TracemarkError(f"device {device!r} requested but CUDA is not available; use 'cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise TracemarkError(f"unsupported device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'")
    return dev


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random ``pad``-pixel translation (zero pad + crop) and horizontal flip, per sample.

    ``x`` is NCHW. Done as one gather over an index grid so there is no per-sample
    Python loop. Random draws come from ``generator`` (a CPU generator), so results
    depend only on its state. The output has channels-last layout.
    """
    if x.ndim != 4:
        raise TracemarkError(f"augment_batch expects an NCHW batch, got shape {tuple(x.shape)}")
    if pad < 0:
        raise TracemarkError(f"pad must be non-negative, got {pad}")
    n, _, h, w = x.shape
    span = 2 * pad + 1
    oy = torch.randint(0, span, (n,), generator=generator)
    ox = torch.randint(0, span, (n,), generator=generator)
    rows = oy[:, None] + torch.arange(h)  # (N, H) rows of the padded image
    cols = ox[:, None] + torch.arange(w)  # (N, W)
    if flip:
        flipped = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (N, H+2p, W+2p, C)
    idx_n = torch.arange(n, device=dev)[:, None, None]
    out = padded[idx_n, rows.to(dev)[:, :, None], cols.to(dev)[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2)


def cutout_batch(x: torch.Tensor, generator: torch.Generator, size: int) -> torch.Tensor:
    """Erase (zero) one random ``size`` x ``size`` square per image (it may overhang the
    border), as in Cutout; NCHW in and out, draws from ``generator``."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=generator)
    cx = torch.randint(0, w, (n,), generator=generator)
    rows, cols = torch.arange(h), torch.arange(w)
    inside_r = (rows[None, :] >= (cy - size // 2)[:, None]) & (
        rows[None, :] < (cy - size // 2 + size)[:, None]
    )
    inside_c = (cols[None, :] >= (cx - size // 2)[:, None]) & (
        cols[None, :] < (cx - size // 2 + size)[:, None]
    )
    keep = ~(inside_r[:, :, None] & inside_c[:, None, :])  # (N, H, W)
    return x * keep[:, None].to(device=x.device, dtype=x.dtype)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )


def _sub_seed(seed: int, purpose: str) -> int:
    """Independent 63-bit seed per purpose, so e.g. turning augmentation off keeps the order."""
    digest = hashlib.sha256(f"tracemark/training/{purpose}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _check_images(images: Any, model: nn.Module | None = None) -> np.ndarray:
    """Validate an NHWC [0, 1] float array; return it as C-contiguous float32."""
    if not isinstance(images, np.ndarray):
        raise TracemarkError(f"images must be a numpy array, got {type(images).__name__}")
    if images.ndim != 4:
        raise TracemarkError(
            f"images must have shape (N, H, W, C), got shape {images.shape}; "
            f"add a channel axis for greyscale images (images[..., None])"
        )
    if images.shape[0] == 0:
        raise TracemarkError("no images given")
    if not np.issubdtype(images.dtype, np.floating):
        raise TracemarkError(
            f"images must be floats in [0, 1], got dtype {images.dtype}; "
            f"convert uint8 images with images.astype(np.float32) / 255"
        )
    expected = getattr(model, "in_channels", None)
    channels = images.shape[-1]
    if expected is not None and channels != expected:
        hint = ""
        if images.shape[1] == expected:
            hint = "; the array looks channels-first (NCHW), transpose it to NHWC"
        raise TracemarkError(
            f"the model expects {expected} channel(s) but images have shape {images.shape} "
            f"(N, H, W, C){hint}"
        )
    if expected is None and channels > 4 and images.shape[1] <= 4:
        raise TracemarkError(
            f"images of shape {images.shape} look channels-first; give (N, H, W, C)"
        )
    images = np.ascontiguousarray(images, dtype=np.float32)
    if not np.isfinite(images).all():
        raise TracemarkError("images contain NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise TracemarkError(
            f"image values must lie in [0, 1], found range [{lo:g}, {hi:g}]; "
            f"divide 8-bit images by 255"
        )
    return images


def _check_labels(labels: Any, n: int, model: nn.Module | None = None) -> np.ndarray:
    if not isinstance(labels, np.ndarray):
        raise TracemarkError(f"labels must be a numpy array, got {type(labels).__name__}")
    if labels.shape != (n,):
        raise TracemarkError(
            f"labels must have shape ({n},) to match the images, got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise TracemarkError(f"labels must be integers, got dtype {labels.dtype}")
    num_classes = getattr(model, "num_classes", None)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else "non-negative"
        raise TracemarkError(f"labels must be {bound}, found range [{lo}, {hi}]")
    return labels.astype(np.int64)


def _lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier on the peak learning rate at optimiser ``step`` of ``total``."""
    if schedule == "constant":
        return 1.0
    t = step / max(total, 1)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    # One-cycle: linear warm-up from lr/25 over the first 25%, then cosine down to ~0.
    warm = 0.25
    if t < warm:
        return 0.04 + 0.96 * t / warm
    return 0.5 * (1.0 + math.cos(math.pi * (t - warm) / (1.0 - warm)))


def _fork_devices(device: torch.device) -> list[int]:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


@dataclass
class LoopHooks:
    """Changes a countermeasure makes to the training loop (each None: the plain loop).

    ``batch(x, y, idx, generator) -> (x, target)``: an NCHW batch, its labels and their
    indices in the training set, before the step (noise, mixup, stronger augmentation;
    ``target`` may be class probabilities); ``loss(logits, target)``: the loss instead of
    cross-entropy (distillation); ``epoch_end(model, epoch) -> bool``: True stops
    training after that epoch (early stopping). ``generator`` is seeded from the
    training seed under its own purpose, so a hook's draws are reproducible.
    """

    batch: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    epoch_end: Callable[[nn.Module, int], bool] | None = None


def train_model(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    hooks: LoopHooks | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> nn.Module:
    """Train ``model`` with SGD on NHWC images; returns it in eval mode on CPU.

    With ``config.reinit`` (the default) the weights are first re-initialised from
    ``config.seed``, making the result independent of how the model was built.
    ``progress(epoch, epochs, mean_loss)`` is called after each epoch (1-based).
    ``hooks`` change the loop (countermeasures); without them it is the plain loop.
    ``checkpoint``: a file the loop's state is saved to after each epoch and resumed
    from (:mod:`.training_resume`), removed when training ends; plain loops only, since
    a hook's own state (early stopping's best weights) is not in it. A resumed run first
    reports the restored epochs to ``progress``, with the losses they had.
    """
    config = config or TrainConfig()
    config.validate()
    images = _check_images(images, model)
    labels = _check_labels(labels, images.shape[0], model)
    if checkpoint is not None and hooks is not None:
        raise TracemarkError("a training checkpoint cannot resume a loop changed by hooks")
    saved = None
    if checkpoint is not None:
        saved = EpochCheckpoint(checkpoint, fingerprint(model, images, labels, config))
    device = resolve_device(config.device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    n = images.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    # NHWC data stays NHWC in memory; permuting gives an NCHW channels-last view.
    x_all = torch.from_numpy(images).to(device)
    y_all = torch.from_numpy(labels).to(device)
    shuffle_gen = torch.Generator(device="cpu").manual_seed(_sub_seed(config.seed, "shuffle"))
    augment_gen = torch.Generator(device="cpu").manual_seed(_sub_seed(config.seed, "augment"))
    hooks = hooks or LoopHooks()
    hook_gen = torch.Generator(device="cpu").manual_seed(_sub_seed(config.seed, "hooks"))

    with torch.random.fork_rng(devices=_fork_devices(device)):
        # Seeds what has no explicit generator (dropout); fork_rng restores it afterwards.
        # Only the generators that fork_rng saves are seeded (not every CUDA device's).
        torch.default_generator.manual_seed(_sub_seed(config.seed, "global"))
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(_sub_seed(config.seed, "global"))
        model.cpu()
        if config.reinit:
            initialize(model, config.seed)
        model.to(device=device, memory_format=memory_format)
        optimizer = _optimizer(model, config)
        model.train()
        generators = {"shuffle": shuffle_gen, "augment": augment_gen, "hooks": hook_gen}
        generators["global"] = torch.default_generator
        state = None if saved is None else saved.load()
        step, first = (0, 1) if state is None else (state["step"], state["epoch"] + 1)
        losses: list[float] = [] if state is None else list(state.get("losses", []))
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            for name, gen in generators.items():
                gen.set_state(state["generators"][name])
            if device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda"], device)
            if len(losses) != state["epoch"]:  # a 0.7.2 file kept no losses: unknown
                losses = [math.nan] * state["epoch"]
            for done, done_loss in enumerate(losses, 1):  # the restored epochs, as they ran
                if progress is not None:
                    progress(done, config.epochs, done_loss)
        for epoch in range(first, config.epochs + 1):
            order = torch.randperm(n, generator=shuffle_gen).to(device)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            for start in range(0, n, config.batch_size):
                idx = order[start : start + config.batch_size]
                xb = x_all[idx].permute(0, 3, 1, 2)
                if config.augment:
                    xb = augment_batch(xb, augment_gen, pad=config.pad, flip=config.flip)
                if config.cutout:
                    xb = cutout_batch(xb, augment_gen, config.cutout)
                target = y_all[idx]
                if hooks.batch is not None:
                    xb, target = hooks.batch(xb, target, idx, hook_gen)
                xb = xb.contiguous(memory_format=memory_format)
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * _lr_factor(config.schedule, step, total_steps)
                logits = model(xb)
                if hooks.loss is not None:
                    loss = hooks.loss(logits, target)
                else:
                    loss = F.cross_entropy(logits, target, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach().double() * idx.numel()
                step += 1
            mean_loss = float(loss_sum) / n
            if not math.isfinite(mean_loss):
                raise TracemarkError(
                    f"training diverged (loss {mean_loss}) in epoch {epoch}; lower TrainConfig.lr"
                )
            losses.append(mean_loss)
            if saved is not None and epoch < config.epochs:
                saved.save(
                    {
                        "epoch": epoch,
                        "step": step,
                        "losses": losses,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "generators": {k: g.get_state() for k, g in generators.items()},
                        **(
                            {"cuda": torch.cuda.get_rng_state(device)}
                            if device.type == "cuda"
                            else {}
                        ),
                    }
                )
            if progress is not None:
                progress(epoch, config.epochs, mean_loss)
            if hooks.epoch_end is not None and hooks.epoch_end(model, epoch):
                break
    if saved is not None:
        saved.remove()
    model.eval()
    return model.to(device="cpu", memory_format=torch.contiguous_format)


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: np.ndarray, batch_size: int = 512, device: str = "auto"
) -> np.ndarray:
    """Logits (N, num_classes) as float32 for NHWC images; the model is left as it was found."""
    images = _check_images(images, model)
    if batch_size < 1:
        raise TracemarkError(f"batch_size must be at least 1, got {batch_size}")
    dev = resolve_device(device)
    was_training = model.training
    first = next(iter(model.parameters()), None)
    original = first.device if first is not None else torch.device("cpu")
    model.eval().to(dev)
    try:
        outputs = []
        for start in range(0, images.shape[0], batch_size):
            xb = torch.from_numpy(images[start : start + batch_size]).to(dev)
            outputs.append(model(xb.permute(0, 3, 1, 2)).float().cpu())
        return torch.cat(outputs).numpy()
    finally:
        model.to(original).train(was_training)


def accuracy(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 512,
    device: str = "auto",
) -> float:
    """Top-1 accuracy in [0, 1]."""
    images = _check_images(images, model)
    labels = _check_labels(labels, images.shape[0], model)
    logits = predict_logits(model, images, batch_size=batch_size, device=device)
    return float(np.mean(logits.argmax(axis=1) == labels))


def save_checkpoint(model: nn.Module, path: str | os.PathLike, force: bool = False) -> None:
    """Atomically save weights plus architecture so :func:`load_checkpoint` can rebuild the model.

    Only plain values and tensors are stored, so loading never needs to unpickle code.
    """
    arch = getattr(model, "tracemark_arch", None)
    arch_kwargs = getattr(model, "tracemark_arch_kwargs", None)
    if arch is None or arch_kwargs is None:
        raise TracemarkError(
            "this model was not built with tracemark.models.build_model, so a checkpoint "
            "could not say how to rebuild it; build it with build_model(arch, ...)"
        )
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "state_dict": state,
    }
    with atomic_open(path, force=force) as fh:
        torch.save(payload, fh)


def _unpickler_detail(exc: BaseException) -> str:
    """The specific reason from torch's weights-only unpickler, without its advice to
    retry with ``weights_only=False`` (exactly what must not be done with such a file)."""
    skip = ("Weights only load failed", "Please file an issue", "Check the documentation")
    for line in str(exc).splitlines():
        line = line.replace("WeightsUnpickler error:", "").strip()
        if line and not line.startswith(skip):
            return f" (unpickler: {line.split(' Please use', 1)[0]})"
    return ""


def load_checkpoint(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by :func:`save_checkpoint`, in eval mode on CPU.

    Uses ``weights_only`` loading: a file containing pickled code is refused, never run.
    """
    path = Path(path)
    if not path.is_file():
        raise TracemarkError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():
            # Raw (non-torch.save) pickles make torch warn about the protocol first.
            warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TracemarkError(
            f"{path} is not a tracemark checkpoint: it holds something other than plain values "
            f"and tensors (it may be corrupt, or contain pickled code), and it will not be "
            f"unpickled, because unpickling an untrusted file can run arbitrary code"
            f"{_unpickler_detail(exc)}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise TracemarkError(
            f"{path} is not a readable tracemark checkpoint (corrupt or wrong file type): {exc}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise TracemarkError(
            f"{path} is not a tracemark checkpoint (no 'format': '{CHECKPOINT_FORMAT}' entry); "
            f"save models with tracemark.training.save_checkpoint"
        )
    version = payload.get("version", CHECKPOINT_VERSION)
    if version != CHECKPOINT_VERSION:
        raise TracemarkError(
            f"{path} is checkpoint version {version!r}; this tracemark reads version "
            f"{CHECKPOINT_VERSION}. Upgrade tracemark or re-save the model"
        )
    arch, arch_kwargs, state = (
        payload.get("arch"),
        payload.get("arch_kwargs"),
        payload.get("state_dict"),
    )
    if arch not in ARCHITECTURES:
        raise TracemarkError(
            f"{path} names unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        )
    if not isinstance(arch_kwargs, dict) or not isinstance(state, dict):
        raise TracemarkError(f"{path} is a damaged tracemark checkpoint (bad arch_kwargs/state)")
    model = build_model(arch, **arch_kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        raise TracemarkError(
            f"{path}: weights do not match architecture {arch!r} {arch_kwargs}: {exc}"
        ) from None
    return model.eval()


def _export_copy(model: nn.Module) -> nn.Module:
    """A CPU, eval-mode, contiguous-layout copy so exporting never alters the caller's model."""
    return copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    example: np.ndarray | None = None,
    force: bool = False,
) -> None:
    """Save a TorchScript model taking NCHW float input in [0, 1] and returning logits.

    With ``example`` (an NHWC batch) the model is traced; without, it is scripted.
    """
    if not force and Path(path).exists():
        raise TracemarkError(f"{path} already exists; pass force=True to overwrite it")
    m = _export_copy(model)
    with torch.no_grad(), warnings.catch_warnings():
        # torch.jit.trace/script are deprecated upstream but remain the portable format.
        warnings.simplefilter("ignore", DeprecationWarning)
        if example is not None:
            ex = _check_images(example, model)
            x = torch.from_numpy(ex).permute(0, 3, 1, 2).contiguous()
            compiled = torch.jit.trace(m, x)
        else:
            try:
                compiled = torch.jit.script(m)
            except Exception as exc:
                raise TracemarkError(
                    f"could not script this model ({exc}); pass an example batch to trace it"
                ) from None
        buf = io.BytesIO()
        torch.jit.save(compiled, buf)
    with atomic_open(path, force=force) as fh:
        fh.write(buf.getvalue())


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_shape: tuple[int, int, int],
    force: bool = False,
) -> None:
    """Save an ONNX model: input ``"input"`` (batch, C, H, W) in [0, 1], output ``"logits"``.

    The batch axis is dynamic; ``input_shape`` is (C, H, W).
    """
    if (
        len(input_shape) != 3
        or not all(isinstance(d, (int, np.integer)) for d in input_shape)
        or min(input_shape) < 1
    ):
        raise TracemarkError(
            f"input_shape must be three positive ints (C, H, W), got {input_shape}"
        )
    if not force and Path(path).exists():
        raise TracemarkError(f"{path} already exists; pass force=True to overwrite it")
    m = _export_copy(model)
    dummy = torch.zeros(1, *(int(d) for d in input_shape))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy (TorchScript-based) exporter announces its deprecation; it works fine.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy.*", category=UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            torch.onnx.export(
                m,
                (dummy,),
                buf,
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        except RuntimeError as exc:
            raise TracemarkError(
                f"ONNX export failed for input shape {input_shape}: {exc}"
            ) from None
    with atomic_open(path, force=force) as fh:
        fh.write(buf.getvalue())
