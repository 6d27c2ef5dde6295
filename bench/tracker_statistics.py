"""Which tracker statistic, and which views, detect most at the same (exact) size.

    python bench/tracker_statistics.py                       # realistic CNN, seed 0, ~30 min
    python bench/tracker_statistics.py --recipe resnet18 --seed 1 --pseudo 299

Takes one tracker cell of a spec (by default ``specs/realistic.toml``'s CNN, seed 0),
trains its marked victim and clean model exactly as ``tracemark evaluate`` does (both kept
in ``--cache``), and for every owner queries once: the published set and ``--pseudo``
pseudo-users (drawn exactly as the audit draws them), each under a fixed list of views
(shifts and flips, the augmentations trainers use), each set's images again under one
fresh reference mark, and each set's kept-back images under its own mark. Every statistic
below is then one fixed function of (set, mark, views, model) applied alike to the owner
and to every pseudo-user, so each rank p-value is exact on a model that never saw the
marks; they differ only in power, which is what this measures, on the same answers.

Statistics (lower = more member-like), each over a subset of the views:
  mean-loss       mean cross-entropy under the owner's class (the audit before 0.3.0);
  min-view        per image the smallest loss over the views, then the mean;
  log-odds        mean of -log(p / (1 - p)) (LiRA's logit scaling: a better-behaved tail);
  trimmed         20%-trimmed mean of the per-image view-mean losses;
  median          median of the per-image view-mean losses;
  label-share     share of (image, view) pairs not classified as the class (labels only);
  calibrated      identity view: loss under the set's mark minus loss under a fresh mark;
  contrast        identity view: the published images' mean loss minus the kept-back
                  images' under the same mark (RMIA's ratio against reference points).
Prints, per statistic and view set: members flagged at alpha, their median p, never-published
owners flagged, clean-model audits flagged; writes every p-value as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import trim_mean

from cell_victims import prepared_cell
from tracemark.methods.tracker.audit import (
    PURPOSE_PSEUDO_NOISE,
    PURPOSE_PSEUDO_PATTERN,
    PURPOSE_PSEUDO_SAMPLE,
    resolve_design,
)
from tracemark.methods.tracker.mark import (
    PURPOSE_NOISE,
    apply_mark,
    draw_pattern,
    user_pattern,
)
from tracemark.methods.tracker.views import VIEWS, view
from tracemark.oracle import TorchModuleOracle
from tracemark.rng import derive, derive_keys
from tracemark.stats import rank_p_value

# The audit's own views (tracemark.methods.tracker.views): identity, flip, 2 and 4 px.
VIEW_SETS = {"1 view": [0], "2 views (flip)": [0, 1], "6 views (flip, 2 px)": [0, 1, 2, 3, 4, 5]}
VIEW_SETS["10 views (flip, 2 and 4 px)"] = list(range(10))
PURPOSE_REFERENCE_PATTERN = "bench/reference/pattern"
PURPOSE_REFERENCE_NOISE = "bench/reference/noise"


def set_answers(oracle, marked: np.ndarray, label: int) -> tuple[np.ndarray, np.ndarray]:
    """(probability of ``label``, top-1 == label) per image and view: (K, V) each."""
    batch = np.concatenate([view(marked, *v) for v in VIEWS])
    r = oracle.query(np.ascontiguousarray(batch))
    k = len(marked)
    p = r.prob_of(label).reshape(len(VIEWS), k).T
    hit = (r.top1() == label).reshape(len(VIEWS), k).T
    return p, hit


def loss(p: np.ndarray) -> np.ndarray:
    return -np.log(np.maximum(p, 1e-12))


def statistics(p: np.ndarray, hit: np.ndarray, extra: dict[str, float]) -> dict[str, float]:
    """Every statistic of one set, for every view subset."""
    out = dict(extra)
    for name, vs in VIEW_SETS.items():
        pv, lv = p[:, vs], loss(p[:, vs])
        per_image = lv.mean(axis=1)
        q = np.clip(pv, 1e-12, 1 - 1e-12)
        out[f"mean-loss | {name}"] = float(per_image.mean())
        out[f"min-view | {name}"] = float(lv.min(axis=1).mean())
        out[f"log-odds | {name}"] = float(-(np.log(q) - np.log1p(-q)).mean())
        out[f"trimmed | {name}"] = float(trim_mean(per_image, 0.2))
        out[f"median | {name}"] = float(np.median(per_image))
        out[f"label-share | {name}"] = float(1 - hit[:, vs].mean())
    return out


def audit_owner(oracle, key, collection, ids, mask, label, n_pseudo):
    """Statistics of the owner's set and of ``n_pseudo`` pseudo-users, on the same model."""
    params = key.typed_params()
    n, k = len(collection), int(mask.sum())
    sets = []  # (chosen indices, pattern, noise keys for the collection, reference pattern)
    owner_noise = derive_keys(key.seed, PURPOSE_NOISE, ids)
    sets.append((np.flatnonzero(mask), user_pattern(key), owner_noise, "owner"))
    for u in range(n_pseudo):
        chosen = derive(key.seed, PURPOSE_PSEUDO_SAMPLE, u).choice(n, size=k, replace=False)
        pattern = draw_pattern(derive(key.seed, PURPOSE_PSEUDO_PATTERN, u), params)
        # the chosen images' noise as the audit draws it; the kept-back ones' alike
        noise = derive_keys(key.seed, PURPOSE_PSEUDO_NOISE, [f"{u}:c{i}" for i in range(n)])
        chosen_noise = derive_keys(key.seed, PURPOSE_PSEUDO_NOISE, [f"{u}:{j}" for j in range(k)])
        noise[chosen] = chosen_noise
        sets.append((chosen, pattern, noise, u))
    rows = []
    for chosen, pattern, noise, who in sets:
        rest = np.setdiff1d(np.arange(n), chosen)
        marked = apply_mark(collection[chosen], pattern, noise[chosen], params)
        p, hit = set_answers(oracle, marked, label)
        tag = "owner" if who == "owner" else f"ref{who}"
        ref_pattern = draw_pattern(derive(key.seed, PURPOSE_REFERENCE_PATTERN, tag), params)
        ref_noise = derive_keys(key.seed, PURPOSE_REFERENCE_NOISE, [f"{tag}:{i}" for i in chosen])
        ref = apply_mark(collection[chosen], ref_pattern, ref_noise, params)
        kept = apply_mark(collection[rest], pattern, noise[rest], params)
        r = oracle.query(np.concatenate([ref, kept]))
        ref_loss = loss(r.prob_of(label)[:k])
        kept_loss = loss(r.prob_of(label)[k:])
        own = loss(p[:, 0])
        extra = {
            "calibrated | 1 view": float((own - ref_loss).mean()),
            "contrast | 1 view": float(own.mean() - kept_loss.mean()),
        }
        rows.append(statistics(p, hit, extra))
    names = list(rows[0])
    out = {}
    for s in names:
        null = np.array([r[s] for r in rows[1:]])
        out[s] = rank_p_value(rows[0][s], null, alternative="less")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default="realistic")
    ap.add_argument("--recipe", default="cnn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default="tracker", help="the spec's tracker method entry")
    ap.add_argument("--pseudo", type=int, default=499, help="pseudo-users per audit")
    ap.add_argument("--never", type=int, default=20, help="never-published owners audited")
    ap.add_argument("--clean", type=int, default=10, help="owners audited on the clean model")
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--cache", type=Path, default=Path("runs/cache"))
    ap.add_argument("--out", type=Path, default=Path("runs/tracker-statistics.json"))
    a = ap.parse_args()

    t0 = time.time()
    cell, p = prepared_cell(a.spec, a.method, a.recipe, a.seed, a.cache)
    print(f"victims ready in {time.time() - t0:.0f} s ({cell.recipe.arch})")
    oracles = {n: TorchModuleOracle(m, num_classes=p.num_classes) for n, m in p.models.items()}
    results = []
    members = [o for o in p.world.owners if o.member]
    never = [o for o in p.world.owners if not o.member][: a.never]
    plan = [("marked", o) for o in members + never]
    plan += [("clean", o) for o in (members + never)[: a.clean]]
    for model, o in plan:
        t = time.time()
        mk = p.world.marked[o.index]
        ids = [str(i) for i in o.indices]
        mask, _, _ = resolve_design(mk.key, ids, mk.published)
        collection = p.train.images[o.indices].astype(np.float32)
        oracle = oracles[model]
        pv = audit_owner(oracle, mk.key, collection, ids, mask, o.label, a.pseudo)
        results.append({"model": model, "owner": o.index, "member": o.member, "p": pv})
        best = min(pv.values())
        today = pv["mean-loss | 1 view"]
        print(
            f"{model:6} owner {o.index:2} member={o.member!s:5} today p={today:.4f} "
            f"best {best:.4f} queries {oracle.queries} {time.time() - t:.0f} s",
            flush=True,
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "rows": results}))
    print(f"\nalpha = {a.alpha}; {a.pseudo} pseudo-users; total {time.time() - t0:.0f} s")
    print(f"{'statistic':44} members  median p  never  clean")
    for s in results[0]["p"]:

        def flagged(rows, s=s):
            return sum(r["p"][s] <= a.alpha for r in rows)

        mem = [r for r in results if r["model"] == "marked" and r["member"]]
        nev = [r for r in results if r["model"] == "marked" and not r["member"]]
        cln = [r for r in results if r["model"] == "clean"]
        med = float(np.median([r["p"][s] for r in mem]))
        print(
            f"{s:44} {flagged(mem):2}/{len(mem):<4} {med:8.4f}  {flagged(nev):2}/{len(nev):<3}"
            f" {flagged(cln):2}/{len(cln)}"
        )


if __name__ == "__main__":
    main()
