"""Small pieces the demos share."""

from __future__ import annotations

from collections.abc import Callable


def epoch_callback(progress_factory, name: str, epochs: int) -> Callable[..., None] | None:
    """A training progress callback that advances a ``train NAME`` bar once per epoch."""
    if progress_factory is None:
        return None
    advance = progress_factory(f"train {name}", epochs)
    return lambda *_: advance(1)
