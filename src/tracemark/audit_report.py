"""One audit's verdict as a page a person can read: ``audit --report audit.html``.

The page stands alone (its plots are embedded PNGs, made with matplotlib; no script, no
network): the verdict in one sentence, the p-value in plain words, the owner's statistic
drawn against the null distribution it was ranked in, how a sequential audit's evidence
grew until it stopped, what the verdict does not say, and everything needed to re-check
it (access, queries, the key's commitment, versions, date, the command).
"""

from __future__ import annotations

import base64
import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import versions
from .plots import png_bytes, pyplot
from .verdict import Verdict

NOT_SAID = {
    "tracker": [
        "It does not say which images the model memorised, or that every one of them was "
        "used: the test pools the evidence of your whole published set.",
        "It does not prove who trained the model, nor that they did so knowingly.",
        "A result that does not flag is not proof of innocence: a model trained briefly or "
        "with heavy regularisation may hold too little of your images to show.",
    ],
    "isotope": [
        "It does not say how many of your marked images were trained on, only that the "
        "model reacts to your mark more than to marks no one published.",
        "It does not prove who trained the model, nor that they did so knowingly.",
        "A result that does not flag is not proof of innocence.",
    ],
    "ubw": [
        "It says the model reacts to your dataset's trigger the way models trained on the "
        "release do; it does not say which images were used.",
        "It does not prove who trained the model, nor that they did so knowingly.",
        "A result that does not flag is not proof of innocence.",
    ],
}
COMMON_NOT_SAID = [
    "The answers were recorded by whoever ran the audit; only the model's operator could "
    "confirm them. A query log (--query-log) lets anyone recompute the p-value from them.",
]


def plain_words(v: Verdict) -> str:
    """The p-value as a sentence a person without statistics can read."""
    if v.p_value >= 0.01:
        often = f"about {float(f'{100 * v.p_value:.2g}'):g} of 100 audits"
    elif v.p_value < 1e-6:
        often = "fewer than 1 of a million audits"
    else:
        often = f"about 1 of {float(f'{1 / max(v.p_value, 1e-300):.2g}'):,.0f} audits"
    return (
        f"If this model had never seen your images, a result at least this extreme would "
        f"happen in {often} (p = {v.p_value:.4g}). You chose to accept "
        f"{100 * v.alpha:g} in 100 as the risk of a false accusation (alpha = {v.alpha:g}); "
        + (
            "this result is that rare or rarer, so the audit flags the model."
            if v.decision
            else "this result is not that rare, so the audit does not flag the model."
        )
    )


def _null_figure(v: Verdict) -> tuple[str, bytes] | None:
    """The owner's statistic against the null distribution it was ranked in."""
    plt = pyplot()
    ev, st = v.evidence, v.statistics
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    if v.method == "tracker" and ev.get("null_scores"):
        null = np.asarray(ev["null_scores"][: st.get("n_pseudo_users", len(ev["null_scores"]))])
        mine, xlabel = st["user_mean_loss"], "mean loss of a published set (lower: more familiar)"
        title = f"Your set's mean loss among {len(null)} pseudo-users (random sets, same marks)"
    elif v.method == "isotope" and ev.get("external_shifts"):
        null = np.asarray(ev["external_shifts"])
        mine = float(st.get("shift", np.mean(ev["user_per_image_shift"])))
        xlabel = "shift S the mark causes toward the class"
        title = f"Your mark's shift among {len(null)} external marks (never published)"
    elif v.method == "ubw" and ev.get("null_statistics"):
        null = np.asarray(ev["null_statistics"])
        mine = float(st["delta_p"] if "delta_p" in st else st.get("flip_rate", np.nan))
        xlabel, title = "trigger's effect", f"Your trigger among {len(null)} never-published ones"
    else:
        plt.close(fig)
        return None
    ax.hist(null, bins=min(40, max(10, len(null) // 5)), color="lightgrey", edgecolor="grey")
    ax.axvline(mine, color="tab:red", linewidth=2, label="yours")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return "null-distribution", png_bytes(fig)


def _margin_figure(v: Verdict) -> tuple[str, bytes] | None:
    """UBW's per-image evidence: each test image's true-class probability without and
    with the trigger (the margin test asks whether the drop exceeds tau)."""
    if v.method != "ubw" or not v.evidence.get("p_benign"):
        return None
    plt = pyplot()
    pb, pp = np.asarray(v.evidence["p_benign"]), np.asarray(v.evidence["p_triggered"])
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.scatter(pb, pp, s=8, alpha=0.6, color="tab:blue")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=1)
    ax.set_xlabel("P_b: true-class probability, clean image")
    ax.set_ylabel("P_p: the same image with your trigger")
    ax.set_title("Each test image: below the line, the trigger took confidence", fontsize=9)
    return "ubw-margin", png_bytes(fig)


def _sequential_figure(v: Verdict) -> tuple[str, bytes] | None:
    """How a sequential audit's evidence grew, batch by batch, and where it stopped."""
    trace = v.statistics.get("trace")
    if not trace:
        return None
    plt = pyplot()
    draws = np.array([t[0] for t in trace])
    extreme = np.array([t[1] for t in trace])
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    ax.step(draws, extreme, where="post", color="tab:blue", label="null draws at least as extreme")
    h = v.statistics.get("stop_after")
    if h:
        ax.axhline(h, color="tab:orange", linestyle="--", label=f"stop: {h} as extreme (innocent)")
    cap = v.statistics.get("cap")
    if cap:
        ax.axvline(cap, color="grey", linestyle=":", label=f"cap: {cap} draws")
    ax.set_xlabel("null draws so far")
    ax.set_ylabel("as extreme as yours")
    ax.set_title(f"Sequential test: stopped after {draws[-1]} draws", fontsize=9)
    ax.legend(fontsize=7)
    return "sequential", png_bytes(fig)


def page(v: Verdict, command: list[str] | None = None, when: str | None = None) -> str:
    """The report as one self-contained HTML page."""
    esc = html.escape
    when = when or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    headline = (
        "The model was TRAINED ON your marked data"
        if v.decision
        else "No evidence that the model was trained on your marked data"
    )
    colour = "#b00020" if v.decision else "#1b5e20"
    drawn = (_margin_figure(v), _null_figure(v), _sequential_figure(v))
    figures = [f for f in drawn if f is not None]
    rows: list[tuple[str, Any]] = [
        ("method", v.method),
        ("test", v.test),
        ("access to the model", v.access),
        ("queries spent", f"{v.queries:,}"),
        ("p-value", f"{v.p_value:.6g}"),
        ("alpha (false-positive rate you set)", f"{v.alpha:g}"),
        ("effect", f"{v.effect:.3g} ({v.effect_description})"),
        ("label", "-" if v.label is None else f"{v.label} ({v.label_source})"),
        ("key commitment", v.key_commitment),
        ("date", when),
        ("versions", ", ".join(f"{k} {val}" for k, val in versions().items())),
    ]
    if command:
        rows.append(("command", " ".join(command)))
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>tracemark audit: {esc(headline)}</title>",
        "<style>body{font-family:sans-serif;max-width:52em;margin:2em auto;line-height:1.45}"
        "h1{font-size:1.5em}table{border-collapse:collapse;font-size:13px}"
        "td{border-top:1px solid #ddd;padding:4px 8px;vertical-align:top}"
        "td:first-child{color:#555;white-space:nowrap}img{max-width:100%}"
        ".verdict{font-size:1.35em;font-weight:bold}</style></head><body>",
        "<h1>tracemark audit report</h1>",
        f"<p class='verdict' id='verdict' style='color:{colour}'>{esc(headline)}</p>",
        f"<p id='plain-words'>{esc(plain_words(v))}</p>",
    ]
    for name, data in figures:
        b64 = base64.b64encode(data).decode("ascii")
        parts.append(f"<p><img id='{name}' alt='{name}' src='data:image/png;base64,{b64}'></p>")
    parts.append("<h2>What this verdict does not say</h2><ul>")
    for line in NOT_SAID.get(v.method, []) + COMMON_NOT_SAID:
        parts.append(f"<li>{esc(line)}</li>")
    parts.append("</ul><h2>Details</h2><table>")
    parts += [f"<tr><td>{esc(k)}</td><td>{esc(str(val))}</td></tr>" for k, val in rows]
    parts.append("</table>")
    if v.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in v.notes))
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_audit_report(
    v: Verdict, path: Path, command: list[str] | None = None, force: bool = False, protect=()
) -> Path:
    """Write the page atomically (an existing file is replaced only with ``force``)."""
    from .fsutil import atomic_write_text

    atomic_write_text(path, page(v, command), force=force, protect=list(protect))
    return path
