"""CLI verbs for dataset publishers: watermark, verify, watermark-report.

Registered on the main ``tracemark`` app (:mod:`tracemark.cli` imports this module at its end).
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_common import AccessChoice, Outputs, app, parse_params, stdout
from .cli_http import (
    AuthEnvOpt,
    AuthFileOpt,
    ConcurrencyOpt,
    EndpointConfigOpt,
    EvidenceOpt,
    ForceOpt,
    ModelNameOpt,
    NumClassesOpt,
    ProtocolOpt,
    QueryLogOpt,
    RetriesOpt,
    TimeoutOpt,
    check_evidence,
    open_model,
    querying,
    write_evidence,
)
from .cli_http import ModelArg as AnyModelArg
from .progress import progress_bars


class WatermarkMethod(str, Enum):
    ubw_p = "ubw-p"
    ubw_c = "ubw-c"
    badnets = "badnets"
    blended = "blended"


class TriggerKind(str, Enum):
    corner = "corner"
    blended = "blended"


class TriggerChoice(str, Enum):
    key = "key"
    independent = "independent"


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


@app.command()
def watermark(
    src: DatasetArg,
    out: Annotated[Path, typer.Argument(help="Where to write the release (same layout as SRC).")],
    method: Annotated[
        WatermarkMethod, typer.Option(help="ubw-p, ubw-c, or the targeted badnets / blended.")
    ] = WatermarkMethod.ubw_p,
    key_out: Annotated[
        Optional[Path],
        typer.Option("--key", help="Where to write the secret key (default: OUT.key)."),
    ] = None,
    gamma: Annotated[float, typer.Option(help="Poison rate: share of watermarked samples.")] = 0.1,
    trigger: Annotated[
        Optional[TriggerKind],
        typer.Option(help="ubw-p: corner 3x3 pattern (default) or blended full-image trigger."),
    ] = None,
    target: Annotated[int, typer.Option(help="badnets/blended: target class.")] = 0,
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
    from .dataset_watermark import watermark_dataset

    params = parse_params(param)
    params.update(gamma=gamma)
    if trigger is not None:
        params["trigger"] = trigger.value
    if method in (WatermarkMethod.badnets, WatermarkMethod.blended):
        params["target"] = target
    key_path = key_out or out.parent / f"{out.name}.key"
    with progress_bars(not quiet) as bars:
        summary = watermark_dataset(
            src,
            out,
            key_path,
            method.value,
            force=force,
            device=device,
            progress_factory=bars,
            **params,
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
    stdout.print(f"commitment {summary['key_commitment']}")


@app.command()
def verify(
    model: AnyModelArg,
    key_path: KeyArg,
    testset: TestsetArg,
    m: Annotated[int, typer.Option(min=2, help="Correctly classified test images to use.")] = 100,
    tau: Annotated[float, typer.Option(min=0, max=0.99, help="Margin of the t-test.")] = 0.25,
    alpha: Annotated[float, typer.Option(min=1e-9, max=0.5, help="False-positive level.")] = 0.01,
    trigger: Annotated[
        TriggerChoice,
        typer.Option(help="'independent' runs the negative control with an unpublished trigger."),
    ] = TriggerChoice.key,
    access: Annotated[
        AccessChoice, typer.Option(help="'label' or 'topk' use the label-flip test.")
    ] = AccessChoice.auto,
    null_triggers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Also rank your trigger among this many never-published ones (e.g. 99); "
            "guards against models that react to any patch. Costs m queries each. "
            "Blended triggers are always ranked (99 at alpha 0.01 unless given).",
        ),
    ] = 0,
    outputs: Annotated[Outputs, typer.Option(help="What the model returns.")] = Outputs.auto,
    budget: Annotated[
        Optional[int], typer.Option(min=1, help="Refuse to spend more queries.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
    evidence: EvidenceOpt = None,
    force: ForceOpt = False,
    protocol: ProtocolOpt = None,
    model_name: ModelNameOpt = None,
    query_log: QueryLogOpt = None,
    auth_env: AuthEnvOpt = None,
    auth_file: AuthFileOpt = None,
    concurrency: ConcurrencyOpt = None,
    timeout: TimeoutOpt = None,
    retries: RetriesOpt = None,
    num_classes: NumClassesOpt = None,
    endpoint_config: EndpointConfigOpt = None,
) -> None:
    """Decide whether MODEL was trained on your watermarked release. Exit 0 either way."""
    from .dataset_watermark import verify as run_verify

    check_evidence(evidence, force, [key_path, testset])
    oracle = open_model(
        model,
        outputs=outputs.value,
        budget=budget,
        protocol=protocol,
        model_name=model_name,
        query_log=query_log,
        auth_env=auth_env,
        auth_file=auth_file,
        concurrency=concurrency,
        timeout=timeout,
        retries=retries,
        num_classes=num_classes,
        endpoint_config=endpoint_config,
    )
    with querying(oracle, query_log):
        verdict = run_verify(
            oracle,
            key_path,
            testset,
            m=m,
            tau=tau,
            alpha=alpha,
            trigger=trigger.value,
            access=access.value,
            null_triggers=null_triggers,
        )
    write_evidence(evidence, verdict, force, [key_path, testset])
    if as_json:
        sys.stdout.write(verdict.model_dump_json(exclude={"evidence"}, indent=2) + "\n")
    else:
        stdout.print(verdict.summary())


@app.command("watermark-report")
def watermark_report(
    model: ModelArg,
    key_path: KeyArg,
    testset: TestsetArg,
    trigger: Annotated[
        TriggerChoice, typer.Option(help="Measure with the key's or an independent trigger.")
    ] = TriggerChoice.key,
    limit: Annotated[
        Optional[int], typer.Option(min=1, help="Use only the first N test images.")
    ] = None,
    outputs: Annotated[Outputs, typer.Option(help="What the model returns.")] = Outputs.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print BA, ASR-A, ASR-C and the dispersibilities D_p, D_s, D_c of MODEL."""
    from .dataset_watermark import watermark_report as run_report

    report = run_report(
        model, key_path, testset, trigger=trigger.value, limit=limit, outputs=outputs.value
    )
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    for name in ("BA", "ASR-A", "ASR-C", "D_p", "D_s", "D_c", "target_rate"):
        if name in report:
            stdout.print(f"{name:<12}{report[name]:.4f}")
    stdout.print(f"{'max D':<12}{report['max_dispersibility']:.4f}  (ln K)")
    stdout.print(f"{'images':<12}{report['images']}  ({report['queries']} queries)")


def print_ubw_demo(result: dict) -> None:
    """Tables for `tracemark demo ubw`."""
    from rich.table import Table

    victims = Table(title="Victims and how each was trained")
    for col in ("model", "images", "epochs", "augmentation", "weight decay"):
        victims.add_column(col)
    for name, v in result.get("victims", {}).items():
        r = v["recipe"]
        aug = "shifts + flips" if r["augment"] else "none"
        victims.add_row(name, str(v["images"]), str(r["epochs"]), aug, f"{r['weight_decay']:g}")
    stdout.print(victims)
    metrics = Table(title="Watermark metrics (test set)")
    for col in ("model / trigger", "BA", "ASR-A", "ASR-C", "D_p", "D_s", "D_c"):
        metrics.add_column(col)
    for name, m in result["metrics"].items():
        metrics.add_row(
            name, *(f"{m[c]:.3f}" for c in ("BA", "ASR-A", "ASR-C", "D_p", "D_s", "D_c"))
        )
    stdout.print(metrics)
    alpha = result["config"]["alpha"]
    table = Table(title=f"Verification (decision at alpha = {alpha})")
    for col in ("watermark: scenario", "model", "access", "p-value", "effect", "flagged"):
        table.add_column(col)
    for s in result["scenarios"]:
        if "null-trigger" in s["scenario"]:
            continue
        table.add_row(
            s["scenario"],
            s["model"],
            s["access"],
            f"{s['p_value']:.3g}",
            f"{s['effect']:.3f}",
            "yes" if s["decision"] else "no",
        )
    stdout.print(table)
    fpr = result["false_positive_rates"]
    rates = Table(title=f"Measured false positives: never-published triggers, alpha = {alpha}")
    for col in ("watermark / access", "FPR", "trials"):
        rates.add_column(col)
    for name, r in fpr.items():
        if isinstance(r, dict):
            rates.add_row(name, f"{r['fpr']:.3f}", str(r["trials"]))
    stdout.print(rates)
    if "by_access" in result:
        from .demos.common import access_table

        what = {
            "tpr": "TPR malicious",
            "fpr": "FPR independent + null",
            "fpr_clean_model": "FPR clean",
        }
        stdout.print(access_table(result, what))
    stdout.print(f"finished in {result['seconds']} s")
