"""Labels only: does the tracker gain from noisy views, beside the shifted and mirrored ones?

    python bench/label_only_views.py --recipe cnn-long --pseudo 99 --never 5   # ~17 min

Label-only membership inference asks how robust a member's label is to perturbations.
For one tracker cell of ``specs/realistic.toml`` (victims from ``--cache``, trained as the
harness trains them), every owner's published set and ``--pseudo`` pseudo-users (drawn as
the audit draws them) are queried under the audit's 10 geometric views and under 10
Gaussian-noise copies per image at each sigma. The noise is one array drawn before any
query and added alike to every set, so each score is one fixed function of (set, mark)
and its rank p-value exact. Scores (lower = more member-like): the share of (image, view)
answers that are not the owner's class, per view family; and, for comparison, the mean
cross-entropy of one view (what probabilities give).
"""

from __future__ import annotations

import time

import numpy as np

from cell_victims import prepared_cell, realistic_cell_arguments
from tracemark.methods.tracker.audit import pseudo_user_batch, resolve_design
from tracemark.methods.tracker.mark import mark_selected
from tracemark.methods.tracker.views import VIEWS, view
from tracemark.oracle import TorchModuleOracle
from tracemark.stats import rank_p_value

SIGMAS = (0.05, 0.1, 0.2, 0.3)
NOISE_COPIES = 10
NOISE_SEED = 12345  # fixed before the audit: the same noise for every set


def main() -> None:
    ap = realistic_cell_arguments(__doc__.split("\n")[0])
    ap.add_argument("--pseudo", type=int, default=99)
    ap.add_argument("--never", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.01)
    a = ap.parse_args()
    _, p = prepared_cell("realistic", "tracker", a.recipe, a.seed, a.cache)
    oracle = TorchModuleOracle(p.models["marked"], num_classes=p.num_classes)
    k = p.world.owners[0].indices.size // 4  # 25 published of a collection of 100
    h, w, c = p.train.images.shape[1:]
    noise = np.random.default_rng(NOISE_SEED).standard_normal((NOISE_COPIES, k, h, w, c))
    noise = noise.astype(np.float32)

    def scores(marked: np.ndarray, label: int) -> dict[str, float]:
        r = oracle.query(np.ascontiguousarray(np.concatenate([view(marked, *v) for v in VIEWS])))
        hit = (r.top1() == label).reshape(len(VIEWS), k)
        out = {
            "loss, 1 view (probabilities)": float(
                -np.log(np.maximum(r.prob_of(label)[:k], 1e-12)).mean()
            )
        }
        out["share, 10 geometric views"] = float(1 - hit.mean())
        for s in SIGMAS:
            noisy = np.clip(marked[None] + s * noise, 0, 1).reshape(-1, h, w, c)
            hn = (oracle.query(noisy).top1() == label).reshape(NOISE_COPIES, k)
            out[f"share, 10 noise views sigma {s}"] = float(1 - hn.mean())
            both = (hn.sum() + hit.sum()) / (hn.size + hit.size)
            out[f"share, both, sigma {s}"] = float(1 - both)
        return out

    members = [o for o in p.world.owners if o.member]
    owners = members + [o for o in p.world.owners if not o.member][: a.never]
    results, t0 = [], time.time()
    for o in owners:
        mk = p.world.marked[o.index]
        ids = [str(i) for i in o.indices]
        collection = p.train.images[o.indices].astype(np.float32)
        mask, design, _ = resolve_design(mk.key, ids, mk.published)
        pool = collection if design == "randomised publication" else collection[mask]
        own = scores(mark_selected(collection, mk.key, ids, mask), o.label)
        null = []
        for start in range(0, a.pseudo, 20):
            users = list(range(start, min(a.pseudo, start + 20)))
            batch = pseudo_user_batch(mk.key, pool, users, k)
            null += [scores(batch[i * k : (i + 1) * k], o.label) for i in range(len(users))]
        pv = {s: rank_p_value(own[s], np.array([n[s] for n in null]), "less") for s in own}
        results.append((o.member, pv))
        print(
            o.index, o.member, {s: round(v, 3) for s, v in pv.items()}, f"{time.time() - t0:.0f} s"
        )
    print(f"\nalpha = {a.alpha}, {a.pseudo} pseudo-users (smallest p {1 / (a.pseudo + 1):.3f})")
    for s in results[0][1]:
        mem = [pv[s] for m, pv in results if m]
        nev = [pv[s] for m, pv in results if not m]
        print(
            f"{s:36} members flagged {sum(x <= a.alpha for x in mem)}/{len(mem)}, "
            f"median p {np.median(mem):.3f}; never published flagged "
            f"{sum(x <= a.alpha for x in nev)}/{len(nev)}"
        )


if __name__ == "__main__":
    main()
