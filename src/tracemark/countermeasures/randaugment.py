"""RandAugment-style operations on an NCHW batch in [0, 1], in torch alone.

torchvision's RandAugment cannot be used: torchvision breaks beside the CPU torch this
project pins (shared/spec/machine.md), and kornia is not installed; the operations are a
few lines each. Every image draws its own ``ops`` operations (with replacement) and
their signs from ``generator``; every operation runs at ``magnitude`` of 10.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

OPERATIONS = (
    "brightness",
    "contrast",
    "sharpness",
    "solarize",
    "posterize",
    "cutout",
    "rotate",
    "shear",
    "translate",
)


def rand_augment(x: torch.Tensor, generator: torch.Generator, ops: int, magnitude: int):
    """``x`` with ``ops`` random operations per image at ``magnitude`` (1-10)."""
    n, _, h, w = x.shape
    m = magnitude / 10
    picks = torch.randint(0, len(OPERATIONS), (n, ops), generator=generator)
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).to(x)

    def chosen(name: str) -> torch.Tensor:
        hit = (picks == OPERATIONS.index(name)).any(dim=1)
        return hit.to(x.device)[:, None, None, None]

    # geometry first, as one affine warp per image (identity where no geometric op was drawn)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    s = sign.cpu()
    rot = (picks == OPERATIONS.index("rotate")).any(dim=1).float() * s * math.radians(30 * m)
    shear = (picks == OPERATIONS.index("shear")).any(dim=1).float() * s * 0.3 * m
    shift = (picks == OPERATIONS.index("translate")).any(dim=1).float() * s * 0.6 * m
    cos, sin = torch.cos(rot), torch.sin(rot)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin + shear, sin, cos
    theta[:, 0, 2] = shift
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)

    factor = (1 + sign * 0.9 * m)[:, None, None, None]
    x = torch.where(chosen("brightness"), (x * factor).clamp(0, 1), x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = torch.where(chosen("contrast"), ((x - mean) * factor + mean).clamp(0, 1), x)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.where(chosen("sharpness"), (blur + (x - blur) * factor).clamp(0, 1), x)
    x = torch.where(chosen("solarize") & (x >= 1 - m), 1 - x, x)
    levels = 2 ** max(1, 8 - round(4 * m))
    x = torch.where(chosen("posterize"), torch.floor(x * levels) / levels, x)
    side = max(1, round(0.5 * m * h))
    cy = torch.randint(0, h, (n,), generator=generator)
    cx = torch.randint(0, w, (n,), generator=generator)
    rows, cols = torch.arange(h), torch.arange(w)
    box = ((rows[None] - cy[:, None]).abs() <= side // 2)[:, :, None] & (
        (cols[None] - cx[:, None]).abs() <= side // 2
    )[:, None, :]
    x = torch.where(chosen("cutout") & box[:, None].to(x.device), torch.zeros_like(x), x)
    return x
