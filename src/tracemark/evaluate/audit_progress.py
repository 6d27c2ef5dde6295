"""A cell's finished audits, kept on disk while the cell runs, so a killed cell resumes.

A realistic cell audits 50 owners for up to half an hour; the store writes a cell only
when all of it is done, so a run stopped in the middle used to audit everyone again.
Each owner's rows (every access, on one model) are written here as soon as they exist,
under the cell's id and a digest of the model's weights: a rerun that rebuilds the very
same model reads them back, and one whose model differs (retrained on another machine,
where float kernels differ) audits anew, so a cell's rows always come from one model.
The folder is removed when the cell's audits are complete.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write_text

AUDITS_FOLDER = "audits"


def weights_digest(model: Any) -> str:
    """SHA-256 of a torch model's parameters and buffers, by name."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class AuditProgress:
    """The rows of the audits a cell has finished, one file per (model, owner)."""

    def __init__(self, partial: Path | None, cell_id: str, models: dict[str, Any]) -> None:
        self.folder = None if partial is None else partial / AUDITS_FOLDER / cell_id
        kept = {} if self.folder is None else models  # nothing kept: nothing to name
        self.digests = {name: weights_digest(m) for name, m in kept.items() if m is not None}

    def _path(self, model: str, owner: int) -> Path:
        assert self.folder is not None
        return self.folder / f"{model}-{self.digests[model][:16]}-{owner}.json"

    def load(self, model: str, owner: int, row_type: type) -> list | None:
        """The owner's rows on ``model`` if a run of this cell on these weights wrote them."""
        if self.folder is None:
            return None
        path = self._path(model, owner)
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if saved.get("weights") != self.digests[model]:
            return None
        return [
            row_type(**{**r, "evidence": base64.b64decode(r["evidence"])}) for r in saved["rows"]
        ]

    def save(self, model: str, owner: int, rows: list) -> None:
        if self.folder is None:
            return
        encoded = [
            {**dataclasses.asdict(r), "evidence": base64.b64encode(r.evidence).decode()}
            for r in rows
        ]
        payload = {"weights": self.digests[model], "rows": encoded}
        atomic_write_text(self._path(model, owner), json.dumps(payload))

    def clear(self) -> None:
        if self.folder is not None:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.folder)
