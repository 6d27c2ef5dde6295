"""The lab's verbs: train a victim, run a demo (mark, train, audit, measure TPR and FPR)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from ..errors import TracemarkError
from ..progress import progress_bars
from ..train_config import TrainConfig
from .app import app, stdout
from .flags import Flags, with_options


@app.command()
@with_options(config=Flags(TrainConfig, only={"epochs", "seed", "augment"}))
def train(
    data: Annotated[
        str,
        typer.Argument(
            help="Dataset: folder of class subfolders, .npz, CIFAR folder, or 'fashion-mnist'."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="Model file to write.")],
    config: TrainConfig,
    arch: Annotated[str, typer.Option(help="small-cnn, resnet18 or wrn.")] = "small-cnn",
    export: Annotated[str, typer.Option(help="checkpoint, torchscript or onnx.")] = "checkpoint",
    force: Annotated[bool, typer.Option(help="Overwrite OUT.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Train a victim model (for experiments): the training loop the demos use."""
    from ..datasets import load_dataset
    from ..models import build_model
    from ..training import export_onnx, export_torchscript, save_checkpoint, train_model

    if export not in ("checkpoint", "torchscript", "onnx"):
        raise TracemarkError("--export must be checkpoint, torchscript or onnx")
    from ..fsutil import check_output

    # Before training: never over an existing file without --force, never among the data.
    inputs = [data] if Path(data).exists() else []
    check_output(out, force=force, protect=inputs, what="model file")
    ds = load_dataset(data)
    c = ds.images.shape[-1]
    model = build_model(
        arch, in_channels=c, num_classes=max(int(ds.labels.max()) + 1, len(ds.classes))
    )
    with progress_bars(not quiet) as bars:
        advance = bars("epochs", config.epochs)
        train_model(model, ds.images, ds.labels, config, progress=lambda *_: advance(1))
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
    quick: Annotated[bool, typer.Option(help="A small run (a smoke test).")] = False,
    classes: Annotated[
        Optional[str],
        typer.Option(help="isotope: comma-separated classes of the owners (one owner each)."),
    ] = None,
    seed: Annotated[
        Optional[int], typer.Option(help="Another seed: other data, keys and training.")
    ] = None,
    db: Annotated[
        Optional[Path],
        typer.Option(help="Keep the results in this store (re-running skips finished work)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """End-to-end demo on Fashion-MNIST: mark, train, audit, and measure TPR and FPR.

    Runs the shipped spec demo-METHOD (demo-METHOD-quick with --quick) through the
    evaluation harness and prints its report; `tracemark evaluate` and `tracemark report`
    do the same for any spec.
    """
    import tempfile

    from ..evaluate import evaluate, load_spec, open_store, summarise
    from .evaluation import print_details, print_summary, say_cell, say_failure, stop_if_failed

    spec = demo_spec(load_spec(f"demo-{method}" + ("-quick" if quick else "")), classes, seed)
    with tempfile.TemporaryDirectory(prefix="tracemark-demo-") as tmp:
        store = db or Path(tmp) / "results.db"
        with progress_bars(not quiet) as bars:
            run = evaluate(
                spec,
                store,
                cache=Path(tmp) / "cache" if db is None else None,
                progress=bars,
                on_cell=None if quiet else say_cell,
                on_failure=say_failure,
            )
        stop_if_failed(run.failed)
        with open_store(store) as results:
            summary = summarise(results)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    print_summary(summary)
    print_details(summary)


def demo_spec(spec, classes: str | None, seed: int | None):
    """The demo's spec with another seed, or (isotope) other owners' classes."""
    changes: dict = {}
    if seed is not None:
        changes["seeds"] = [seed]
    if classes:
        chosen = parse_class_list(classes)
        changes["methods"] = {
            name: m.model_copy(update={"classes": list(chosen), "members": len(chosen)})
            for name, m in spec.methods.items()
        }
    if not changes:
        return spec
    from ..evaluate import parse_spec

    return parse_spec({**spec.model_dump(), **{k: _dump(v) for k, v in changes.items()}})


def _dump(value):
    if isinstance(value, dict):
        return {k: v.model_dump() for k, v in value.items()}
    return value


def parse_class_list(text: str) -> tuple[int, ...]:
    """``--classes 2,3,4``: distinct Fashion-MNIST classes."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise TracemarkError(
            f"--classes takes comma-separated class indices, got {text!r}"
        ) from None
    if not values or len(set(values)) != len(values) or min(values) < 0 or max(values) > 9:
        raise TracemarkError("--classes takes distinct Fashion-MNIST classes 0-9")
    return values
