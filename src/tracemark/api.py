"""One-call entry points: mark a folder, audit a model. The CLI is a thin layer over these.

import tracemark
tracemark.mark_folder("me.key", "photos/", "published/")
tracemark.mark_folder("me.key", "photos/", "published/", publish=25)
verdict = tracemark.audit("suspect.onnx", "me.key", "published/", originals="photos/")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from ._version import __version__
from .datasets import LabelledImages
from .errors import TracemarkError
from .fsutil import check_output, sha256_file
from .images import (
    detect_mode,
    list_images,
    read_folder,
    read_manifest,
    write_images,
    write_manifest,
)
from .keys import Key, load_key
from .oracle.open import open_oracle
from .verdict import Verdict

PathLike = str | os.PathLike
ProgressFactory = Callable[[str, int], Callable[[int], None]]


def _key(key: Key | PathLike) -> Key:
    return key if isinstance(key, Key) else load_key(key)


def default_manifest_path(out: PathLike) -> Path:
    """``OUT.manifest.json`` beside OUT, so OUT itself can be published as it is."""
    out = Path(out)
    return out.parent / f"{out.name}.manifest.json"


def mark_folder(
    key: Key | PathLike,
    src: PathLike,
    out: PathLike,
    *,
    fmt: Literal["png", "jpeg"] = "png",
    quality: int = 95,
    mode: Literal["auto", "RGB", "L"] = "auto",
    manifest: PathLike | None = None,
    publish: int | None = None,
    force: bool = False,
    progress: ProgressFactory | None = None,
) -> Path:
    """Write marked copies of the images under ``src`` to ``out``; return the manifest path.

    tracker keys mark and write the key's random choice of ``publish`` images (all of
    them when None; noise seeded by each relative path): keep ``src`` whole, since the
    audit draws its pseudo-users from it. isotope keys mark a share p of the images
    (chosen by hashing the relative paths) and copy the rest. Re-marking gives identical
    files. Nothing is written if any output exists (unless ``force``).
    """
    from .methods import isotope, tracker

    key = _key(key)
    if key.method == "ubw":
        raise TracemarkError(
            "ubw keys watermark a whole labelled dataset: use `tracemark watermark SRC OUT`"
        )
    if key.method not in ("tracker", "isotope"):
        raise TracemarkError(f"marking with {key.method!r} keys is not available")
    manifest = Path(manifest) if manifest is not None else default_manifest_path(out)
    check_manifest_path(manifest, src, out, force=force)
    if publish is not None and key.method != "tracker":
        raise TracemarkError("--publish is for tracker keys; isotope keys choose their share p")
    count = len(list_images(src))
    bar = progress or (lambda _d, _t: None)
    images = read_folder(src, mode=mode, progress=bar("reading", count))
    if key.method == "tracker":
        chosen = tracker.choose_published(key, images.rel_paths, publish)
        published = [rel for rel, c in zip(images.rel_paths, chosen, strict=True) if c]
        picked = [x for x, c in zip(images.images, chosen, strict=True) if c]
        marked = tracker.mark(picked, key, ids=published)
        flags = [True] * len(published)
    else:  # isotope: a fraction p of the images carry the mark, the rest are copies
        marked, chosen = isotope.mark(images.images, key, ids=images.rel_paths)
        flags = chosen.tolist()
        published = images.rel_paths
    written = write_images(
        marked,
        published,
        out,
        src_root=src,
        fmt=fmt,
        quality=quality,
        force=force,
        progress=bar("writing", count),
    )
    outputs = dict(zip(published, zip(written, flags, strict=True), strict=True))
    entries = []
    for rel in images.rel_paths:
        entry = {"source": rel, "source_sha256": sha256_file(Path(src) / rel)}
        if rel in outputs:
            w, f = outputs[rel]
            entry |= {**w, "carries_mark": f, "published": True}
        else:
            entry["published"] = False
        entries.append(entry)
    meta = {
        "method": key.method,
        "params": key.public_info()["params"],
        "key_commitment": key.commitment(),
        "marked_images": int(sum(flags)),
        "published_images": len(published),
        "collection_images": len(images),
        "source_root": str(Path(src).resolve()),
        "marked_root": str(Path(out).resolve()),
        "created": datetime.now(timezone.utc).isoformat(),
        "tracemark_version": __version__,
    }
    write_manifest(manifest, entries, meta, force=force, protect=(src,))
    return manifest


def check_manifest_path(manifest: Path, src: PathLike, out: PathLike, force: bool) -> None:
    """The manifest goes outside SRC (the originals) and outside OUT (the folder you
    publish: the manifest links each published file to its original, so it stays private)."""
    check_output(manifest, force=force, protect=(src,), what="manifest")
    target, out_root = manifest.parent.resolve() / manifest.name, Path(out).resolve()
    if target == out_root or target.is_relative_to(out_root):
        raise TracemarkError(
            f"manifest {manifest} is inside {out}, the folder you publish; the manifest must "
            f"stay private (it links each published file to its original). Leave out "
            f"--manifest to write {default_manifest_path(out)}"
        )


def load_holdout(
    path: PathLike,
    mode: Literal["auto", "RGB", "L"] = "auto",
    size: tuple[int, int] | None = None,
    class_names: Sequence[str] | None = None,
) -> np.ndarray | LabelledImages:
    """A flat folder (images like the user's) or class subfolders (named by index or name)."""
    path = Path(path)
    if not path.is_dir():
        raise TracemarkError(f"held-out folder {path} does not exist or is not a folder")
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    subdirs = sorted(p for p in entries if p.is_dir())
    if not subdirs or any(p.is_file() for p in entries):
        return read_folder(path, mode=mode, size=size).stack()
    if mode == "auto":  # one colour mode for every class folder, so they stack
        mode = detect_mode(path / rel for rel in list_images(path))
    names = list(class_names or [])
    images, labels = [], []
    for d in subdirs:
        if d.name.isdigit():
            label = int(d.name)
        elif d.name in names:
            label = names.index(d.name)
        else:
            raise TracemarkError(
                f"held-out subfolder {d.name!r} is neither a class index nor in --class-names"
            )
        x = read_folder(d, mode=mode, size=size).stack()
        images.append(x)
        labels.extend([label] * len(x))
    return LabelledImages(np.concatenate(images), np.array(labels, dtype=np.int64), names)


def _stem(rel: str) -> str:
    return PurePosixPath(rel).with_suffix("").as_posix()


def tracker_collection(
    originals: PathLike | None,
    marked: PathLike | np.ndarray | None,
    mode: Literal["auto", "RGB", "L"] = "auto",
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The originals a tracker audit needs: images, their ids, and which were published.

    ``originals``: the folder given to ``mark`` (ids are its relative paths, as when
    marking). ``marked``: the published folder; each of its files names its original
    by relative path (the suffix aside). None: every original was published.
    """
    if originals is None or isinstance(originals, np.ndarray):
        raise TracemarkError(
            "the tracker audit needs --originals: the folder of every image you gave to "
            "`tracemark mark` (the audit re-marks them to build its pseudo-users)"
        )
    if marked is not None and not isinstance(marked, (str, os.PathLike)):
        raise TracemarkError("give the published images as a folder (--marked) for a tracker audit")
    if marked is not None:
        refuse_shared(
            originals,
            marked,
            "--originals holds {n} of the marked files (e.g. {example}); give the unmarked "
            "originals you marked from",
        )
    folder = read_folder(originals, mode=mode, size=size)
    ids = list(folder.rel_paths)
    if marked is None:
        return folder.stack(), ids, np.ones(len(ids), dtype=bool)
    stems = {_stem(rel): i for i, rel in enumerate(ids)}
    published = np.zeros(len(ids), dtype=bool)
    for rel in list_images(marked):
        if _stem(rel) not in stems:
            raise TracemarkError(
                f"{Path(marked) / rel} has no original in {originals}: give the folder you "
                "marked from as --originals"
            )
        published[stems[_stem(rel)]] = True
    if not published.any():
        raise TracemarkError(f"{marked} holds no images")
    return folder.stack(), ids, published


def folder_hashes(folder: PathLike) -> dict[str, str]:
    """SHA-256 of every image file under ``folder`` -> its relative path."""
    return {sha256_file(Path(folder) / rel): rel for rel in list_images(folder)}


def refuse_shared(folder: PathLike, published: PathLike, message: str) -> None:
    """Refuse ``folder`` if it holds any of the files under ``published`` (by SHA-256)."""
    theirs = folder_hashes(published)
    shared = [rel for sha, rel in folder_hashes(folder).items() if sha in theirs]
    if shared:
        raise TracemarkError(message.format(n=len(shared), example=Path(folder) / shared[0]))


def isotope_flags(key: Key, marked: PathLike, rel_paths: Sequence[str]) -> np.ndarray:
    """Which published files carry the isotope mark: from the manifest beside the folder
    when there is one (it maps each file to its source's id), else from the file names."""
    from .methods import isotope

    manifest = default_manifest_path(marked)
    if manifest.exists():
        flags = {e.get("marked"): e.get("carries_mark") for e in read_manifest(manifest)["files"]}
        if all(isinstance(flags.get(rel), bool) for rel in rel_paths):
            return np.array([flags[rel] for rel in rel_paths], dtype=bool)
    return isotope.select_marked(key, list(rel_paths))


def _images(source, mode: str, size) -> tuple[np.ndarray, str]:
    """A folder or an array of images, and its colour mode."""
    if isinstance(source, np.ndarray):
        return source, "L" if source.shape[-1] == 1 else "RGB"
    folder = read_folder(source, mode=mode, size=size)
    return folder.stack(), folder.mode


def _pool(source, colour: str, size, class_names):
    if source is None or not isinstance(source, (str, os.PathLike)):
        return source
    return load_holdout(source, colour, size, class_names)


def audit(
    model,
    key: Key | PathLike,
    marked: PathLike | np.ndarray | None,
    holdout: PathLike | np.ndarray | LabelledImages | None = None,
    *,
    originals: PathLike | None = None,
    aux: PathLike | np.ndarray | LabelledImages | None = None,
    label: int | None = None,
    alpha: float = 0.01,
    n_pseudo: int = 1000,
    procedure: Literal["calibrated", "paper", "physical"] = "calibrated",
    externals: int = 99,
    aux_per_mark: int = 100,
    rounds: int = 5,
    round_size: int = 250,
    lam: float = 0.1,
    delta: float = 0.6,
    access: Literal["auto", "probabilities", "label", "topk"] = "auto",
    outputs: Literal["auto", "probabilities", "logits"] = "auto",
    budget: int | None = None,
    size: tuple[int, int] | None = None,
    mode: Literal["auto", "RGB", "L"] = "auto",
    class_names: Sequence[str] | None = None,
    testset: PathLike | LabelledImages | None = None,
    progress: Callable[[int], None] | None = None,
) -> Verdict:
    """Was ``model`` trained on the images marked with ``key``?

    ``model``: an oracle, a torch module, a path (.onnx, TorchScript, checkpoint), or an
    http(s) URL (``http://HOST:PORT/v2/models/NAME``; for more control pass
    :func:`tracemark.oracle.open_endpoint`'s oracle, with a query log).
    ``marked``: your published images (folder or array). Tracker keys need
    ``originals``: the folder of every image given to :func:`mark_folder` (published or
    kept back); ``marked`` (a folder) then says which of them were published, and when
    it is None every original counts as published (see :func:`tracker_collection`).
    Isotope keys need ``aux``: images of the same domain (flat, or class subfolders);
    ``marked`` is then only used to discover your class when ``label`` is None. With
    ``procedure="physical"``, ``marked`` holds photos showing the object and ``aux``
    comparable photos without it. UBW (dataset) keys need ``testset``: labelled images
    the model did not train on (see :func:`tracemark.verify`). Returns a :class:`Verdict`.
    """
    key = _key(key)
    oracle = open_oracle(model, outputs, budget)
    if key.method == "ubw":
        from .dataset_watermark import verify

        if testset is None:
            raise TracemarkError("a UBW audit needs labelled test images (--testset)")
        return verify(oracle, key, testset, alpha=alpha, access=access)
    if key.method == "tracker":
        from .methods import tracker

        if holdout is not None:
            raise TracemarkError(
                "the tracker audit no longer takes a holdout: pseudo-users drawn from other "
                "images are not exchangeable with yours (with small holdouts that flagged up "
                "to a third of clean models at alpha = 0.05). Give --originals: the folder "
                "of every image you gave to `tracemark mark`"
            )
        if access == "topk":
            raise TracemarkError("the tracker audit takes access auto, probabilities or label")
        collection, ids, published = tracker_collection(originals, marked, mode, size)
        return tracker.audit(
            oracle,
            key,
            collection,
            ids=ids,
            published=published,
            label=label,
            alpha=alpha,
            n_pseudo=n_pseudo,
            access=access,
            progress=progress,
        )
    if key.method != "isotope":
        raise TracemarkError(f"audit of {key.method!r} keys is not available")
    from .methods import isotope

    if holdout is not None:
        raise TracemarkError(
            "isotope audits take no --holdout: give --aux, images of the same domain that "
            "are not yours"
        )
    if access == "label":
        access = "topk"  # a label is a top-1 list: the rank-shift test handles it
    if aux is None:
        raise TracemarkError(
            "the isotope audit needs auxiliary images of the same domain (--aux): a flat "
            "folder, or one subfolder per class"
        )
    if procedure == "physical":
        if label is None or marked is None:
            raise TracemarkError(
                "physical mode needs --label, --marked (photos with the object) "
                "and --aux (comparable photos without it)"
            )
        with_mark, colour = _images(marked, mode, size)
        without = _pool(aux, colour, size, class_names)
        without = getattr(without, "images", without)
        return isotope.physical_audit(
            oracle, with_mark, without, label, alpha=alpha, key=key, access=access
        )
    user_images, colour, carries_mark = None, mode, None
    if isinstance(marked, np.ndarray):
        user_images, colour = _images(marked, mode, size)
    elif marked is not None:
        folder = read_folder(marked, mode=mode, size=size)
        user_images, colour = folder.stack(), folder.mode
        carries_mark = isotope_flags(key, marked, folder.rel_paths)
    return isotope.audit(
        oracle,
        key,
        user_images,
        _pool(aux, colour, size, class_names),
        label=label,
        carries_mark=carries_mark,
        alpha=alpha,
        procedure=procedure,
        externals=externals,
        aux_per_mark=aux_per_mark,
        rounds=rounds,
        round_size=round_size,
        lam=lam,
        delta=delta,
        access=access,
        progress=progress,
    )


def distinguish_marks(
    model,
    keys: Sequence[Key | PathLike],
    labels: Sequence[int],
    aux: PathLike | np.ndarray | LabelledImages,
    *,
    alpha: float = 0.01,
    outputs: Literal["auto", "probabilities", "logits"] = "auto",
    size: tuple[int, int] | None = None,
    mode: Literal["auto", "RGB", "L"] = "auto",
) -> dict:
    """Isotope V_D over several keys' marks; a JSON-ready dict of pairwise p-values."""
    from .methods import isotope

    loaded = [_key(k) for k in keys]
    if len(loaded) != len(labels):
        raise TracemarkError(f"{len(loaded)} keys but {len(labels)} labels: give one class per key")
    marks = [isotope.key_mark(k) for k in loaded]
    pool = _pool(aux, mode, size, None)
    result = isotope.distinguish(
        open_oracle(model, outputs, None),
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
