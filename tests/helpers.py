"""Small helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_pngs(folder: Path, images: np.ndarray, prefix: str = "img") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images):
        Image.fromarray(np.round(x[..., 0] * 255).astype(np.uint8)).save(
            folder / f"{prefix}{i:04d}.png"
        )


def run_cli(args: list[str]) -> int:
    """Run the CLI in-process; returns its exit status."""
    from tracemark.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
