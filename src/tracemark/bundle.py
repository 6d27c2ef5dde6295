"""Sealed evidence: an audit's verdict with everything a third party needs to re-check it,
in one zip (``audit --bundle``), and the offline check (``tracemark check``).

A bundle holds the verdict (with its raw scores), the query log (every image hash sent
and answer received, hash-chained), the marking manifest (the files' hashes and the
key's commitment and collection digest recorded at marking time), the audit's settings
and exact command, the tool versions, and ``index.json``: the SHA-256 of every other
file. ``check`` verifies, in order: the index; that the key's commitment is the one the
manifest recorded at marking (and the one given with ``--commitment``, e.g. as published
before the images); that the manifest matches its collection digest and the published
images match the manifest; and that the logged answers give the bundled verdict, bit for
bit. What it cannot prove: the answers are the auditor's record of what the model said;
only the model's operator could confirm them.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import sys
import zipfile
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import TracemarkError
from .verdict import Verdict

FORMAT = "tracemark-evidence-bundle"
VERSION = 1
FILES = ("verdict.json", "query-log.jsonl", "manifest.json", "audit.json", "versions.json")
MAX_MEMBER_BYTES = 512 * 2**20  # a bundle member larger than this is refused (zip bombs)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions() -> dict[str, str]:
    """tracemark, Python, and the numeric libraries the audit ran on."""
    out = {"tracemark": __version__, "python": platform.python_version()}
    for name in ("numpy", "torch", "onnxruntime"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = str(getattr(module, "__version__", "?"))
    return out


def write_bundle(
    path: Path,
    verdict: Verdict,
    query_log: Path,
    manifest: Path,
    audit: dict[str, Any],
    force: bool = False,
    protect=(),
) -> Path:
    """Write the bundle atomically (an existing file is replaced only with ``force``)."""
    from .fsutil import atomic_write_bytes

    members = {
        "verdict.json": (verdict.model_dump_json(indent=2) + "\n").encode(),
        "query-log.jsonl": Path(query_log).read_bytes(),
        "manifest.json": Path(manifest).read_bytes(),
        "audit.json": (json.dumps(audit, indent=2, sort_keys=True, default=str) + "\n").encode(),
        "versions.json": (json.dumps(versions(), indent=2, sort_keys=True) + "\n").encode(),
    }
    index = {
        "format": FORMAT,
        "version": VERSION,
        "files": {name: _sha(data) for name, data in members.items()},
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr("index.json", json.dumps(index, indent=2, sort_keys=True) + "\n")
    atomic_write_bytes(path, buffer.getvalue(), force=force, protect=list(protect))
    return path


def read_bundle(path: Path) -> dict[str, bytes]:
    """The bundle's files, each checked against ``index.json``."""
    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise TracemarkError(f"{path} is not an evidence bundle (a zip): {exc}") from None
    with z:
        infos = {i.filename: i for i in z.infolist()}
        if "index.json" not in infos:
            raise TracemarkError(f"{path} has no index.json: it is not an evidence bundle")
        for info in infos.values():
            if info.file_size > MAX_MEMBER_BYTES:
                raise TracemarkError(f"bundle member {info.filename} is too large to read")
        data = {name: z.read(name) for name in infos}
    try:
        index = json.loads(data.pop("index.json"))
    except ValueError:
        raise TracemarkError(f"{path}: index.json is not JSON") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise TracemarkError(f"{path} is not a tracemark evidence bundle")
    listed = index.get("files", {})
    if set(listed) != set(FILES) or set(data) != set(FILES):
        extra = sorted(set(data) ^ set(FILES))
        raise TracemarkError(f"bundle index: files missing or added ({', '.join(extra)})")
    for name in FILES:
        if _sha(data[name]) != listed[name]:
            raise TracemarkError(
                f"bundle index: {name} does not match its SHA-256 in index.json (the file "
                "was changed after the audit bundled it)"
            )
    return data


def check_bundle(
    path: Path,
    key,
    marked: Path | None,
    *,
    originals: Path | None = None,
    aux: Path | None = None,
    testset: Path | None = None,
    commitment: str | None = None,
    workdir: Path,
) -> Verdict:
    """Re-check a bundle offline; return the recomputed verdict. Every mismatch is a
    :class:`TracemarkError` naming what did not match."""
    from .api import audit as run_audit
    from .collection import collection_digest
    from .fsutil import sha256_file
    from .oracle.open import ModelOptions

    data = read_bundle(path)
    bundled = Verdict.model_validate_json(data["verdict.json"])
    manifest = json.loads(data["manifest.json"])
    settings = json.loads(data["audit.json"])
    mine = key.commitment()
    recorded = manifest.get("key_commitment")
    if mine != recorded or mine != bundled.key_commitment:
        raise TracemarkError(
            f"another key: its commitment {mine} is not the one recorded at marking "
            f"({recorded}) and in the verdict ({bundled.key_commitment})"
        )
    if commitment is not None and commitment.strip().lower() != mine:
        raise TracemarkError(
            f"wrong commitment: the key's commitment is {mine}, not the {commitment} given"
        )
    digest = collection_digest(mine, manifest.get("files", []))
    if digest != manifest.get("collection_digest"):
        raise TracemarkError(
            "the manifest does not match its collection digest: it was edited after marking"
        )
    if marked is not None:
        for entry in manifest.get("files", []):
            if not entry.get("published"):
                continue
            file = Path(marked) / entry["marked"]
            if not file.is_file():
                raise TracemarkError(f"changed image: {entry['marked']} is missing from {marked}")
            if sha256_file(file) != entry["marked_sha256"]:
                raise TracemarkError(
                    f"changed image: {entry['marked']} in {marked} is not the file marked "
                    "(its SHA-256 differs from the manifest's)"
                )
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "query-log.jsonl"
    log.write_bytes(data["query-log.jsonl"])
    manifest_path = workdir / "manifest.json"
    manifest_path.write_bytes(data["manifest.json"])
    method_options = settings["options"]
    given = settings.get("model_options", {})
    model_options = ModelOptions(
        replay=True,
        outputs=given.get("outputs", "auto"),
        size=tuple(given["size"]) if given.get("size") else None,
        mode=given.get("mode", "auto"),
        class_names=tuple(given["class_names"]) if given.get("class_names") else None,
    )
    again = run_audit(
        log,
        key,
        marked,
        originals=originals,
        aux=aux,
        testset=testset,
        label=settings.get("label"),
        manifest=manifest_path,
        model_options=model_options,
        **method_options,
    )
    # ``queries`` is what the audit sent (a replay sends nothing; a resumed audit's log also
    # holds the answers of its earlier runs): it must not exceed what the log holds. The
    # manifest's path is the auditor's. Everything else must be identical.
    records = data["query-log.jsonl"].count(b"\n") - 1
    if not 0 < bundled.queries <= records:
        raise TracemarkError(
            f"the verdict claims {bundled.queries} queries, the query log holds {records} answers"
        )
    a, b = (v.model_dump(mode="json", exclude={"notes", "queries"}) for v in (bundled, again))
    for d in (a, b):
        d["statistics"].get("inputs_checked", {}).pop("manifest", None)
    if a != b:
        differ = sorted(k for k in a if a[k] != b.get(k))
        if "statistics" in differ:
            sa, sb = a["statistics"], b["statistics"]
            differ.remove("statistics")
            keys = sorted(set(sa) | set(sb))
            differ += [f"statistics.{k}" for k in keys if sa.get(k) != sb.get(k)]
        raise TracemarkError(
            f"the logged answers give another verdict ({', '.join(differ)} differ: bundled "
            f"p = {bundled.p_value:.6g}, recomputed p = {again.p_value:.6g})"
        )
    return again
