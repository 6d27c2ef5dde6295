"""The owner's collection as the key marked it: its digest, and the checks an audit makes.

The tracker's randomised-publication null is exact only if the collection the audit
draws its pseudo-users from is the one the key chose the published images from when
they were marked. Swapping the kept-back originals for images the model is unsure about
forges a "trained on" verdict against a model that never saw anything. So the marking
manifest records every original's SHA-256, and its *collection digest* binds them (and
the published files) to the key's commitment: the owner can publish the digest beside
the commitment before releasing any image, and the audit refuses any collection that
does not match the manifest, naming the files (docs/safety.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from .errors import TracemarkError
from .fsutil import sha256_file
from .images import default_manifest_path, list_images, read_manifest

COLLECTION_DOMAIN = b"tracemark/collection/v1\x00"
_DIGEST_FIELDS = ("source", "source_sha256", "published", "marked", "marked_sha256")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SHOWN = 8  # file names listed in one refusal; the rest are counted


def collection_digest(key_commitment: str, files: list[dict[str, Any]]) -> str:
    """SHA-256 binding the key's commitment to every original's and published file's hash.

    Computed over the manifest's entries sorted by source path, so it depends on what
    was marked, not on how the manifest was formatted.
    """
    rows = sorted(([e.get(f) for f in _DIGEST_FIELDS] for e in files), key=lambda r: str(r[0]))
    body = {"key_commitment": key_commitment, "files": rows}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(COLLECTION_DOMAIN + canonical).hexdigest()


def listed(names: list[str]) -> str:
    """File names for a message: the first few, and how many more."""
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _differences(expected: dict[str, str], found: dict[str, str], wording: tuple) -> list[str]:
    """What differs between two {name: sha256} maps, in words: changed, missing, extra."""
    changed = sorted(n for n, sha in found.items() if n in expected and expected[n] != sha)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    return [
        f"{len(names)} {words}: {listed(names)}"
        for names, words in zip((changed, missing, extra), wording, strict=True)
        if names
    ]


class Manifest:
    """A marking manifest, validated: the originals' hashes and what was published."""

    def __init__(self, path: str | os.PathLike, doc: dict[str, Any]) -> None:
        self.path = Path(path)
        self.doc = doc
        self.files: list[dict[str, Any]] = doc["files"]
        self.by_source = {e["source"]: e for e in self.files}
        self.digest = collection_digest(str(doc.get("key_commitment")), self.files)

    @classmethod
    def read(cls, path: str | os.PathLike) -> Manifest:
        """Read ``path`` and refuse a manifest whose entries or digest are damaged."""
        doc = read_manifest(path)
        seen: set[str] = set()
        for i, e in enumerate(doc["files"]):
            ok = (
                isinstance(e, dict)
                and isinstance(e.get("source"), str)
                and isinstance(e.get("source_sha256"), str)
                and _HEX64.fullmatch(e["source_sha256"]) is not None
                and isinstance(e.get("published"), bool)
                and (not e["published"] or isinstance(e.get("marked"), str))
            )
            if not ok or e["source"] in seen:
                raise TracemarkError(
                    f"manifest {path}: entry {i} is damaged or repeated; give the manifest "
                    "that `tracemark mark` wrote"
                )
            seen.add(e["source"])
        manifest = cls(path, doc)
        recorded = doc.get("collection_digest")
        if recorded is not None and recorded != manifest.digest:
            raise TracemarkError(
                f"manifest {path} was edited after marking: its entries give the collection "
                f"digest {manifest.digest}, but it records {recorded}"
            )
        return manifest

    def check_key(self, key_commitment: str) -> None:
        """The manifest was written by marking with this key."""
        if self.doc.get("key_commitment") != key_commitment:
            raise TracemarkError(
                f"manifest {self.path} was written by another key (its commitment is "
                f"{self.doc.get('key_commitment')}, this key's is {key_commitment}); give the "
                "key you marked with, or the manifest of this key's marking"
            )

    def check_originals(self, originals: str | os.PathLike) -> None:
        """Every original on disk is the file the key marked from, and none is missing or new.

        All N entries are checked, published or kept back: the kept-back ones are the
        pseudo-users' material, the published ones are what the owner's set is made of.
        """
        on_disk = {rel: sha256_file(Path(originals) / rel) for rel in list_images(originals)}
        expected = {rel: e["source_sha256"] for rel, e in self.by_source.items()}
        wording = ("changed since marking", "missing", "not in the manifest")
        problems = _differences(expected, on_disk, wording)
        if problems:
            raise TracemarkError(
                f"--originals {originals} is not the collection you marked (manifest "
                f"{self.path}): " + "; ".join(problems) + ". The audit's null is exact only "
                "for the images the key chose from; restore the originals exactly as they "
                "were marked (an edited, replaced or re-encoded file counts as changed)"
            )

    def check_published(self, marked: str | os.PathLike) -> None:
        """The published folder holds exactly the files marking wrote, byte for byte."""
        expected = {e["marked"]: e.get("marked_sha256") for e in self.files if e["published"]}
        on_disk = {rel: sha256_file(Path(marked) / rel) for rel in list_images(marked)}
        wording = ("differ from what mark wrote", "missing", "were not published by this marking")
        problems = _differences(expected, on_disk, wording)
        if problems:
            raise TracemarkError(
                f"--marked {marked} does not hold the files this marking published (manifest "
                f"{self.path}): " + "; ".join(problems) + ". Give the folder `tracemark mark` "
                "wrote; running mark again with the same key and originals regenerates it"
            )


def find_manifest(marked: str | os.PathLike | None, given: str | os.PathLike | None) -> Path | None:
    """The manifest an audit checks: ``--manifest`` when given, else ``MARKED.manifest.json``
    beside the published folder (where mark writes it); None when there is none."""
    if given is not None:
        if not Path(given).is_file():
            raise TracemarkError(f"--manifest {given} does not exist or is not a file")
        return Path(given)
    if marked is None:
        return None
    path = default_manifest_path(marked)
    return path if path.is_file() else None
