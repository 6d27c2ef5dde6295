"""The owners' verbs: keygen, key-info, mark, audit, replay, distinguish.

Every verb is a thin layer over :mod:`tracemark.api`. An audit's exit status does not
depend on its decision: read the verdict, not the status.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..api import MarkOptions
from ..errors import TracemarkError
from ..methods import registry
from ..methods.isotope import IsotopeOptions
from ..options import option
from ..oracle.open import ModelOptions
from ..progress import progress_bars
from .app import app, stdout
from .common import (
    Report,
    check_evidence,
    parse_classes,
    parse_label,
    parse_params,
    querying,
    report_verdict,
)
from .flags import Flags, pick, with_options

KeyArg = Annotated[Path, typer.Argument(metavar="KEY", help="Key file.")]
ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="Suspicious model: .onnx, TorchScript or tracemark checkpoint file, or an "
        "http(s) URL (Open Inference Protocol v2: http://HOST:PORT/v2/models/NAME) or a "
        "grpc(s) one (its gRPC API: grpc://HOST:PORT/v2/models/NAME).",
    ),
]


@app.command()
def keygen(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the key (JSON, mode 0600).")
    ],
    method: Annotated[str, typer.Option(help="Marking method.")] = "tracker",
    param: Annotated[
        list[str], typer.Option("--param", "-p", help="Method parameter NAME=VALUE (repeatable).")
    ] = [],  # noqa: B006 - typer needs a literal default
    mark_file: Annotated[
        Optional[Path],
        typer.Option(help="isotope: use this image as your mark (embedded in the key)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing key file.")] = False,
) -> None:
    """Create a secret key. Keep it private; publish its commitment if you like."""
    from ..keys import Key

    params = parse_params(param)
    if mark_file is not None:
        if method != "isotope":
            raise TracemarkError("--mark-file is for isotope keys (--method isotope)")
        from ..methods.isotope.marks import read_mark_file

        params["mark"] = "image"
        params["image_png"], params["image_sha256"] = read_mark_file(mark_file)
    key = Key.generate(method, **params)
    key.save(out, force=force)
    stdout.print(f"wrote {out} (mode 0600; keep it secret and backed up)")
    stdout.print(f"method     {key.method}")
    stdout.print(f"params     {json.dumps(key.public_info()['params'], sort_keys=True)}")
    stdout.print(f"commitment {key.commitment()}")


@app.command("key-info")
def key_info(
    key_path: KeyArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a key's method, parameters and commitment (never its seed)."""
    from ..keys import load_key

    info = load_key(key_path).public_info()
    if as_json:
        stdout.print_json(json.dumps(info))
    else:
        for name, value in info.items():
            stdout.print(f"{name:<11}{value}")


@app.command()
@with_options(options=MarkOptions)
def mark(
    key_path: Annotated[Path, typer.Argument(metavar="KEY", help="Key file (tracker).")],
    src: Annotated[Path, typer.Argument(help="Folder of original images (never modified).")],
    out: Annotated[Path, typer.Argument(help="New folder for the marked copies.")],
    options: MarkOptions,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Write marked copies of the images in SRC to OUT, plus a manifest with hashes."""
    from ..api import mark_folder

    with progress_bars(not quiet) as bars:
        written = mark_folder(key_path, src, out, options=options, progress=bars)
    from ..images import read_manifest
    from ..stealth import describe

    meta = read_manifest(written)
    digest = meta["collection_digest"]
    stdout.print(f"marked the images of {src} into {out}; manifest: {written}")
    stdout.print(f"stealth: {describe(meta.get('stealth', {}))}")
    if options.preview is not None:
        stdout.print(f"preview (original | marked | difference x10): {options.preview}")
    stdout.print("publish the marked folder only: keep the key and the manifest private")
    stdout.print(
        f"collection digest {digest}\n(publish it with the key's commitment before the images: "
        "it proves later which collection you marked)"
    )
    if options.publish is not None:
        stdout.print(f"keep {src} whole: the audit needs every image in it (--originals)")


@dataclass(frozen=True)
class AuditInputs:
    """Where an audit's data is (see :class:`tracemark.methods.base.AuditSources`)."""

    marked: Path | None = option(
        None,
        "The images you published (tracker: which of --originals were published; isotope: "
        "used to find their class when --label is not given; physical: photos showing the "
        "object).",
    )
    originals: Path | None = option(
        None,
        "tracker: the folder you gave to `tracemark mark`, whole (published and kept-back "
        "originals): pseudo-users are drawn from it.",
    )
    holdout: Path | None = option(
        None, "No longer used by the tracker audit: see --originals.", hidden=True
    )
    aux: Path | None = option(
        None,
        "isotope: images of the same domain (a flat folder, or class subfolders); your class "
        "is excluded by label or by the model's prediction. Physical mode: comparable photos "
        "without the object.",
    )
    label: str | None = option(
        None, "Class of your images (index or name); default: majority vote."
    )
    testset: str | None = option(
        None, "ubw (dataset) keys: labelled test images; see `tracemark verify`."
    )
    manifest: Path | None = option(
        None,
        "tracker: the manifest `tracemark mark` wrote (default: MARKED.manifest.json beside "
        "--marked); every original and published file is checked against it.",
    )


def _method_flags() -> Flags:
    """Every registered method's audit options, each method's own in its own help panel."""
    names = registry.names()
    return Flags(*(registry.get(n).options for n in names), panels=[f"{n} audit" for n in names])


@app.command()
@with_options(
    inputs=AuditInputs, settings=_method_flags(), model_options=ModelOptions, report=Report
)
def audit(
    key_path: KeyArg,
    model: ModelArg,
    inputs: AuditInputs,
    settings: dict,
    model_options: ModelOptions,
    report: Report,
    bundle: Annotated[
        Optional[Path],
        typer.Option(
            help="Also write a sealed evidence bundle (zip: verdict, query log, marking "
            "manifest, settings, versions, SHA-256 index) that `tracemark check` re-checks "
            "offline. HTTP audits only (their answers are logged)."
        ),
    ] = None,
) -> None:
    """Decide whether MODEL was trained on your marked images. Exit status 0 either way."""
    from ..api import audit as run_audit
    from ..keys import load_key
    from ..oracle.open import open_oracle

    key = load_key(key_path)
    method = registry.get(key.method)
    protect = [key_path, inputs.marked, inputs.originals, inputs.holdout, inputs.aux,
               inputs.testset, inputs.manifest]  # fmt: skip
    check_evidence(report.evidence, report.force, protect, report.report)
    sealing = None
    if bundle is not None:
        sealing, model_options = _prepare_bundle(bundle, model, inputs, model_options, report,
                                                 protect)  # fmt: skip
    if model_options.query_log is not None and not model_options.replay:
        from ..fsutil import check_output

        check_output(
            model_options.query_log,
            force=True,  # an existing log is resumed (QueryLog checks that it is one)
            protect=[p for p in protect if p is not None and Path(p).exists()],
            what="query log",
        )
    label = parse_label(inputs.label, model_options.class_names)
    missing = [f"--{name}" for name in method.needs if getattr(inputs, name) is None]
    if missing and inputs.holdout is None:
        raise TracemarkError(f"a {method.name} audit needs {' and '.join(missing)}")
    options = pick(method.options, settings)
    oracle = open_oracle(model, model_options)
    with querying(oracle, model_options.query_log), progress_bars(not report.quiet) as bars:
        verdict = run_audit(
            oracle,
            key,
            inputs.marked,
            originals=inputs.originals,
            aux=inputs.aux,
            testset=inputs.testset,
            label=label,
            holdout=inputs.holdout,
            manifest=inputs.manifest,
            options=options,
            model_options=model_options,
            progress=bars(method.progress_unit, method.progress_steps(options)),
        )
    if model_options.replay:
        verdict.notes.append(oracle.provenance())
    if sealing is not None:
        _seal(bundle, sealing, verdict, options, label, model, model_options, report, protect)
    report_verdict(verdict, report, protect)


def _prepare_bundle(bundle: Path, model, inputs, model_options, report, protect):
    """Before any query: the bundle path is free, the model is an HTTP endpoint (whose
    answers are logged), the marking manifest exists; a query log is kept in a temporary
    file when none is asked for. Returns (manifest, temporary log or None) and the
    model options with a query log."""
    import dataclasses
    import tempfile

    from ..fsutil import check_output
    from ..images import default_manifest_path
    from ..oracle import is_url

    check_output(bundle, force=report.force, protect=[p for p in protect if p], what="bundle")
    if model_options.replay or not is_url(str(model)):
        raise TracemarkError(
            "--bundle records the model's answers from its query log, which HTTP audits "
            "write: serve a local model with `tracemark serve` and audit its URL"
        )
    if inputs.marked is None:
        raise TracemarkError("--bundle needs --marked (the published images it vouches for)")
    manifest = Path(inputs.manifest or default_manifest_path(inputs.marked))
    if not manifest.is_file():
        raise TracemarkError(
            f"--bundle needs the marking manifest ({manifest} is missing; give --manifest)"
        )
    temporary = None
    if model_options.query_log is None:
        fd, name = tempfile.mkstemp(prefix=".tracemark-log-", suffix=".jsonl",
                                    dir=Path(bundle).resolve().parent)  # fmt: skip
        import os

        os.close(fd)
        os.unlink(name)
        temporary = Path(name)
        model_options = dataclasses.replace(model_options, query_log=temporary)
    return (manifest, temporary), model_options


def _seal(bundle, sealing, verdict, options, label, model, model_options, report, protect):
    """Write the evidence bundle; remove the temporary query log."""
    import dataclasses

    from ..bundle import write_bundle

    manifest, temporary = sealing
    record = {
        "options": dataclasses.asdict(options),
        "label": label,
        "model": str(model),
        "model_options": {
            "outputs": model_options.outputs,
            "size": model_options.size,
            "mode": model_options.mode,
            "class_names": model_options.class_names,
        },
        "command": ["tracemark", *sys.argv[1:]],
    }
    try:
        write_bundle(bundle, verdict, model_options.query_log, manifest, record,
                     force=report.force, protect=[p for p in protect if p])  # fmt: skip
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


@app.command()
def check(
    bundle: Annotated[
        Path, typer.Argument(metavar="BUNDLE", help="Evidence bundle written by `audit --bundle`.")
    ],
    key_path: Annotated[Path, typer.Option("--key", help="The key the audit used.")],
    marked: Annotated[
        Optional[Path], typer.Option(help="The published (marked) images, as published.")
    ] = None,
    originals: Annotated[
        Optional[Path], typer.Option(help="tracker: the collection the key marked.")
    ] = None,
    aux: Annotated[Optional[Path], typer.Option(help="isotope: the audit's aux images.")] = None,
    commitment: Annotated[
        Optional[str],
        typer.Option(help="The key commitment published before the images (hex)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
) -> None:
    """Re-check an evidence bundle offline: its SHA-256 index, the key's commitment (the one
    recorded at marking, and --commitment), the manifest's collection digest and the
    published images' hashes, and the verdict recomputed from the logged answers, bit
    for bit. Any mismatch is an error (exit 2) naming it. The logged answers are the
    auditor's record: only the model's operator could confirm them."""
    import tempfile

    from ..bundle import check_bundle
    from ..keys import load_key

    key = load_key(key_path)
    with tempfile.TemporaryDirectory() as work:
        verdict = check_bundle(
            bundle, key, marked, originals=originals, aux=aux, commitment=commitment,
            workdir=Path(work),
        )  # fmt: skip
    if as_json:
        sys.stdout.write(verdict.model_dump_json(exclude={"evidence"}, indent=2) + "\n")
        return
    stdout.print(
        f"bundle checked: index, key commitment {key.commitment()}, manifest and collection "
        f"digest{', published images' if marked else ''}; the verdict recomputed from "
        f"{verdict.queries} logged answers is identical"
    )
    stdout.print(verdict.summary())


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def replay(
    ctx: typer.Context,
    log: Annotated[
        Path, typer.Argument(metavar="LOG", help="Query log written by `audit --query-log`.")
    ],
    key_path: KeyArg,
) -> None:
    """Recompute an audit's verdict from its query log alone, without querying the model.

    Give the same options as the audit that wrote the log (--marked, --originals, --aux,
    --testset, --alpha, ...): every answer is then read from the log, and an image the
    log does not cover is an error. Anyone holding the key, the images and the log can
    re-check a verdict this way. --endpoint URL (and --model-name NAME) refuse a log that
    records another model; the verdict names the model the log records, and a log whose
    hash chain is broken (an edited, removed or inserted line) is refused.
    """
    command = typer.main.get_command(app)
    args = ["audit", str(key_path), str(log), "--replay", *ctx.args]
    command.main(args, prog_name="tracemark", standalone_mode=False)


@app.command()
@with_options(
    settings=Flags(IsotopeOptions, only={"alpha"}),
    model_options=Flags(ModelOptions, only={"outputs", "size", "mode"}),
)
def distinguish(
    model: Annotated[Path, typer.Argument(help="The model: .onnx, TorchScript, or checkpoint.")],
    keys: Annotated[list[Path], typer.Argument(help="Two or more isotope key files.")],
    labels: Annotated[
        str, typer.Option(help="Comma-separated class of each key's images, in order.")
    ],
    aux: Annotated[Path, typer.Option(help="Images of the same domain (flat or class folders).")],
    settings: IsotopeOptions,
    model_options: ModelOptions,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Isotope V_D: does each key's mark shift its own class more than the others' marks do?
    (--alpha is the level of each pairwise test.)"""
    from ..api import distinguish_marks

    result = distinguish_marks(
        model, keys, parse_classes(labels), aux, options=settings, model_options=model_options
    )
    alpha = settings.alpha
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    stdout.print(_distinction_table(result, alpha))
    verdict = "all pairs distinguished" if result["all_distinguished"] else "not all distinguished"
    stdout.print(f"{verdict} (* = both directions significant); {result['queries']} queries")


def _distinction_table(result: dict, alpha: float) -> Table:
    table = Table(
        title=f"V_D at alpha = {alpha}: p(row's mark shifts row's class more than column's)"
    )
    table.add_column("key (class)")
    for name in result["keys"]:
        table.add_column(Path(name).name, justify="right")
    for j, name in enumerate(result["keys"]):
        cells = [
            "-" if j == k else f"{p:.3g}{' *' if result['distinguished'][j][k] else ''}"
            for k, p in enumerate(result["p_values"][j])
        ]
        table.add_row(f"{Path(name).name} ({result['labels'][j]})", *cells)
    return table
