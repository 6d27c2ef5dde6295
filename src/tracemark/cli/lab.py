"""The lab's verbs: train a victim, run a demo (mark, train, audit, measure TPR and FPR)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.table import Table

from ..errors import TracemarkError
from ..progress import progress_bars, stderr
from .app import app, stdout


@app.command()
def train(
    data: Annotated[
        str,
        typer.Argument(
            help="Dataset: folder of class subfolders, .npz, CIFAR folder, or 'fashion-mnist'."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="Model file to write.")],
    arch: Annotated[str, typer.Option(help="small-cnn, resnet18 or wrn.")] = "small-cnn",
    epochs: Annotated[int, typer.Option(min=1)] = 5,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    augment: Annotated[
        bool, typer.Option(help="Random pad-4 crops and flips (--no-augment: plain fitting).")
    ] = True,
    export: Annotated[str, typer.Option(help="checkpoint, torchscript or onnx.")] = "checkpoint",
    force: Annotated[bool, typer.Option(help="Overwrite OUT.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Train a victim model (for experiments): the training loop the demos use."""
    from ..datasets import load_dataset
    from ..models import build_model
    from ..training import (
        TrainConfig,
        export_onnx,
        export_torchscript,
        save_checkpoint,
        train_model,
    )

    if export not in ("checkpoint", "torchscript", "onnx"):
        raise TracemarkError("--export must be checkpoint, torchscript or onnx")
    if Path(out).exists() and not force:
        raise TracemarkError(f"{out} already exists; pass --force to overwrite it")
    ds = load_dataset(data)
    c = ds.images.shape[-1]
    model = build_model(
        arch, in_channels=c, num_classes=max(int(ds.labels.max()) + 1, len(ds.classes))
    )
    with progress_bars(not quiet) as bars:
        advance = bars("epochs", epochs)
        train_model(
            model,
            ds.images,
            ds.labels,
            TrainConfig(epochs=epochs, seed=seed, augment=augment),
            progress=lambda *_: advance(1),
        )
    if export == "checkpoint":
        save_checkpoint(model, out, force=force)
    elif export == "torchscript":
        export_torchscript(model, out, example=ds.images[:2], force=force)
    else:
        export_onnx(model, out, input_shape=(c, *ds.images.shape[1:3]), force=force)
    stdout.print(f"wrote {out} ({export}, {arch}, {len(ds)} training images)")


@app.command()
def demo(
    method: Annotated[
        Literal["tracker", "isotope", "ubw"], typer.Argument(help="Which method to demonstrate.")
    ] = "tracker",
    quick: Annotated[bool, typer.Option(help="A small run (for tests).")] = False,
    classes: Annotated[
        Optional[str],
        typer.Option(help="isotope: comma-separated classes of the users (one user each)."),
    ] = None,
    seed: Annotated[
        Optional[str],
        typer.Option(help="Hex seed of every random choice (another run of the same demo)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """End-to-end demo on Fashion-MNIST: mark, train, audit, and measure TPR and FPR."""
    if seed is not None:
        try:
            bytes.fromhex(seed)
        except ValueError:
            raise TracemarkError(f"--seed {seed!r} is not a hex string") from None
        if len(seed) < 32:
            raise TracemarkError("--seed needs at least 128 bits (32 hex digits)")
    with progress_bars(not quiet) as bars:
        stage = (lambda msg: stderr.log(msg)) if not quiet else None
        if method == "ubw":
            from ..demos.ubw import UbwDemoConfig, run_ubw_demo

            config = UbwDemoConfig.quick() if quick else UbwDemoConfig()
            config = config if seed is None else replace(config, seed=seed)
            result = run_ubw_demo(config, stage=stage, progress_factory=bars)
        elif method == "isotope":
            from ..demos.isotope import IsotopeDemoConfig, run_isotope_demo

            config = IsotopeDemoConfig.quick() if quick else IsotopeDemoConfig()
            config = config if seed is None else replace(config, seed=seed)
            if classes:
                config = replace(config, classes=_parse_classes(classes))
            result = run_isotope_demo(config, stage=stage, progress_factory=bars)
        else:
            from ..demos.tracker import TrackerDemoConfig, run_tracker_demo

            config = TrackerDemoConfig.quick() if quick else TrackerDemoConfig()
            config = config if seed is None else replace(config, seed=seed)
            result = run_tracker_demo(config, stage=stage, progress_factory=bars)
    if as_json:
        payload = {k: v for k, v in result.items() if k not in ("users", "marks")}
        if "marks" in result:  # isotope: the users' own audits are few enough to show
            payload["user_marks"] = [m for m in result["marks"] if m["published"]]
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    if method == "ubw":
        print_ubw_demo(result)
    elif method == "isotope":
        _print_isotope_demo(result)
    else:
        _print_tracker_demo(result)


def _parse_classes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise TracemarkError(
            f"--classes takes comma-separated class indices, got {text!r}"
        ) from None
    if not values or len(set(values)) != len(values) or min(values) < 0 or max(values) > 9:
        raise TracemarkError("--classes takes distinct Fashion-MNIST classes 0-9")
    return values


def _print_isotope_demo(result: dict) -> None:
    r = result["rates"]
    a = r["alpha"]
    table = Table(title=f"isotope demo: audits at alpha = {a}")
    table.add_column("procedure")
    table.add_column("TPR users' marks", justify="right")
    table.add_column("FPR never-published", justify="right")
    table.add_column("FPR clean model", justify="right")
    for name, label in (
        ("calibrated", "calibrated (exact rank)"),
        ("calibrated_gaussian_approx", "calibrated, Gaussian approx."),
        ("paper", "paper's (Q-round t-tests)"),
    ):
        m = r[name]
        table.add_row(
            label,
            f"{m['tpr_users']:.3f}",
            f"{m['fpr_never_published']:.3f}",
            f"{m['fpr_clean_model_all_marks']:.3f}",
        )
    stdout.print(table)
    c = r["calibrated"]
    stdout.print(
        f"{c['users']} users' marks, {c['never_published']} never-published marks, "
        f"{c['clean_model_marks']} marks on the clean model; false positives should be <= {a} "
        "(the paper's procedure is not calibrated)"
    )
    if "by_access" in result:  # calibrated procedure, per access mode
        from ..demos.common import access_table

        what = {"tpr": "TPR users", "fpr": "FPR never-published", "fpr_clean_model": "FPR clean"}
        stdout.print(access_table(result, what))
    for name, m in result["models"].items():
        stdout.print(f"{name}: test accuracy {m['test_accuracy']:.3f}, {m['queries']} queries")
    stdout.print(f"finished in {result['seconds']} s")


def _print_tracker_demo(result: dict) -> None:
    r = result["rates"]
    table = Table(title=f"tracker demo: audits at alpha = {r['alpha']}")
    table.add_column("model")
    table.add_column("users audited", justify="right")
    table.add_column("flagged", justify="right")
    table.add_column("rate", justify="right")
    table.add_column("should be")
    users = result["users"]

    def flagged(model: str, member: bool | None) -> str:
        hits = [
            u["decision"]
            for u in users
            if u["model"] == model and (member is None or u["member"] == member)
        ]
        return f"{sum(hits)}/{len(hits)}"

    rows = [
        (
            "trained on members",
            "members",
            flagged("trained-on-members", True),
            f"TPR {r['tpr_members']:.3f}",
            "1.0",
        ),
        (
            "trained on members",
            "non-members",
            flagged("trained-on-members", False),
            f"FPR {r['fpr_nonmembers']:.3f}",
            f"<= {r['alpha']}",
        ),
        (
            "clean",
            "all users",
            flagged("clean", None),
            f"FPR {r['fpr_clean_model_all_users']:.3f}",
            f"<= {r['alpha']}",
        ),
    ]
    for row in rows:
        table.add_row(*row)
    stdout.print(table)
    metrics = Table(title="research metrics (members vs non-members, trained model)")
    metrics.add_column("inference")
    metrics.add_column("FPR@100%TPR", justify="right")
    metrics.add_column("TPR@1%FPR", justify="right")
    metrics.add_column("AUC", justify="right")
    for name in ("set_based", "instance_based"):
        m = r[name]
        metrics.add_row(
            name.replace("_", "-"),
            f"{m['fpr_at_100_tpr']:.3f}",
            f"{m['tpr_at_1pct_fpr']:.3f}",
            f"{m['auc']:.3f}",
        )
    stdout.print(metrics)
    if "by_access" in result:
        from ..demos.common import access_table

        what = {"tpr": "TPR members", "fpr": "FPR non-members", "fpr_clean_model": "FPR clean"}
        stdout.print(access_table(result, what))
    for name, m in result["models"].items():
        stdout.print(f"{name}: test accuracy {m['test_accuracy']:.3f}, {m['queries']} queries")
    stdout.print(f"finished in {result['seconds']} s")


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
        from ..demos.common import access_table

        what = {
            "tpr": "TPR malicious",
            "fpr": "FPR independent + null",
            "fpr_clean_model": "FPR clean",
        }
        stdout.print(access_table(result, what))
    stdout.print(f"finished in {result['seconds']} s")
