"""What one trained model answered, kept in the cache for every cell that audits it.

The cell without a countermeasure and each output-level countermeasure's cell of one
(method, recipe, seed) audit the same cached victims: an output-level countermeasure
wraps the model's answers and never changes the model. Their audits draw the same
pseudo-users, external marks and triggers (from the same keys), so they ask the model
about the same images; without a book, each cell paid for the same forward passes
again (about nine tenths of an output-level cell's time).

A book is named by the model's weights, torch's version, its thread count and the
device, so only the very same computation shares it; a retrained model (another
machine's float kernels) gets a book of its own. It keeps full probability rows by
image SHA-256: :class:`~tracemark.oracle.memo.AnswerCache` reads a batch from it only
when the book knows every image of the batch, so a batch's answers always come from one
forward pass. It also keeps the model's test accuracy on a given test set.

Each writer appends shards (``<writer>-<n>.npz``, written atomically) and reads the
shards other writers left, so concurrent workers share a book without locks. A book is
an accelerator only: deleting the folder changes no result.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..fsutil import atomic_open, atomic_write_text
from ..oracle.response import Response

ANSWERS_FOLDER = "answers"
_SHARD = re.compile(r"^(?P<writer>[0-9a-z-]+)-(?P<n>\d+)\.npz$")


def book_folder(cache: Path, weights: str, device: str) -> Path:
    """Where ``cache`` keeps the book of the model whose :func:`weights_digest` is
    ``weights``, run by this torch on ``device``."""
    import torch

    if device == "auto":  # as the oracles resolve it: the device that computes
        device = "cuda" if torch.cuda.is_available() else "cpu"
    h = hashlib.sha256()
    for part in (weights, torch.__version__, torch.get_num_threads(), device):
        h.update(f"{part}\0".encode())
    return cache / ANSWERS_FOLDER / h.hexdigest()


class AnswerBook:
    """One model's answers by image SHA-256, read from and added to ``folder``'s shards.

    Implements :class:`~tracemark.oracle.memo.KnownAnswers`. ``writer`` names this
    process's shards (e.g. the cell's id and the model's role).
    """

    def __init__(self, folder: Path, writer: str) -> None:
        if not re.fullmatch(r"[0-9a-z-]+", writer):
            raise ValueError(f"a book's writer is lower-case letters, digits and '-': {writer!r}")
        self.folder, self.writer = Path(folder), writer
        self.num_classes: int | None = None
        self.softmax_applied = False
        self._rows: dict[bytes, np.ndarray] = {}  # digest -> probability row
        self._read: set[str] = set()
        self._pending: list[tuple[list[bytes], np.ndarray]] = []
        self._written = 0
        self.refresh()

    def __len__(self) -> int:
        return len(self._rows)

    def refresh(self) -> None:
        """Read the shards written since the last look (by other workers, or earlier runs)."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.npz")):
            match = _SHARD.match(path.name)
            if path.name in self._read or match is None:
                continue
            self._read.add(path.name)
            if match["writer"] == self.writer:
                self._written = max(self._written, int(match["n"]) + 1)
            try:
                with np.load(path, allow_pickle=False) as shard:
                    digests, probs = shard["digests"], shard["probs"]
                    num_classes, softmax = int(shard["num_classes"]), bool(shard["softmax"])
                if (
                    digests.ndim != 2
                    or digests.shape[1] != 32
                    or probs.shape
                    != (
                        len(digests),
                        num_classes,
                    )
                ):
                    raise ValueError(f"digests {digests.shape} and probs {probs.shape}")
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                warnings.warn(f"ignoring unreadable answer shard {path}: {exc}", stacklevel=2)
                continue
            if not self._same_form(num_classes, softmax, path):
                continue
            for d, row in zip(digests, probs.astype(np.float64, copy=False), strict=True):
                self._rows.setdefault(d.tobytes(), row)

    def _same_form(self, num_classes: int, softmax: bool, source: object) -> bool:
        if self.num_classes is None:
            self.num_classes, self.softmax_applied = num_classes, softmax
            return True
        if (num_classes, softmax) == (self.num_classes, self.softmax_applied):
            return True
        warnings.warn(
            f"ignoring answers from {source}: {num_classes} classes (softmax applied: "
            f"{softmax}), where the book holds {self.num_classes} ({self.softmax_applied})",
            stacklevel=3,
        )
        return False

    def lookup(self, hashes: Sequence[str]) -> Response | None:
        """The answers to every one of ``hashes``, or None if any is unknown."""
        rows = [self._rows.get(bytes.fromhex(h)) for h in hashes]
        if not rows or any(r is None for r in rows):
            return None
        return Response.from_probabilities(np.stack(rows), self.num_classes, self.softmax_applied)

    def add(self, hashes: Sequence[str], response: Response) -> None:
        """Keep full probability answers (restricted ones are not the model's own)."""
        if response.probs is None or not len(hashes):
            return
        if not self._same_form(response.num_classes, response.softmax_applied, "the model"):
            return
        digests = [bytes.fromhex(h) for h in hashes]
        new = [i for i, d in enumerate(digests) if d not in self._rows]
        for i in new:
            self._rows[digests[i]] = response.probs[i]
        if new:
            self._pending.append(([digests[i] for i in new], response.probs[new]))

    def flush(self) -> None:
        """Write the answers added since the last flush as one shard."""
        if not self._pending:
            return
        digests = np.frombuffer(b"".join(d for ds, _ in self._pending for d in ds), np.uint8)
        probs = np.concatenate([p for _, p in self._pending])
        name = f"{self.writer}-{self._written}.npz"
        with atomic_open(self.folder / name) as fh:
            np.savez(
                fh,
                digests=digests.reshape(-1, 32),
                probs=probs,
                num_classes=np.int64(self.num_classes),
                softmax=np.bool_(self.softmax_applied),
            )
        self._read.add(name)
        self._written += 1
        self._pending = []

    def accuracy(self, images: np.ndarray, labels: np.ndarray, compute: Callable[[], float]):
        """The model's accuracy on (``images``, ``labels``): kept, or ``compute()``'s."""
        h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
        h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
        path = self.folder / f"accuracy-{h.hexdigest()[:32]}.json"
        try:
            return float(json.loads(path.read_text())["accuracy"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        value = float(compute())
        atomic_write_text(path, json.dumps({"accuracy": value}))
        return value
