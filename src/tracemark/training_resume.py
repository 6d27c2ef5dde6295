"""Training that survives being killed: the loop's state after each epoch, on disk.

A long evaluation loses every model in training when its machine stops, and the
realistic victims take half an hour each on 2 cores. With a checkpoint path,
:func:`tracemark.training.train_model` saves after each epoch everything the next epoch
depends on (weights, optimiser, the generators behind shuffling, augmentation and
dropout, the step count); a later call with the same path and the same inputs goes on
from there, bit-identical on the same machine to a run never interrupted. The file
names what it was made from (:func:`fingerprint`), so another training's state is never
resumed, and it is removed once training finishes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .fsutil import atomic_open

FORMAT = "tracemark-training-progress"
VERSION = 1


def data_fingerprint(header: Any, *arrays: np.ndarray) -> str:
    """SHA-256 of a JSON header and the arrays' bytes: what a resumable step is made from."""
    h = hashlib.sha256(json.dumps(header, sort_keys=True, default=str).encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def fingerprint(model: nn.Module, images: np.ndarray, labels: np.ndarray, config: Any) -> str:
    """What a training run is a function of: architecture, data and settings (not device)."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "device"}
    arch = [getattr(model, "tracemark_arch", type(model).__name__)]
    arch.append(getattr(model, "tracemark_arch_kwargs", None))
    return data_fingerprint([arch, settings, images.shape], images, labels)


class EpochCheckpoint:
    """The saved state of one training run at ``path``, if it is this run's."""

    def __init__(self, path: str | os.PathLike, fingerprint: str) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint

    def load(self) -> dict[str, Any] | None:
        """The state after the last finished epoch, or None: no file, an unreadable one,
        or another run's (which is then trained over from the start)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile):
            return None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            return None
        if state.get("version") != VERSION or state.get("fingerprint") != self.fingerprint:
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Replace the file atomically: a kill mid-write leaves the previous epoch's."""
        payload = {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint}
        with atomic_open(self.path) as fh:
            torch.save({**payload, **state}, fh)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
