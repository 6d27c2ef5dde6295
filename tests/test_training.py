"""Victim models and their training loop: shapes, determinism, accuracy, save/load, export."""

from __future__ import annotations

import math
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tracemark.errors import TracemarkError
from tracemark.models import ARCHITECTURES, build_model, count_parameters
from tracemark.training import (
    LoopHooks,
    TrainConfig,
    _lr_factor,
    accuracy,
    augment_batch,
    export_onnx,
    export_torchscript,
    load_checkpoint,
    predict_logits,
    resolve_device,
    save_checkpoint,
    train_model,
)

CPU = "cpu"


def synthetic(n: int = 96, size: int = 28, channels: int = 1, seed: int = 0):
    """Images whose class is which quadrant is bright: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, size, size, channels), dtype=np.float32) * 0.3
    y = rng.integers(0, 4, n)
    h = size // 2
    for q in range(4):
        r, c = divmod(q, 2)
        x[y == q, r * h : (r + 1) * h, c * h : (c + 1) * h, :] += 0.6
    return x, y.astype(np.int64)


def quick_config(**kwargs) -> TrainConfig:
    base = dict(epochs=2, batch_size=32, device=CPU)
    base.update(kwargs)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained_small():
    """A SmallCNN trained briefly so BatchNorm running stats are not the identity."""
    x, y = synthetic(128)
    model = train_model(build_model("small-cnn", num_classes=4), x, y, quick_config(epochs=1))
    return model, x[:16]


# --- models ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "kwargs", "low", "high"),
    [
        ("small-cnn", {}, 150_000, 250_000),
        ("resnet18", {}, 11_000_000, 11_300_000),
        ("wrn", {"depth": 16, "widen_factor": 2}, 650_000, 720_000),
        ("wrn", {}, 36_000_000, 37_000_000),
    ],
)
def test_parameter_counts(arch, kwargs, low, high):
    assert low <= count_parameters(build_model(arch, **kwargs)) <= high


@pytest.mark.parametrize(
    ("arch", "kwargs", "shape"),
    [
        ("small-cnn", {"in_channels": 1}, (28, 28, 1)),
        ("small-cnn", {"in_channels": 3}, (32, 32, 3)),
        ("small-cnn", {"in_channels": 3, "num_classes": 7, "width": 8}, (28, 28, 3)),
        ("resnet18", {}, (32, 32, 3)),
        ("resnet18", {"in_channels": 1}, (28, 28, 1)),
        ("wrn", {"depth": 16, "widen_factor": 2}, (32, 32, 3)),
    ],
)
def test_forward_shapes(arch, kwargs, shape):
    model = build_model(arch, **kwargs)
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    logits = predict_logits(model, x, device=CPU)
    assert logits.shape == (2, kwargs.get("num_classes", 10))
    assert logits.dtype == np.float32 and np.isfinite(logits).all()


def test_build_model_records_arguments_and_rejects_bad_ones():
    model = build_model("small-cnn", in_channels=3, mean=(0.1, 0.2, 0.3))
    assert model.tracemark_arch == "small-cnn"
    assert model.tracemark_arch_kwargs["in_channels"] == 3
    assert model.tracemark_arch_kwargs["mean"] == [0.1, 0.2, 0.3]  # tuple -> JSON list
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(TracemarkError, match="resnet18"):
        build_model("vgg")
    with pytest.raises(TracemarkError, match="bad arguments"):
        build_model("small-cnn", depth=3)
    with pytest.raises(TracemarkError, match="6n\\+4"):
        build_model("wrn", depth=20)
    with pytest.raises(TracemarkError, match="3 input channels"):
        build_model("resnet18", mean=[0.5, 0.5])
    assert set(ARCHITECTURES) == {"small-cnn", "resnet18", "wrn"}


def test_build_model_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = build_model("small-cnn", seed=3), build_model("small-cnn", seed=3)
    c = build_model("small-cnn", seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


# --- augmentation ---------------------------------------------------------------------


def _manual_augment(x: torch.Tensor, generator: torch.Generator, pad: int, flip: bool):
    """Reference implementation, one sample at a time, drawing in the same order."""
    n, _, h, w = x.shape
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=bool)
    padded = F.pad(x, (pad, pad, pad, pad))
    out = []
    for i in range(n):
        crop = padded[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w]
        out.append(crop.flip(-1) if flips[i] else crop)
    return torch.stack(out), oy, ox, flips


def test_augment_batch_matches_manual_crops_and_flips():
    x = torch.rand(64, 3, 12, 10)
    g = torch.Generator().manual_seed(5)
    g_ref = torch.Generator().manual_seed(5)
    out = augment_batch(x, g, pad=4, flip=True)
    expected, oy, ox, flips = _manual_augment(x, g_ref, pad=4, flip=True)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, expected)
    # Real shifts and a real mix of flipped / unflipped samples.
    assert len(set(oy.tolist())) > 3 and len(set(ox.tolist())) > 3
    assert 0 < int(flips.sum()) < 64
    # Sample 0 checked by hand: a window of the zero-padded image, maybe mirrored.
    p = F.pad(x[0], (4, 4, 4, 4))
    window = p[:, oy[0] : oy[0] + 12, ox[0] : ox[0] + 10]
    assert torch.equal(out[0], window.flip(-1) if flips[0] else window)


def test_augment_batch_is_deterministic_in_the_generator():
    x = torch.rand(32, 1, 28, 28)
    a = augment_batch(x, torch.Generator().manual_seed(1))
    b = augment_batch(x, torch.Generator().manual_seed(1))
    c = augment_batch(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment_batch(x, torch.Generator(), pad=0, flip=False), x)
    no_flip, _, _, flips = _manual_augment(x, torch.Generator().manual_seed(9), 2, False)
    assert not flips.any()
    assert torch.equal(augment_batch(x, torch.Generator().manual_seed(9), 2, False), no_flip)


# --- training -------------------------------------------------------------------------


def test_training_is_deterministic_and_leaves_global_rng_alone():
    x, y = synthetic(96)
    config = quick_config(seed=11)
    state = torch.get_rng_state()
    calls = []
    # Dropout exercises the forked global RNG; models built with different seeds
    # end up identical because training re-initialises from config.seed.
    a = train_model(
        build_model("small-cnn", num_classes=4, dropout=0.3, seed=1),
        x,
        y,
        config,
        progress=lambda *args: calls.append(args),
    )
    b = train_model(build_model("small-cnn", num_classes=4, dropout=0.3, seed=2), x, y, config)
    c = train_model(
        build_model("small-cnn", num_classes=4, dropout=0.3), x, y, quick_config(seed=12)
    )
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert [(e, n) for e, n, _ in calls] == [(1, 2), (2, 2)]
    assert all(np.isfinite(loss) for _, _, loss in calls)
    assert not a.training and next(a.parameters()).device.type == "cpu"


class Killed(Exception):
    """Stands for the machine stopping between two epochs."""


def _stop_after(epoch: int, seen: list[int]):
    def progress(e: int, *_):
        seen.append(e)
        if e == epoch:
            raise Killed

    return progress


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_killed_training_resumes_from_its_last_epoch_bit_identical(
    fmnist_train, tmp_path, optimizer
):
    """Weights, optimiser moments, shuffling, augmentation and dropout all resume: the
    result equals a run never interrupted, and only the remaining epochs run again."""
    x, y = fmnist_train.images[:192], fmnist_train.labels[:192]
    config = quick_config(epochs=4, seed=5, optimizer=optimizer, lr=0.01)

    def fresh():
        return build_model("small-cnn", num_classes=10, width=8, dropout=0.3)

    losses: list[tuple[int, float]] = []
    whole = train_model(
        fresh(), x, y, config, progress=lambda e, _, loss: losses.append((e, loss))
    ).state_dict()
    at, seen = tmp_path / "progress.pt", []
    with pytest.raises(Killed):
        train_model(fresh(), x, y, config, progress=_stop_after(2, seen), checkpoint=at)
    assert at.is_file()
    model, batches, reported = fresh(), [], []
    model.register_forward_hook(lambda *_: batches.append(1))
    resumed = train_model(
        model, x, y, config, progress=lambda *a: reported.append(a[::2]), checkpoint=at
    )
    assert seen == [1, 2]  # killed after epoch 2
    assert len(batches) == 2 * 192 // 32  # epochs 3-4 only ran again
    assert reported == losses  # epochs 1-2 reported as they ran, then 3-4: the same losses
    assert all(torch.equal(whole[k], resumed.state_dict()[k]) for k in whole)
    assert not at.exists()  # removed once finished
    with pytest.raises(Killed):  # a file from 0.7.2 kept no losses: reported as unknown
        train_model(fresh(), x, y, config, progress=_stop_after(1, seen), checkpoint=at)
    old = torch.load(at, weights_only=True)
    del old["losses"]
    torch.save(old, at)
    reported.clear()
    train_model(fresh(), x, y, config, progress=lambda *a: reported.append(a[::2]), checkpoint=at)
    assert [e for e, _ in reported] == [1, 2, 3, 4] and math.isnan(reported[0][1])


def test_another_trainings_progress_is_never_resumed(fmnist_train, tmp_path):
    x, y = fmnist_train.images[:128], fmnist_train.labels[:128]
    config = quick_config(epochs=3, seed=5)
    at, seen = tmp_path / "progress.pt", []
    with pytest.raises(Killed):
        train_model(
            build_model("small-cnn", num_classes=10, width=8),
            x,
            y,
            config,
            progress=_stop_after(1, seen),
            checkpoint=at,
        )
    other = fmnist_train.images[128:256], fmnist_train.labels[128:256]
    alone = train_model(build_model("small-cnn", num_classes=10, width=8), *other, config)
    again = train_model(
        build_model("small-cnn", num_classes=10, width=8),
        *other,
        config,
        progress=_stop_after(0, seen),
        checkpoint=at,
    )
    assert seen == [1, 1, 2, 3]  # other data: trained from its first epoch, nothing replayed
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in alone.state_dict().items())
    at.write_bytes(b"not a checkpoint")  # unreadable progress: trained from the start
    train_model(build_model("small-cnn", num_classes=10, width=8), x, y, config, checkpoint=at)
    assert not at.exists()
    with pytest.raises(TracemarkError, match="hooks"):
        train_model(
            build_model("small-cnn", num_classes=10, width=8),
            x,
            y,
            config,
            hooks=LoopHooks(),
            checkpoint=at,
        )


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_other_schedules_and_plain_layout_train(schedule):
    x, y = synthetic(256)
    test_x, test_y = synthetic(200, seed=1)
    model = build_model("small-cnn", num_classes=4, width=8)
    before = predict_logits(model, test_x, device=CPU)
    config = quick_config(schedule=schedule, channels_last=False, augment=False, epochs=3)
    train_model(model, x, y, config)
    after = predict_logits(model, test_x, device=CPU)
    assert np.isfinite(after).all()
    # It learned: the quadrant task is solved on images it never saw (chance is 0.25).
    assert (after.argmax(1) == test_y).mean() >= 0.9
    assert (before.argmax(1) == test_y).mean() < 0.6


def test_lr_schedules_shape():
    assert _lr_factor("constant", 7, 10) == 1.0
    assert _lr_factor("cosine", 0, 100) == 1.0 and _lr_factor("cosine", 99, 100) < 0.01
    assert _lr_factor("onecycle", 0, 100) == pytest.approx(0.04)
    assert _lr_factor("onecycle", 25, 100) == pytest.approx(1.0)
    assert _lr_factor("onecycle", 99, 100) < 0.01


def test_training_input_validation():
    x, y = synthetic(16)
    model = build_model("small-cnn", num_classes=4)
    cfg = quick_config(epochs=1)
    cases = [
        (x.transpose(0, 3, 1, 2), y, "channels-first"),
        ((x * 255).astype(np.uint8), y, "floats in \\[0, 1\\]"),
        (x * 2, y, "\\[0, 1\\]"),
        (x[0], y, "\\(N, H, W, C\\)"),
        (x, y[:-1], "shape \\(16,\\)"),
        (x, y.astype(np.float32), "integers"),
        (x, y + 4, "\\[0, 4\\)"),
        (x[:0], y[:0], "no images"),
    ]
    for xs, ys, message in cases:
        with pytest.raises(TracemarkError, match=message):
            train_model(model, xs, ys, cfg)
    with pytest.raises(TracemarkError, match="schedule"):
        train_model(model, x, y, quick_config(schedule="step"))
    with pytest.raises(TracemarkError, match="epochs"):
        train_model(model, x, y, quick_config(epochs=0))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(TracemarkError, match="unknown device"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(TracemarkError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.slow
def test_small_cnn_learns_fashion_mnist(fmnist_train, fmnist_test):
    model = build_model("small-cnn", in_channels=1, num_classes=10)
    config = TrainConfig(epochs=2, batch_size=64, augment=False, seed=1, device=CPU)
    train_model(model, fmnist_train.images[:3000], fmnist_train.labels[:3000], config)
    acc = accuracy(model, fmnist_test.images[:1000], fmnist_test.labels[:1000], device=CPU)
    assert acc > 0.7


# --- checkpoints ----------------------------------------------------------------------


def test_checkpoint_round_trip_gives_identical_logits(trained_small, tmp_path):
    model, x = trained_small
    path = tmp_path / "model.pt"
    save_checkpoint(model, path)
    loaded = load_checkpoint(path)
    assert not loaded.training
    assert loaded.tracemark_arch_kwargs == model.tracemark_arch_kwargs
    assert np.array_equal(predict_logits(loaded, x, device=CPU), predict_logits(model, x))
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "tracemark-checkpoint" and raw["arch"] == "small-cnn"

    with pytest.raises(TracemarkError, match="already exists"):
        save_checkpoint(model, path)
    save_checkpoint(model, path, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp files left


def test_save_checkpoint_needs_a_registered_model(tmp_path):
    with pytest.raises(TracemarkError, match="build_model"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_checkpoint_is_refused_without_running_it(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"format": "tracemark-checkpoint", "arch": "small-cnn", "x": _Evil(str(marker))}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(TracemarkError, match=r"not a tracemark checkpoint.*not be unpickled"):
        load_checkpoint(path)
    assert not marker.exists()


def test_load_checkpoint_rejects_other_files(tmp_path):
    with pytest.raises(TracemarkError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(TracemarkError, match=r"not a tracemark checkpoint.*corrupt"):
        load_checkpoint(garbage)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(TracemarkError, match="not a readable tracemark checkpoint"):
        load_checkpoint(truncated)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(TracemarkError, match="not a tracemark checkpoint"):
        load_checkpoint(plain)
    wrong = tmp_path / "wrong.pt"
    state = build_model("small-cnn").state_dict()
    torch.save(
        {
            "format": "tracemark-checkpoint",
            "version": 1,
            "arch": "small-cnn",
            "arch_kwargs": {"width": 16},
            "state_dict": state,
        },
        wrong,
    )
    with pytest.raises(TracemarkError, match="do not match"):
        load_checkpoint(wrong)


# --- export ---------------------------------------------------------------------------


@pytest.mark.parametrize("traced", [True, False])
def test_torchscript_export_matches(trained_small, tmp_path, traced):
    model, x = trained_small
    path = tmp_path / "model.ts"
    export_torchscript(model, path, example=x[:2] if traced else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(path))
    with torch.no_grad():
        out = scripted(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    np.testing.assert_allclose(out, predict_logits(model, x), atol=1e-4, rtol=0)
    with pytest.raises(TracemarkError, match="already exists"):
        export_torchscript(model, path)
    export_torchscript(model, path, force=True)


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_onnx_export_matches_with_dynamic_batch(tmp_path, channels, size):
    import onnxruntime as ort

    x, y = synthetic(64, size=size, channels=channels)
    model = build_model("small-cnn", in_channels=channels, num_classes=4, width=8)
    train_model(model, x, y, quick_config(epochs=1))
    path = tmp_path / "model.onnx"
    export_onnx(model, path, (channels, size, size))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    batch = x[:5]  # exported with batch 1: the batch axis must be dynamic
    (out,) = session.run(["logits"], {"input": np.ascontiguousarray(batch.transpose(0, 3, 1, 2))})
    np.testing.assert_allclose(out, predict_logits(model, batch), atol=1e-4, rtol=0)
    with pytest.raises(TracemarkError, match="already exists"):
        export_onnx(model, path, (channels, size, size))
    export_onnx(model, path, (channels, size, size), force=True)
    with pytest.raises(TracemarkError, match="input_shape"):
        export_onnx(model, tmp_path / "bad.onnx", (size, size))
