"""The dataset publishers' verbs: watermark a release, verify a model, measure a watermark."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from ..methods.ubw import UbwOptions, UbwParams
from ..oracle.open import ModelOptions
from ..progress import progress_bars
from .app import app, stdout
from .common import Report, check_evidence, parse_params, querying, report_verdict
from .flags import Flags, with_options
from .owner import ModelArg as AnyModelArg

DatasetArg = Annotated[
    str,
    typer.Argument(
        help="Labelled dataset: 'fashion-mnist', a Fashion-MNIST IDX folder, a CIFAR folder, "
        "one subfolder of images per class, or an .npz (x, y)."
    ),
]
TestsetArg = Annotated[
    str,
    typer.Argument(
        help="Labelled test images the model did not train on: 'fashion-mnist', the release "
        "folder (its test split), class folders, or an .npz."
    ),
]
ModelArg = Annotated[
    Path, typer.Argument(help="Suspicious model: .onnx, TorchScript, or tracemark checkpoint.")
]
KeyArg = Annotated[Path, typer.Argument(metavar="KEY", help="The release's UBW key file.")]
WatermarkMethod = Literal["ubw-p", "ubw-c", "badnets", "blended"]
_DEFAULTS = UbwParams.model_fields  # the key parameters' defaults, read from their one home
# verify reads files and URLs; the image-folder and replay settings are the audit's.
_VERIFY_MODEL_FLAGS = Flags(
    ModelOptions, exclude={"size", "mode", "class_names", "replay", "endpoint"}
)


@app.command()
def watermark(
    src: DatasetArg,
    out: Annotated[Path, typer.Argument(help="Where to write the release (same layout as SRC).")],
    method: Annotated[
        WatermarkMethod, typer.Option(help="ubw-p, ubw-c, or the targeted badnets / blended.")
    ] = "ubw-p",
    key_out: Annotated[
        Optional[Path],
        typer.Option("--key", help="Where to write the secret key (default: OUT.key)."),
    ] = None,
    gamma: Annotated[
        float, typer.Option(help="Poison rate: share of watermarked samples.")
    ] = _DEFAULTS["gamma"].default,
    trigger: Annotated[
        Optional[Literal["corner", "blended"]],
        typer.Option(help="ubw-p: corner 3x3 pattern (default) or blended full-image trigger."),
    ] = None,
    target: Annotated[int, typer.Option(help="badnets/blended: target class.")] = _DEFAULTS[
        "target"
    ].default,
    param: Annotated[
        list[str],
        typer.Option("--param", "-p", help="Other key parameter NAME=VALUE, e.g. iterations=250."),
    ] = [],  # noqa: B006 - typer needs a literal default
    device: Annotated[str, typer.Option(help="ubw-c: auto, cpu or cuda[:N].")] = "auto",
    force: Annotated[bool, typer.Option(help="Replace an existing OUT and key.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Watermark a dataset's training split for release, and write its secret key."""
    from ..api import watermark_dataset

    params = {**parse_params(param), "gamma": gamma}
    if trigger is not None:
        params["trigger"] = trigger
    if method in ("badnets", "blended"):
        params["target"] = target
    key_path = key_out or out.parent / f"{out.name}.key"
    with progress_bars(not quiet) as bars:
        summary = watermark_dataset(
            src, out, key_path, method, force=force, device=device, progress_factory=bars, **params
        )
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    stdout.print(
        f"wrote {out} ({summary['release']['layout']}, {summary['images']} images, "
        f"{summary['poisoned']} watermarked with {summary['variant']}, trigger "
        f"{summary['trigger']}; {summary['labels_changed']} labels changed)"
    )
    stdout.print(f"wrote {key_path} (mode 0600; keep it secret: it lists the watermarked samples)")
    from ..stealth import describe

    stdout.print(f"stealth: {describe(summary['stealth'])}")
    stdout.print(f"commitment {summary['key_commitment']}")


@app.command()
@with_options(
    settings=UbwOptions, model_options=_VERIFY_MODEL_FLAGS, report=Flags(Report, exclude={"quiet"})
)
def verify(
    model: AnyModelArg,
    key_path: KeyArg,
    testset: TestsetArg,
    settings: UbwOptions,
    model_options: ModelOptions,
    report: Report,
) -> None:
    """Decide whether MODEL was trained on your watermarked release. Exit 0 either way."""
    from ..api import verify as run_verify
    from ..oracle.open import open_oracle

    check_evidence(report.evidence, report.force, [key_path, testset], report.report)
    oracle = open_oracle(model, model_options)
    with querying(oracle, model_options.query_log):
        verdict = run_verify(oracle, key_path, testset, options=settings)
    report_verdict(verdict, report, [key_path, testset])


@app.command("watermark-report")
@with_options(
    settings=Flags(UbwOptions, only={"trigger"}),
    model_options=Flags(ModelOptions, only={"outputs"}),
)
def watermark_report(
    model: ModelArg,
    key_path: KeyArg,
    testset: TestsetArg,
    settings: UbwOptions,
    model_options: ModelOptions,
    limit: Annotated[
        Optional[int], typer.Option(min=1, help="Use only the first N test images.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print BA, ASR-A, ASR-C and the dispersibilities D_p, D_s, D_c of MODEL (--trigger
    independent: under a never-published trigger)."""
    from ..api import watermark_report as run_report

    report = run_report(
        model, key_path, testset, options=settings, model_options=model_options, limit=limit
    )
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    for name in ("BA", "ASR-A", "ASR-C", "D_p", "D_s", "D_c", "target_rate"):
        if name in report:
            stdout.print(f"{name:<12}{report[name]:.4f}")
    stdout.print(f"{'max D':<12}{report['max_dispersibility']:.4f}  (ln K)")
    stdout.print(f"{'images':<12}{report['images']}  ({report['queries']} queries)")
