"""One-call entry points: mark a folder, audit a model, watermark and verify a dataset.

Every call is dispatched through the method registry (:mod:`tracemark.methods.registry`)
by the key's method; the command line is a thin layer over these.

    import tracemark
    tracemark.mark_folder("me.key", "photos/", "published/", publish=25)
    verdict = tracemark.audit("suspect.onnx", "me.key", "published/", originals="photos/")
    tracemark.watermark_dataset("fashion-mnist", "release/", "release.key", variant="ubw-p")
    verdict = tracemark.verify("suspect.onnx", "release.key", "release/")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._version import __version__
from .collection import collection_digest
from .datasets import LabelledImages, load_dataset, load_image_pool
from .errors import TracemarkError
from .fsutil import check_output, sha256_file
from .images import (
    ColourMode,
    default_manifest_path,
    list_images,
    read_folder,
    write_images,
    write_manifest,
)
from .keys import Key, load_key
from .methods import registry
from .methods.base import AuditOptions, AuditSources, MarkedData
from .options import option, resolve
from .oracle.open import ModelOptions, open_oracle
from .verdict import Verdict

PathLike = str | os.PathLike
ProgressFactory = Callable[[str, int], Callable[[int], None]]

__all__ = [
    "MarkOptions",
    "audit",
    "check_manifest_path",
    "default_manifest_path",
    "distinguish_marks",
    "mark_folder",
    "verify",
    "watermark_dataset",
    "watermark_report",
]


def _key(key: Key | PathLike, method: str | None = None) -> Key:
    if isinstance(key, Key):
        return key
    return load_key(key, method=method)


# ----------------------------------------------------------------------------- marking


@dataclass(frozen=True)
class MarkOptions:
    """How ``mark`` writes the marked copies (the one home of these defaults)."""

    fmt: Literal["png", "jpeg"] = option("png", "Output format.", "--format")
    quality: int = option(95, "JPEG quality.", min=1, max=100)
    mode: ColourMode = option("auto", "Colour mode of the output.")
    manifest: Path | None = option(None, "Manifest path (default: OUT.manifest.json beside OUT).")
    publish: int | None = option(
        None,
        "tracker: publish only the key's random choice of this many images of SRC (the rest "
        "stay private and make the audit stronger); default: all of them.",
        min=1,
    )
    preview: Path | None = option(
        None, "Also write a PNG of original | marked | amplified difference for a few images."
    )
    force: bool = option(False, "Overwrite existing outputs.")


PREVIEW_IMAGES = 4  # rows of a --preview


def mark_folder(
    key: Key | PathLike,
    src: PathLike,
    out: PathLike,
    *,
    options: MarkOptions | None = None,
    progress: ProgressFactory | None = None,
    **changes: Any,
) -> Path:
    """Write marked copies of the images under ``src`` to ``out``; return the manifest path.

    ``options`` (or its fields as keywords, e.g. ``publish=25``): :class:`MarkOptions`.
    tracker keys mark and write the key's random choice of ``publish`` images (all of
    them when None; noise seeded by each relative path): keep ``src`` whole, since the
    audit draws its pseudo-users from it. isotope keys mark a share p of the images
    (chosen by hashing the relative paths) and copy the rest. Re-marking gives identical
    files. Nothing is written if any output exists (unless ``force``).
    """
    o = resolve(MarkOptions, options, changes)
    key = _key(key)
    method = registry.get(key.method)
    if method.kind != "images":
        raise TracemarkError(
            f"{key.method} keys watermark a whole labelled dataset: use "
            "`tracemark watermark SRC OUT`"
        )
    manifest = Path(o.manifest) if o.manifest is not None else default_manifest_path(out)
    check_manifest_path(manifest, src, out, force=o.force)
    if o.preview is not None:
        why = "it shows your originals, so it must stay private"
        check_private_output(Path(o.preview), src, out, o.force, "preview", why)
    count = len(list_images(src))
    bar = progress or (lambda _d, _t: None)
    images = read_folder(src, mode=o.mode, progress=bar("reading", count))
    marked = method.mark(images.images, key, ids=images.rel_paths, publish=o.publish)
    published = [rel for rel, c in zip(images.rel_paths, marked.published, strict=True) if c]
    written = write_images(
        marked.images,
        published,
        out,
        src_root=src,
        fmt=o.fmt,
        quality=o.quality,
        force=o.force,
        progress=bar("writing", count),
    )
    entries = _manifest_entries(src, images.rel_paths, published, written, marked)
    stealth_summary = _measure_stealth(images, marked, entries, o, src)
    commitment = key.commitment()
    meta = {
        "method": key.method,
        "params": key.public_info()["params"],
        "key_commitment": commitment,
        "collection_digest": collection_digest(commitment, entries),
        "colour_mode": images.mode,
        "marked_images": int(marked.carries_mark.sum()),
        "published_images": len(published),
        "collection_images": len(images),
        "source_root": str(Path(src).resolve()),
        "marked_root": str(Path(out).resolve()),
        **({"jpeg_quality": o.quality} if o.fmt == "jpeg" else {}),
        "created": datetime.now(UTC).isoformat(),
        "tracemark_version": __version__,
        "stealth": stealth_summary,
    }
    write_manifest(manifest, entries, meta, force=o.force, protect=(src,))
    return manifest


def _measure_stealth(images, marked: MarkedData, entries: list[dict], o, src) -> dict:
    """PSNR and SSIM of every marked copy against its original (into its manifest entry),
    their summary, and the --preview picture; warnings where the key's settings are known
    to carry no signal for these images."""
    import warnings

    from .stealth import measure, summarise, warnings_for, write_preview

    where = np.flatnonzero(marked.published)
    pairs = [
        (i, images.images[i], np.asarray(m))
        for i, m, f in zip(where, marked.images, marked.carries_mark, strict=True)
        if f
    ]
    by_source = {e["source"]: e for e in entries}
    measured = []
    for i, original, copy in pairs:
        figures = measure(original, copy)
        by_source[images.rel_paths[i]].update(figures)
        measured.append(figures)
    channels = {np.asarray(x).shape[-1] for x in images.images}
    if len(channels) == 1:
        for why in warnings_for(marked.key.method, marked.key.params, channels.pop()):
            warnings.warn(why, UserWarning, stacklevel=3)
    if o.preview is not None and pairs:
        shown = pairs[:PREVIEW_IMAGES]
        originals, copies = [a for _, a, _ in shown], [b for _, _, b in shown]
        write_preview(originals, copies, Path(o.preview), force=o.force, protect=(src,))
    return summarise(measured)


def _manifest_entries(
    src: PathLike,
    rel_paths: Sequence[str],
    published: list[str],
    written: list[dict],
    marked: MarkedData,
) -> list[dict[str, Any]]:
    """One manifest entry per source file: its hash, and its marked copy when published."""
    outputs = dict(
        zip(published, zip(written, marked.carries_mark.tolist(), strict=True), strict=True)
    )
    entries = []
    for rel in rel_paths:
        entry: dict[str, Any] = {"source": rel, "source_sha256": sha256_file(Path(src) / rel)}
        if rel in outputs:
            w, f = outputs[rel]
            entry |= {**w, "carries_mark": f, "published": True}
        else:
            entry["published"] = False
        entries.append(entry)
    return entries


def check_private_output(
    path: Path, src: PathLike, out: PathLike, force: bool, what: str, why: str
) -> None:
    """A private file (the manifest, a --preview) goes outside SRC (the originals) and
    outside OUT (the folder you publish); ``why`` ends the refusal."""
    check_output(path, force=force, protect=(src,), what=what)
    target, out_root = path.parent.resolve() / path.name, Path(out).resolve()
    if target == out_root or target.is_relative_to(out_root):
        raise TracemarkError(f"{what} {path} is inside {out}, the folder you publish; {why}")


def check_manifest_path(manifest: Path, src: PathLike, out: PathLike, force: bool) -> None:
    """The manifest stays private: it links each published file to its original."""
    why = (
        "the manifest must stay private (it links each published file to its original). "
        f"Leave out --manifest to write {default_manifest_path(out)}"
    )
    check_private_output(manifest, src, out, force, "manifest", why)


# ----------------------------------------------------------------------------- auditing


def audit(
    model: Any,
    key: Key | PathLike,
    marked: PathLike | np.ndarray | None = None,
    *,
    originals: PathLike | None = None,
    aux: PathLike | np.ndarray | LabelledImages | None = None,
    testset: PathLike | LabelledImages | None = None,
    label: int | None = None,
    holdout: Any = None,
    manifest: PathLike | None = None,
    options: AuditOptions | None = None,
    model_options: ModelOptions | None = None,
    progress: Callable[[int], None] | None = None,
    **changes: Any,
) -> Verdict:
    """Was ``model`` trained on the images (or the dataset) marked with ``key``?

    ``model``: an oracle, a torch module, a path (.onnx, TorchScript, checkpoint), or an
    http(s) URL (``http://HOST:PORT/v2/models/NAME``); ``model_options``
    (:class:`~tracemark.oracle.open.ModelOptions`) says how to reach and read it.
    ``marked``: your published images (folder or array). Tracker keys need
    ``originals``: the folder of every image given to :func:`mark_folder` (published or
    kept back); ``marked`` (a folder) then says which of them were published, and when
    it is None every original counts as published. ``manifest``: the marking manifest
    (default: ``MARKED.manifest.json`` beside ``marked``); a tracker audit that kept
    originals back refuses to run without it, and refuses originals or published files
    that differ from what the key marked. Isotope keys need ``aux``: images of
    the same domain (flat, or class subfolders); ``marked`` is then only used to discover
    your class when ``label`` is None (physical procedure: ``marked`` holds photos showing
    the object and ``aux`` comparable photos without it). Dataset (UBW) keys need
    ``testset``: labelled images the model did not train on.

    ``options``: the key's method's options class (``TrackerOptions``, ``IsotopeOptions``,
    ``UbwOptions``), or its fields as keywords (``alpha=0.05, n_pseudo=99``).
    """
    key = _key(key)
    method = registry.get(key.method)
    options = resolve(method.options, options, changes)
    model_options = model_options or ModelOptions()
    oracle = open_oracle(model, model_options)
    sources = AuditSources(marked, originals, aux, testset, label, holdout, manifest)
    data = method.read(key, sources, model_options)
    verdict = method.audit(oracle, key, data, options, progress)
    if data.checked:
        verdict.statistics["inputs_checked"] = data.checked
        verdict.notes.append(_checked_note(data.checked))
    return verdict


def _checked_note(checked: dict[str, Any]) -> str:
    """What was verified about the inputs, in words, for the verdict's notes."""
    parts = []
    if "collection_digest" in checked:
        parts.append(
            f"all {checked['originals_checked']} originals match the marking manifest "
            f"(collection digest {checked['collection_digest']})"
        )
    if "published_regenerated" in checked:
        flips = checked.get("noise_flips_accepted", 0)
        parts.append(
            f"the {checked['published_regenerated']} published files carry this key's marks "
            "(regenerated and compared"
            + (
                f"; {flips} pixel(s) with the noise's sign the other way, as marks made on "
                "another kind of CPU differ, accepted"
                if flips
                else ""
            )
            + ")"
        )
    return "inputs checked: " + "; ".join(parts) if parts else "inputs checked: none"


def verify(
    model: Any,
    key: Key | PathLike,
    testset: PathLike | LabelledImages,
    *,
    options: AuditOptions | None = None,
    model_options: ModelOptions | None = None,
    **changes: Any,
) -> Verdict:
    """Was ``model`` trained on the dataset watermarked with ``key``?

    ``testset``: labelled images the model did not train on ("fashion-mnist", a release
    folder with a test split, class folders, .npz). ``options`` (or its fields as
    keywords, e.g. ``m=500, null_triggers=99``): :class:`~tracemark.methods.ubw.UbwOptions`.
    ``trigger="independent"`` runs the Independent-T control. The same as :func:`audit`
    with a dataset key.
    """
    key = _key(key, method="ubw")
    return audit(
        model, key, testset=testset, options=options, model_options=model_options, **changes
    )


# ----------------------------------------------------------------------------- datasets


def watermark_dataset(
    src: PathLike,
    out: PathLike,
    key_out: PathLike,
    variant: str = "ubw-p",
    *,
    method: str = "ubw",
    force: bool = False,
    device: str = "auto",
    progress_factory: ProgressFactory | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Watermark the training split of ``src`` into ``out`` (same layout) and write the key.

    ``method`` is a dataset method (UBW); ``params`` are its key parameters (UBW: gamma,
    trigger, target, epsilon, ...). Nothing is overwritten unless ``force``; the key
    (0600) is written only after the release, so a failed run leaves neither behind.
    """
    from .dataset_writers import write_release

    check_output(key_out, force=force, protect=[src] if Path(src).exists() else [], what="key")
    if Path(out).exists() and not force:
        raise TracemarkError(f"{out} already exists; pass --force to replace it")
    if registry.get(method).kind != "dataset":
        raise TracemarkError(f"{method} keys mark an owner's own images: use `tracemark mark`")
    key = Key.generate(method, variant=variant, **params)
    data = load_dataset(src, split="train")
    marked = registry.get(method).mark(data, key, progress_factory=progress_factory, device=device)
    release = LabelledImages(marked.images, marked.labels, list(data.classes), data.ids)
    files = write_release(release, src, out, force=force)
    stealth = _release_stealth(data.images, release.images, marked.carries_mark)
    key = marked.key.model_copy(update={"params": {**marked.key.params, "stealth": stealth}})
    key.save(key_out, force=force)
    p = key.typed_params()
    return {
        "variant": p.variant,
        "trigger": p.trigger,
        "gamma": p.gamma,
        "images": len(release),
        "poisoned": int(marked.carries_mark.sum()),
        "labels_changed": int(np.count_nonzero(release.labels != data.labels)),
        "max_pixel_change": float(np.abs(release.images - data.images).max()),
        "release": files,
        "key": str(key_out),
        "key_commitment": key.commitment(),
        "release_sha256": p.release_sha256,
        "stealth": stealth,
    }


def _release_stealth(originals: np.ndarray, released: np.ndarray, watermarked) -> dict:
    """PSNR and SSIM of every watermarked image of a release against its original."""
    from .stealth import measure, summarise

    idx = np.flatnonzero(np.asarray(watermarked, dtype=bool))
    return summarise([measure(originals[i], released[i]) for i in idx])


def watermark_report(
    model: Any,
    key: Key | PathLike,
    testset: PathLike | LabelledImages,
    *,
    options: AuditOptions | None = None,
    model_options: ModelOptions | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """BA, ASR-A, ASR-C, D_p, D_s, D_c of ``model`` on ``testset`` (needs probabilities),
    under the key's trigger or (``options.trigger="independent"``) a never-published one.
    ``limit``: use only the first ``limit`` test images."""
    from .methods import ubw
    from .oracle.base import expect_classes

    key = _key(key, method="ubw")
    options = resolve(ubw.UbwOptions, options, {})
    test = ubw.load_testset(testset)
    n = key.typed_params().num_classes
    ubw.check_test_labels(test, n)
    if limit is not None:
        test = test.subset(np.arange(min(limit, len(test))))
    oracle = open_oracle(model, model_options or ModelOptions())
    expect_classes(oracle, n, f"the key (num_classes = {n})")

    def probs(images: np.ndarray) -> np.ndarray:
        resp = oracle.query(images)
        if resp.mode != "probabilities":
            raise TracemarkError("watermark-report needs a model that returns probabilities")
        return resp.probs

    metrics = ubw.report(probs, key, test, which=options.trigger)
    p = key.typed_params()
    return {"variant": p.variant, "trigger": options.trigger, **metrics, "queries": oracle.queries}


def distinguish_marks(
    model: Any,
    keys: Sequence[Key | PathLike],
    labels: Sequence[int],
    aux: PathLike | np.ndarray | LabelledImages,
    *,
    options: AuditOptions | None = None,
    model_options: ModelOptions | None = None,
) -> dict:
    """Isotope V_D over several keys' marks; a JSON-ready dict of pairwise p-values."""
    from .methods import isotope

    alpha = resolve(isotope.IsotopeOptions, options, {}).alpha
    loaded = [_key(k) for k in keys]
    if len(loaded) != len(labels):
        raise TracemarkError(f"{len(loaded)} keys but {len(labels)} labels: give one class per key")
    model_options = model_options or ModelOptions()
    marks = [isotope.key_mark(k) for k in loaded]
    pool = aux
    if isinstance(aux, (str, os.PathLike)):
        pool = load_image_pool(aux, model_options.mode, model_options.size)
    result = isotope.distinguish(
        open_oracle(model, model_options),
        marks,
        labels,
        getattr(pool, "images", pool),
        [k.typed_params().visibility for k in loaded],
        alpha=alpha,
        aux_labels=getattr(pool, "labels", None),
    )
    return {
        "keys": [str(k) for k in keys],
        "labels": list(labels),
        "key_commitments": [k.commitment() for k in loaded],
        "p_values": result.p_values.tolist(),
        "distinguished": result.distinguished.tolist(),
        "all_distinguished": result.all_distinguished(),
        "alpha": alpha,
        "queries": result.queries,
    }
