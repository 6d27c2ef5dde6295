"""The ``tracemark`` command line: keygen, mark, audit, distinguish, train, demo.

Dataset publishers' verbs (watermark, verify, watermark-report) live in
:mod:`tracemark.cli_dataset` and are registered on the same app.

Every verb is a thin layer over the library. Errors a user can cause are printed as
one clear message (no traceback) with exit status 2. An audit's exit status does not
depend on its decision: read the verdict, not the status.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ._version import __version__
from .cli_common import (
    AccessChoice,
    ColourMode,
    DemoMethod,
    ImageFormat,
    Outputs,
    ProcedureChoice,
    app,
    parse_params,
    parse_size,
    stdout,
)
from .cli_http import (
    AuthEnvOpt,
    AuthFileOpt,
    ConcurrencyOpt,
    EndpointConfigOpt,
    EvidenceOpt,
    ForceOpt,
    ModelArg,
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
from .errors import TracemarkError
from .progress import progress_bars, stderr
from .text import printable


def _version(value: bool) -> None:
    if value:
        stdout.print(f"tracemark {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """tracemark: data provenance for image classifiers."""


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
    from .keys import Key

    params = parse_params(param)
    if mark_file is not None:
        if method != "isotope":
            raise TracemarkError("--mark-file is for isotope keys (--method isotope)")
        from .marks import read_mark_file

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
    key_path: Annotated[Path, typer.Argument(metavar="KEY", help="Key file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a key's method, parameters and commitment (never its seed)."""
    from .keys import load_key

    info = load_key(key_path).public_info()
    if as_json:
        stdout.print_json(json.dumps(info))
    else:
        for name, value in info.items():
            stdout.print(f"{name:<11}{value}")


@app.command()
def mark(
    key_path: Annotated[Path, typer.Argument(metavar="KEY", help="Key file (tracker).")],
    src: Annotated[Path, typer.Argument(help="Folder of original images (never modified).")],
    out: Annotated[Path, typer.Argument(help="New folder for the marked copies.")],
    fmt: Annotated[ImageFormat, typer.Option("--format", help="Output format.")] = ImageFormat.png,
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality.")] = 95,
    mode: Annotated[ColourMode, typer.Option(help="Colour mode of the output.")] = ColourMode.auto,
    manifest: Annotated[
        Optional[Path], typer.Option(help="Manifest path [default: OUT.manifest.json beside OUT].")
    ] = None,
    publish: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help="tracker: publish only the key's random choice of this many images of SRC "
            "(the rest stay private and make the audit stronger); default: all of them.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing outputs.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Write marked copies of the images in SRC to OUT, plus a manifest with hashes."""
    from .api import mark_folder

    with progress_bars(not quiet) as bars:
        written = mark_folder(
            key_path,
            src,
            out,
            fmt=fmt.value,
            quality=quality,
            mode=mode.value,
            manifest=manifest,
            publish=publish,
            force=force,
            progress=bars,
        )
    stdout.print(f"marked the images of {src} into {out}; manifest: {written}")
    stdout.print("publish the marked folder only: keep the key and the manifest private")
    if publish is not None:
        stdout.print(f"keep {src} whole: the audit needs every image in it (--originals)")


@app.command()
def audit(
    key_path: Annotated[Path, typer.Argument(metavar="KEY", help="Key file.")],
    model: ModelArg,
    marked: Annotated[
        Optional[Path],
        typer.Option(
            help="The images you published (tracker: which of --originals were published; "
            "isotope: used to find their class when --label is not given; physical: photos "
            "showing the object)."
        ),
    ] = None,
    originals: Annotated[
        Optional[Path],
        typer.Option(
            help="tracker: the folder you gave to `tracemark mark`, whole (published and "
            "kept-back originals): pseudo-users are drawn from it."
        ),
    ] = None,
    holdout: Annotated[
        Optional[Path],
        typer.Option(hidden=True, help="No longer used by the tracker audit: see --originals."),
    ] = None,
    aux: Annotated[
        Optional[Path],
        typer.Option(
            help="isotope: images of the same domain (a flat folder, or class subfolders); "
            "your class is excluded by label or by the model's prediction. Physical mode: "
            "comparable photos without the object."
        ),
    ] = None,
    label: Annotated[
        Optional[str],
        typer.Option(help="Class of your images (index or name); default: majority vote."),
    ] = None,
    alpha: Annotated[float, typer.Option(min=1e-9, max=0.5, help="False-positive level.")] = 0.01,
    n_pseudo: Annotated[
        int, typer.Option(min=1, help="tracker: pseudo-users in the null distribution.")
    ] = 1000,
    procedure: Annotated[
        ProcedureChoice,
        typer.Option(help="isotope: calibrated (default), paper (not calibrated), physical."),
    ] = ProcedureChoice.calibrated,
    externals: Annotated[
        int, typer.Option(min=1, help="isotope: never-published bank marks to rank against.")
    ] = 99,
    aux_per_mark: Annotated[
        int, typer.Option(min=2, help="isotope: aux images each mark is blended into.")
    ] = 100,
    rounds: Annotated[int, typer.Option(min=1, help="isotope paper procedure: Q.")] = 5,
    round_size: Annotated[int, typer.Option(min=2, help="isotope paper procedure: n.")] = 250,
    lam: Annotated[float, typer.Option(help="isotope paper procedure: lambda.")] = 0.1,
    delta: Annotated[float, typer.Option(help="isotope paper procedure: delta.")] = 0.6,
    access: Annotated[
        AccessChoice,
        typer.Option(help="Use less than the model gives: 'label' (tracker 0/1 loss) or 'topk'."),
    ] = AccessChoice.auto,
    outputs: Annotated[Outputs, typer.Option(help="What the model returns.")] = Outputs.auto,
    budget: Annotated[
        Optional[int], typer.Option(min=1, help="Refuse to spend more queries.")
    ] = None,
    size: Annotated[Optional[str], typer.Option(help="Resize images to HxW for the model.")] = None,
    mode: Annotated[
        ColourMode, typer.Option(help="Colour mode the model expects.")
    ] = ColourMode.auto,
    class_names: Annotated[
        Optional[str], typer.Option(help="Comma-separated class names in the model's order.")
    ] = None,
    testset: Annotated[
        Optional[str],
        typer.Option(help="ubw (dataset) keys: labelled test images; see `tracemark verify`."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
    evidence: EvidenceOpt = None,
    force: ForceOpt = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
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
    replay: Annotated[
        bool,
        typer.Option(
            help="MODEL is a query log: answer from it only (see `tracemark replay`).",
            hidden=True,
        ),
    ] = False,
    endpoint: Annotated[
        Optional[str],
        typer.Option(
            help="replay: the endpoint the log must record (and --model-name its model).",
            hidden=True,
        ),
    ] = None,
) -> None:
    """Decide whether MODEL was trained on your marked images. Exit status 0 either way."""
    from .api import audit as run_audit
    from .keys import load_key

    key = load_key(key_path)
    inputs = [key_path, marked, originals, holdout, aux, testset]
    check_evidence(evidence, force, inputs)
    names = [n.strip() for n in class_names.split(",")] if class_names else None
    label_idx = None
    if label is not None:
        if label.isdigit():
            label_idx = int(label)
        elif names and label in names:
            label_idx = names.index(label)
        else:
            raise TracemarkError(f"--label {label!r} is not a class index or one of --class-names")
    if key.method == "tracker":
        if marked is None or (originals is None and holdout is None):
            raise TracemarkError("a tracker audit needs --marked and --originals")
        what, steps = "pseudo-users", n_pseudo
    elif key.method == "ubw":
        what, steps = "verification", 1
    else:
        what, steps = "external marks", externals
    oracle = open_model(
        model,
        outputs=outputs.value,
        budget=budget,
        class_names=names,
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
        replay=replay,
        endpoint=endpoint,
    )
    if endpoint is not None and not replay:
        raise TracemarkError("--endpoint is for `tracemark replay`: MODEL is the endpoint here")
    with querying(oracle, query_log), progress_bars(not quiet) as bars:
        verdict = run_audit(
            oracle,
            key,
            marked,
            holdout,
            originals=originals,
            aux=aux,
            label=label_idx,
            alpha=alpha,
            n_pseudo=n_pseudo,
            procedure=procedure.value,
            externals=externals,
            aux_per_mark=aux_per_mark,
            rounds=rounds,
            round_size=round_size,
            lam=lam,
            delta=delta,
            access=access.value,
            outputs=outputs.value,
            budget=budget,
            size=parse_size(size),
            mode=mode.value,
            class_names=names,
            testset=testset,
            progress=bars(what, steps),
        )
    if replay:
        verdict.notes.append(oracle.provenance())
    write_evidence(evidence, verdict, force, inputs)
    if as_json:
        sys.stdout.write(verdict.model_dump_json(exclude={"evidence"}, indent=2) + "\n")
    else:
        stdout.print(verdict.summary())


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def replay(
    ctx: typer.Context,
    log: Annotated[
        Path, typer.Argument(metavar="LOG", help="Query log written by `audit --query-log`.")
    ],
    key_path: Annotated[Path, typer.Argument(metavar="KEY", help="Key file.")],
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
def distinguish(
    model: Annotated[Path, typer.Argument(help="The model: .onnx, TorchScript, or checkpoint.")],
    keys: Annotated[list[Path], typer.Argument(help="Two or more isotope key files.")],
    labels: Annotated[
        str, typer.Option(help="Comma-separated class of each key's images, in order.")
    ],
    aux: Annotated[Path, typer.Option(help="Images of the same domain (flat or class folders).")],
    alpha: Annotated[float, typer.Option(min=1e-9, max=0.5, help="Level of each test.")] = 0.01,
    outputs: Annotated[Outputs, typer.Option(help="What the model returns.")] = Outputs.auto,
    size: Annotated[Optional[str], typer.Option(help="Resize images to HxW for the model.")] = None,
    mode: Annotated[
        ColourMode, typer.Option(help="Colour mode the model expects.")
    ] = ColourMode.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Isotope V_D: does each key's mark shift its own class more than the others' marks do?"""
    from .api import distinguish_marks

    try:
        label_list = [int(v) for v in labels.split(",")]
    except ValueError:
        raise TracemarkError(
            f"--labels takes comma-separated class indices, got {labels!r}"
        ) from None
    result = distinguish_marks(
        model, keys, label_list, aux, alpha=alpha, outputs=outputs.value,
        size=parse_size(size), mode=mode.value,
    )  # fmt: skip
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
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
    stdout.print(table)
    verdict = "all pairs distinguished" if result["all_distinguished"] else "not all distinguished"
    stdout.print(f"{verdict} (* = both directions significant); {result['queries']} queries")


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
    from .datasets import load_dataset
    from .models import build_model
    from .training import TrainConfig, export_onnx, export_torchscript, save_checkpoint, train_model

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
        DemoMethod, typer.Argument(help="Which method to demonstrate.")
    ] = DemoMethod.tracker,
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
        if method == DemoMethod.ubw:
            from .demos.ubw import UbwDemoConfig, run_ubw_demo

            config = UbwDemoConfig.quick() if quick else UbwDemoConfig()
            config = config if seed is None else replace(config, seed=seed)
            result = run_ubw_demo(config, stage=stage, progress_factory=bars)
        elif method == DemoMethod.isotope:
            from .demos.isotope import IsotopeDemoConfig, run_isotope_demo

            config = IsotopeDemoConfig.quick() if quick else IsotopeDemoConfig()
            config = config if seed is None else replace(config, seed=seed)
            if classes:
                config = replace(config, classes=_parse_classes(classes))
            result = run_isotope_demo(config, stage=stage, progress_factory=bars)
        else:
            from .demos.tracker import TrackerDemoConfig, run_tracker_demo

            config = TrackerDemoConfig.quick() if quick else TrackerDemoConfig()
            config = config if seed is None else replace(config, seed=seed)
            result = run_tracker_demo(config, stage=stage, progress_factory=bars)
    if as_json:
        payload = {k: v for k, v in result.items() if k not in ("users", "marks")}
        if "marks" in result:  # isotope: the users' own audits are few enough to show
            payload["user_marks"] = [m for m in result["marks"] if m["published"]]
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    if method == DemoMethod.ubw:
        from .cli_dataset import print_ubw_demo

        print_ubw_demo(result)
    elif method == DemoMethod.isotope:
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
        from .demos.common import access_table

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
        from .demos.common import access_table

        what = {"tpr": "TPR members", "fpr": "FPR non-members", "fpr_clean_model": "FPR clean"}
        stdout.print(access_table(result, what))
    for name, m in result["models"].items():
        stdout.print(f"{name}: test accuracy {m['test_accuracy']:.3f}, {m['queries']} queries")
    stdout.print(f"finished in {result['seconds']} s")


# Verbs defined in their own modules register themselves on `app` when imported.
from . import cli_dataset, cli_serve  # noqa: E402,F401


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, ``warning: ...``, not Python's source-line form."""
    text = escape(printable(str(message)))
    stderr.print(f"[bold yellow]warning:[/bold yellow] {text}", highlight=False)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, printing user errors without a traceback.

    Every error and warning is printed through :func:`tracemark.text.printable`: its
    text may come from a server or a file name, and must not drive the terminal.
    """
    import warnings

    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        app(args=argv, prog_name="tracemark")
    except TracemarkError as exc:
        text = escape(printable(str(exc)))
        stderr.print(f"[bold red]error:[/bold red] {text}", highlight=False)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        if exc.name not in ("torch", "onnxruntime", "onnx"):
            raise
        extra = "torch" if exc.name == "torch" else "onnx"
        hint = escape(f"this needs {exc.name}: pip install 'tracemark[{extra}]'")
        stderr.print(f"[bold red]error:[/bold red] {hint}", highlight=False)
        sys.exit(2)
    finally:
        warnings.showwarning = previous
