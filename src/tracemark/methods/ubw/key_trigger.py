"""The trigger a UBW key stands for, and never-published triggers of the same kind.

The key's own trigger is the paper's public 3x3 corner pattern (UBW-P, BadNets), a 3x3
pattern drawn from the key and upscaled, at random places (UBW-C), or a noise image drawn
from the key (blended). Never-published triggers (the Independent-T control, the
label-flip test's control, the calibration's null draws) are other random patterns of the
same kind. A UBW-C key's pattern is drawn exactly as its null patterns are, so that a model
that never saw the key's release cannot tell them apart and the calibration's rank test is
exact; keys made before 0.7.0 (key format 1) keep the paper's public pattern.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ...errors import TracemarkError
from ...keys import Key
from ..base import check_key
from .params import UbwParams
from .triggers import CORNER_PATTERN, Trigger, upscale

NAME = "ubw"
PURPOSE_BLEND = "ubw/blend-pattern"
PURPOSE_INDEPENDENT = "ubw/independent-trigger"
PURPOSE_CONTROL = "ubw/control-trigger"
PURPOSE_NULL = "ubw/null-trigger"
PURPOSE_PATCH_PATTERN = "ubw/patch-pattern"
DRAWN_PATCH_KEY_VERSION = 2  # key format from which UBW-C patterns come from the seed
TriggerChoice = Literal["key", "independent"]
Which = TriggerChoice | Literal["control"] | int


def patch_size(params: UbwParams, height: int, width: int) -> int:
    """UBW-C patch side: the key's, or a quarter of the image (8 px on 32x32, 7 on 28x28)."""
    return params.patch_size or max(3, min(height, width) // 4)


def _random_binary_pattern(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A 3x3 0/1 pattern that is neither flat nor ``avoid`` (nor its mirror image)."""
    while True:
        p = rng.integers(0, 2, size=(3, 3)).astype(np.float32)
        if (
            0 < p.sum() < 9
            and not np.array_equal(p, avoid)
            and not np.array_equal(p[:, ::-1], avoid)
        ):
            return p


def uses_public_patch(key: Key, params: UbwParams) -> bool:
    """A UBW-C key of format 1 (made before 0.7.0): its patch is the paper's public pattern."""
    return params.trigger == "patch" and key.version < DRAWN_PATCH_KEY_VERSION


def _draw_rng(key: Key, which: Which, *ids: int) -> np.random.Generator | None:
    """The generator of a never-published trigger's pattern; None for the key's own."""
    if which == "key":
        return None
    if which == "independent":
        return key.rng(PURPOSE_INDEPENDENT, *ids)
    if which == "control":
        return key.rng(PURPOSE_CONTROL, *ids)
    if isinstance(which, int) and not isinstance(which, bool) and which >= 0:
        return key.rng(PURPOSE_NULL, which, *ids)
    raise TracemarkError(f"unknown trigger {which!r}; use 'key' or 'independent'")


def make_trigger(key: Key, shape: tuple[int, int, int], which: Which = "key") -> Trigger:
    """The key's trigger for (H, W, C) images, or a never-published one of its kind.

    "independent": the paper's Independent-T negative control: another random 3x3
    pattern, in the opposite (top-left) corner for corner triggers; another blend image;
    another randomly placed patch. "control" and null trigger ``j`` (an int): another
    pattern at the key trigger's own place (the baseline of the label-flip test, and the
    draws the optional calibration ranks the key's trigger among).
    """
    params: UbwParams = check_key(key, NAME)
    h, w, c = shape
    if params.trigger == "blended":
        rng = _draw_rng(key, which, h, w, c) or key.rng(PURPOSE_BLEND, h, w, c)
        pattern = rng.random((h, w, c), dtype=np.float32)
        return Trigger("blend", pattern, alpha=params.alpha)
    rng = _draw_rng(key, which)
    if rng is None and params.trigger == "patch" and not uses_public_patch(key, params):
        rng = key.rng(PURPOSE_PATCH_PATTERN)
    base = CORNER_PATTERN if rng is None else _random_binary_pattern(rng, CORNER_PATTERN)
    if params.trigger == "corner":
        return Trigger("patch", base, placement="opposite" if which == "independent" else "corner")
    return Trigger("patch", upscale(base, patch_size(params, h, w)), placement="random")
