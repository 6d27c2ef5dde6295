"""The report's files: PNG plots (matplotlib), ``report.md``, and ``report.html`` with the
plots embedded, so the HTML is one self-contained file."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TracemarkError
from ..fsutil import atomic_write_bytes, atomic_write_text, check_output
from ..plots import png_bytes, pyplot

PLOT_DPI = 110


def _pyplot():
    return pyplot()


def _save(fig, path: Path) -> Path:
    atomic_write_bytes(path, png_bytes(fig, PLOT_DPI), force=True)
    return path


def plot_rates(entries: list[dict], path: Path, title: str) -> Path:
    """TPR and both FPRs of each row with their 95% intervals, and alpha."""
    plt = _pyplot()
    rows = list(entries)
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.6))
    y = np.arange(len(rows))
    styles = {
        "tpr": ("TPR", "tab:green", 0.2),
        "fpr_never_published": ("FPR never published", "tab:red", 0.0),
        "fpr_clean": ("FPR clean model", "tab:orange", -0.2),
    }
    for name, (label, colour, offset) in styles.items():
        have = [(i, e[name], e[f"{name}_ci"]) for i, e in enumerate(rows) if e[name] is not None]
        if not have:
            continue
        i, v, ci = zip(*have, strict=True)
        err = np.array(
            [
                [val - c[0] for val, c in zip(v, ci, strict=True)],
                [c[1] - val for val, c in zip(v, ci, strict=True)],
            ]
        )
        ax.errorbar(
            v,
            y[list(i)] + offset,
            xerr=err,
            fmt="o",
            color=colour,
            label=label,
            markersize=4,
            capsize=2,
        )
    for alpha in sorted({e["alpha"] for e in rows}):
        ax.axvline(alpha, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(y, [_row_label(e) for e in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("rate (95% Clopper-Pearson interval); dotted: alpha")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _row_label(e: dict) -> str:
    seed = f" s{e['seed']}" if "seed" in e else ""
    return f"{e['method']} | {e['recipe']} | {e['countermeasure']} | {e['access']}{seed}"


def plot_qq(null: dict, path: Path) -> Path:
    """Null p-values against the uniform, on linear and log scales (the small p-values that
    decide are the log panel's left end): points below the diagonal are anti-conservative."""
    from scipy.stats import beta

    plt = _pyplot()
    p = np.sort(np.asarray(null["p_values"], dtype=float))
    n = len(p)
    i = np.arange(1, n + 1)
    expected = i / (n + 1)
    lo, hi = beta.ppf(0.025, i, n - i + 1), beta.ppf(0.975, i, n - i + 1)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.2))
    for ax, log in zip(axes, (False, True), strict=True):
        ax.fill_between(expected, lo, hi, color="lightgrey", label="95% band (uniform)")
        ax.plot([expected[0], 1], [expected[0], 1], color="grey", linewidth=1)
        ax.plot(expected, p, ".", markersize=3, color="tab:blue", label=f"{n} null audits")
        ax.axhline(null["alpha"], color="tab:red", linestyle=":", linewidth=1, label="alpha")
        ax.set_xlabel("uniform quantile")
        if log:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
    axes[0].set_ylabel("null p-value")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{null['method']} / {null['access']}: FPR {null['fpr']:.3f} of {n}", fontsize=9)
    return _save(fig, path)


def plot_accuracy(entries: list[dict], path: Path) -> Path:
    """Test accuracy of each marked victim against its clean twin."""
    plt = _pyplot()
    pairs = [
        (e["clean_accuracy"], e["marked_accuracy"], e["method"])
        for e in entries
        if e["marked_accuracy"] is not None
    ]
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    methods = sorted({m for _, _, m in pairs})
    for m in methods:
        xs = [c for c, _, mm in pairs if mm == m]
        ys = [k for _, k, mm in pairs if mm == m]
        ax.plot(xs, ys, "o", markersize=4, label=m)
    lims = [min([0.5, *[v for p in pairs for v in p[:2]]]), 1.0]
    ax.plot(lims, lims, color="grey", linewidth=1)
    ax.set_xlabel("clean model accuracy")
    ax.set_ylabel("marked victim accuracy")
    ax.set_title("accuracy: marked vs clean", fontsize=9)
    if methods:
        ax.legend(fontsize=7)
    return _save(fig, path)


def _fmt(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def _rate_cells(e: dict) -> list[str]:
    return [
        f"{_fmt(e['tpr'], e['tpr_ci'])} (n={e['n_members']})",
        f"{_fmt(e['fpr_never_published'], e['fpr_never_published_ci'])} "
        f"(n={e['n_never_published']})",
        f"{_fmt(e['fpr_clean'], e['fpr_clean_ci'])} (n={e['n_clean']})",
        _fmt(e["marked_accuracy"]),
        _fmt(e["clean_accuracy"]),
    ]


def tables(summary: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table the report shows."""
    rate_head = [
        "TPR [95% CI]",
        "FPR never published",
        "FPR clean model",
        "acc marked",
        "acc clean",
    ]
    pooled = [
        [
            e["method"],
            e["recipe"],
            e["countermeasure"],
            e["access"],
            ",".join(map(str, e["seeds"])),
            *_rate_cells(e),
        ]
        for e in summary["pooled"]
    ]
    cells = [
        [
            e["method"],
            e["recipe"],
            e["countermeasure"],
            str(e["seed"]),
            e["access"],
            *_rate_cells(e),
            f"{e['queries_per_audit']:.0f}",
        ]
        for e in summary["cells"]
    ]
    null = [
        [
            e["method"],
            e["access"],
            str(e["n"]),
            _fmt(e["fpr"], e["fpr_ci"]),
            f"{e['alpha']:g}",
            f"{e['p_fpr_above_alpha']:.3g}",
        ]
        for e in summary["null"]
    ]
    countered = [
        [
            e["method"],
            e["recipe"],
            e["countermeasure"],
            e["access"],
            _fmt(e["tpr"], e["tpr_ci"]),
            _fmt(e["fpr_never_published"], e["fpr_never_published_ci"]),
            _fmt(e["fpr_clean"], e["fpr_clean_ci"]),
            *(_num(e.get(k)) for k in ("accuracy_cost", "epsilon", "precision", "recall")),
        ]
        for e in summary["pooled"]
        if e.get("stage")
    ]
    extra = [
        (
            "False-positive rates whose interval lies wholly above alpha (each one a bug to find)",
            list(ABOVE_ALPHA_HEAD),
            _above_alpha_rows(summary),
        )
    ]
    if countered:
        head = ["method", "recipe", "countermeasure", "access", "TPR [95% CI]"]
        head += ["FPR never published", "FPR clean model", "accuracy cost", "epsilon"]
        head += ["filter precision", "filter recall"]
        extra.insert(0, ("Countermeasures: what each costs the trainer", head, countered))
    return [
        *extra,
        (
            "Pooled over seeds",
            ["method", "recipe", "countermeasure", "access", "seeds", *rate_head],
            pooled,
        ),
        (
            "Null audits (keys whose data the model never saw)",
            ["method", "access", "n", "FPR [95% CI]", "alpha", "p(FPR > alpha)"],
            null,
        ),
        (
            "Every cell",
            ["method", "recipe", "countermeasure", "seed", "access", *rate_head, "queries/audit"],
            cells,
        ),
    ]


# the columns of the report's table of false-positive intervals wholly above alpha
ABOVE_ALPHA_HEAD = (
    "method",
    "recipe",
    "countermeasure",
    "seed",
    "access",
    "rate",
    "FPR [95% CI]",
    "alpha",
)


def _above_alpha_rows(summary: dict[str, Any]) -> list[list[str]]:
    """The false-positive rates whose interval lies wholly above alpha, or one row saying
    how many intervals were checked and none did."""
    rows = [
        [
            e["method"],
            e["recipe"],
            e["countermeasure"],
            "pooled" if e["seed"] is None else str(e["seed"]),
            e["access"],
            e["rate"].replace("fpr_", "").replace("_", " "),
            _fmt(e["fpr"], e["ci"]),
            f"{e['alpha']:g}",
        ]
        for e in summary.get("fpr_above_alpha", [])
    ]
    return rows or [[f"none of {summary.get('fpr_intervals', 0)} intervals", *["-"] * 7]]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _kind(entry: dict) -> str:
    return entry["countermeasure"].split("(")[0]


def plot_countermeasures(entries: list[dict], path: Path) -> Path:
    """TPR against the accuracy a countermeasure cost, one curve per method and kind
    (its strengths in order of cost): a countermeasure that escapes detection only by
    ruining the model sits far to the right."""
    plt = _pyplot()
    rows = [e for e in entries if e.get("stage") and e.get("accuracy_cost") is not None]
    rows = [e for e in rows if e["access"] == "probabilities" and e["tpr"] is not None]
    kinds = sorted({_kind(e) for e in rows})
    methods = sorted({e["method"] for e in rows})
    cols = min(4, max(1, len(kinds)))
    n_rows = max(1, -(-len(kinds) // cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.2 * cols, 2.8 * n_rows), squeeze=False)
    for ax, kind in zip(axes.flat, kinds, strict=False):
        for method in methods:
            mine = [e for e in rows if e["method"] == method and _kind(e) == kind]
            mine.sort(key=lambda e: e["accuracy_cost"])
            if mine:
                ax.plot(
                    [e["accuracy_cost"] for e in mine],
                    [e["tpr"] for e in mine],
                    "o-",
                    markersize=3,
                    label=method,
                )
        ax.set_title(kind, fontsize=8)
        ax.set_ylim(-0.05, 1.05)
        ax.axvline(0, color="grey", linewidth=0.5)
        ax.set_xlabel("accuracy cost", fontsize=7)
        ax.set_ylabel("TPR", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(kinds) :]:
        ax.axis("off")
    if rows:
        axes.flat[0].legend(fontsize=6)
    fig.suptitle("TPR (probabilities) against the accuracy each countermeasure costs", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _run_outcome(run: dict[str, Any]) -> str:
    """What a run did; one that never recorded its end (stopped, killed, or still going)
    says so: the cells it finished are in the store all the same."""
    version = f"tracemark {run['tracemark_version']}"
    if run.get("finished") is None:
        return (
            f"did not finish ({run['cells']} cells in its spec; stopped, or still running; "
            f"the cells it finished are in the store), {version}"
        )
    return f"{run['computed']} of {run['cells']} cells computed ({run['seconds']:.0f} s, {version})"


def markdown(summary: dict[str, Any], plots: list[Path]) -> str:
    lines = ["# tracemark evaluation report", "", f"Results store: `{summary['store']}`", ""]
    for run in summary["runs"]:
        lines.append(f"- run of `{run['spec_name']}` started {run['started']}: {_run_outcome(run)}")
    lines += ["", summary["sharing"], ""]
    for title, head, rows in tables(summary):
        lines += [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def html_page(summary: dict[str, Any], plots: list[Path]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>tracemark report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
        "</style></head><body><h1>tracemark evaluation report</h1>",
        f"<p>Results store: <code>{esc(summary['store'])}</code></p>",
        f"<p>{esc(summary['sharing'])}</p>",
    ]
    for title, head, rows in tables(summary):
        parts.append(f"<h2>{esc(title)}</h2><table><tr>")
        parts += [f"<th>{esc(h)}</th>" for h in head]
        parts.append("</tr>")
        for r in rows:
            parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>Plots</h2>")
    for p in plots:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        parts.append(f"<p><img alt='{esc(p.stem)}' src='data:image/png;base64,{data}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


REPORT_FILES = ("report.md", "report.html")
# every plot a report names
REPORT_PLOTS = ("rates-*.png", "qq-*.png", "accuracy.png", "countermeasures.png")


def check_report_folder(out: Path, force: bool, protect: list[Path] = ()) -> None:
    """Refuse an ``out`` that is a file, or that holds an earlier report (without ``force``),
    before the store is read."""
    if out.exists() and not out.is_dir():
        raise TracemarkError(f"--out {out} is a file; give a folder for the report")
    earlier = [out / name for name in REPORT_FILES]
    if out.is_dir():
        earlier += [p for pattern in REPORT_PLOTS for p in sorted(out.glob(pattern))]
    for path in earlier:
        check_output(path, force=force, protect=protect, what="report file")


def write_report(
    summary: dict[str, Any], null: list[dict], out: Path, force: bool = False
) -> list[Path]:
    """Write the plots, report.md and report.html into ``out``; return what was written.
    An earlier report there is replaced only with ``force``."""
    check_report_folder(out, force)
    out.mkdir(parents=True, exist_ok=True)
    plots = [plot_rates(summary["pooled"], out / "rates-pooled.png", "pooled over seeds")]
    if len(summary["cells"]) != len(summary["pooled"]):
        plots.append(plot_rates(summary["cells"], out / "rates-cells.png", "every cell"))
    for entry in null:
        plots.append(plot_qq(entry, out / f"qq-{entry['method']}-{entry['access']}.png"))
    plots.append(plot_accuracy(summary["pooled"], out / "accuracy.png"))
    if any(e.get("stage") for e in summary["pooled"]):
        plots.append(plot_countermeasures(summary["pooled"], out / "countermeasures.png"))
    atomic_write_text(out / "report.md", markdown(summary, plots), force=force)
    atomic_write_text(out / "report.html", html_page(summary, plots), force=force)
    return [*plots, out / "report.md", out / "report.html"]
