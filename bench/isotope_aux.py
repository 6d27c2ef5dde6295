"""Isotope: aux images per mark against external marks, at equal queries.

    python bench/isotope_aux.py                    # realistic CNN, seed 0, ~25 min on 2 cores

Takes one isotope cell of a spec (by default ``specs/realistic.toml``'s CNN, seed 0),
trains its marked victim and clean model as ``tracemark evaluate`` does (both kept in
``--cache``), and for every owner measures, once, the per-image shift of the key's mark
and of ``--externals`` external marks on ``--aux`` aux images. Each (aux images a,
externals E) pair is then the calibrated audit on the first a images and first E
externals (exact: the same function for the key's mark and every external), costing
a·(E + 2) queries; "sequential" reads the externals in order with Besag and Clifford's
rule (h = 10, cap E) as the audit does by default. Prints members flagged at alpha,
never-published owners flagged, and mean queries per audit for each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cell_victims import prepared_cell
from tracemark.methods.isotope.mark import external_marks, key_mark
from tracemark.methods.isotope.scores import build_aux_pool, mark_shift
from tracemark.oracle import TorchModuleOracle
from tracemark.stats import rank_p_value, sequential_rank_p_value

AUX = [25, 50, 100, 200]
EXTERNALS = [99, 299]


def per_image_shifts(oracle, key, aux, label: int, n_aux: int, n_ext: int):
    """(key's per-image shifts, (E, a) externals' per-image shifts) on one aux pool."""
    pool = build_aux_pool(oracle, aux, label, n_aux, key.seed)
    vis = key.typed_params().visibility
    mine = mark_shift(oracle, pool, key_mark(key), vis, label)[1]
    ext = np.stack([mark_shift(oracle, pool, m, vis, label)[1] for m in external_marks(key, n_ext)])
    return mine, ext


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default="realistic")
    ap.add_argument("--recipe", default="cnn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default="isotope")
    ap.add_argument("--aux", type=int, default=max(AUX))
    ap.add_argument("--externals", type=int, default=max(EXTERNALS))
    ap.add_argument("--never", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--cache", type=Path, default=Path("runs/cache"))
    ap.add_argument("--out", type=Path, default=Path("runs/isotope-aux.json"))
    a = ap.parse_args()

    t0 = time.time()
    _, p = prepared_cell(a.spec, a.method, a.recipe, a.seed, a.cache)
    print(f"victims ready in {time.time() - t0:.0f} s", flush=True)
    oracle = TorchModuleOracle(p.models["marked"], num_classes=p.num_classes)
    members = [o for o in p.world.owners if o.member]
    never = [o for o in p.world.owners if not o.member][: a.never]
    rows = []
    for o in members + never:
        t = time.time()
        key = p.world.marked[o.index].key if p.world.marked[o.index] else o.key
        label = o.label if o.label >= 0 else o.index % p.num_classes
        mine, ext = per_image_shifts(oracle, key, p.aux, label, a.aux, a.externals)
        rows.append({"owner": o.index, "member": o.member, "mine": mine, "ext": ext})
        print(f"owner {o.index:2} member={o.member!s:5} {time.time() - t:.0f} s", flush=True)
    print(f"\nalpha = {a.alpha}; total {time.time() - t0:.0f} s")
    print(f"{'aux a':>6} {'externals':>10} {'rule':>10}  members  never  queries/audit (members)")
    results = []
    for n_aux in AUX:
        for n_ext in EXTERNALS:
            for rule in ("fixed", "sequential"):
                flags = {True: 0, False: 0}
                queries = []
                for r in rows:
                    s = r["mine"][:n_aux].mean()
                    null = r["ext"][:n_ext, :n_aux].mean(axis=1)
                    if rule == "fixed":
                        pv, used = rank_p_value(s, null, "greater"), n_ext
                    else:
                        pv, used = sequential_rank_p_value(s, null, 10, n_ext, "greater")
                    flags[r["member"]] += pv <= a.alpha
                    if r["member"]:
                        queries.append(n_aux * (used + 2))
                m = len(members)
                print(
                    f"{n_aux:6} {n_ext:10} {rule:>10}  {flags[True]:3}/{m:<4} "
                    f"{flags[False]:2}/{len(never):<4} {np.mean(queries):9.0f}"
                )
                results.append(
                    {"aux": n_aux, "externals": n_ext, "rule": rule, "members_flagged":
                     flags[True], "never_flagged": flags[False], "queries": np.mean(queries)}
                )  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    args = {k: str(v) for k, v in vars(a).items()}
    a.out.write_text(json.dumps({"args": args, "table": results}))


if __name__ == "__main__":
    main()
