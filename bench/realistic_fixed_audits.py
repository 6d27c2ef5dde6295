"""The old fixed audits beside the default sequential ones, on the same realistic victims.

The power issue asks to compare old and new audits on the same victims. The store
`results/realistic-0.3.db` holds every realistic cell's default (sequential) audits; this
bench audits the very same cached victims and owners again with the fixed test the 0.1.0
specs ran (99 pseudo-users or external marks, so the smallest p-value is 1/100 = alpha)
and prints, per cell and access mode, how many members, never-published owners and clean
keys each test flags and the queries it spent on average, beside the stored sequential
rows. Victims come from the cache (nothing is trained); the owners and their marks are
drawn from the same seeds.

    python bench/realistic_fixed_audits.py --method tracker --method isotope \
        --out results/realistic-fixed.json  # about 1-10 minutes a cell on one core
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from cell_victims import prepared_cell
from tracemark.evaluate import open_store
from tracemark.evaluate.run import audit_all


def stored_rows(db: Path, cell_id: str) -> list[dict]:
    """The store's audit rows of one cell (read-only, every row checked against its
    cell's digest)."""
    with open_store(db) as store:
        return store.audits(cell_id)


def summary(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per access: [flagged, audits, mean queries] for members, never published, clean."""
    out: dict[str, dict[str, list[float]]] = {}
    for access in sorted({r["access"] for r in rows}):
        kinds = {
            "members": [
                r for r in rows if r["access"] == access and r["model"] == "marked" and r["member"]
            ],
            "never": [
                r
                for r in rows
                if r["access"] == access and r["model"] == "marked" and not r["member"]
            ],
            "clean": [r for r in rows if r["access"] == access and r["model"] == "clean"],
        }
        out[access] = {
            kind: [
                int(sum(bool(r["decision"]) for r in got)),
                len(got),
                float(np.mean([r["queries"] for r in got])) if got else 0.0,
            ]
            for kind, got in kinds.items()
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", action="append", default=None)
    ap.add_argument("--recipe", action="append", default=None)
    ap.add_argument("--seed", action="append", type=int, default=None)
    ap.add_argument("--fixed", type=int, default=99)
    ap.add_argument("--db", type=Path, default=Path("results/realistic-0.3.db"))
    ap.add_argument("--cache", type=Path, default=Path("results/cache-realistic"))
    ap.add_argument("--out", type=Path, default=Path("results/realistic-fixed.json"))
    args = ap.parse_args()

    from tracemark.oracle import TorchModuleOracle

    done = json.loads(args.out.read_text()) if args.out.exists() else {}
    for method in args.method or ["tracker", "isotope"]:
        for recipe in args.recipe or ["cnn", "cnn-long", "resnet18"]:
            for seed in args.seed or [0, 1, 2]:
                name = f"{method}/{recipe}/{seed}"
                if name in done:
                    continue
                start = time.perf_counter()
                cell, p = prepared_cell("realistic", method, recipe, seed, args.cache)
                if p.clean_trained:
                    raise SystemExit(f"{name}: its clean model was not in {args.cache}")
                options = {**cell.method.options, "fixed": args.fixed}
                fixed_cell = dataclasses.replace(
                    cell, method=cell.method.model_copy(update={"options": options})
                )
                oracles = {
                    k: TorchModuleOracle(m, num_classes=p.num_classes, device="cpu")
                    for k, m in p.models.items()
                }
                rows = [dataclasses.asdict(r) for r in audit_all(fixed_cell, p, oracles)]
                done[name] = {
                    "fixed": summary(rows),
                    "sequential": summary(stored_rows(args.db, cell.cell_id)),
                    "seconds": round(time.perf_counter() - start, 1),
                }
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(done, indent=1))
                line = done[name]
                for access, got in line["fixed"].items():
                    seq = line["sequential"][access]
                    print(
                        f"{name} {access}: fixed {got['members'][0]}/{got['members'][1]}, "
                        f"{got['never'][0]}/{got['never'][1]}, {got['clean'][0]}/"
                        f"{got['clean'][1]}, queries {got['members'][2]:.0f}/"
                        f"{got['never'][2]:.0f}/{got['clean'][2]:.0f} | sequential "
                        f"{seq['members'][0]}/{seq['members'][1]}, {seq['never'][0]}/"
                        f"{seq['never'][1]}, {seq['clean'][0]}/{seq['clean'][1]}, queries "
                        f"{seq['members'][2]:.0f}/{seq['never'][2]:.0f}/{seq['clean'][2]:.0f}",
                        flush=True,
                    )
                print(f"{name}: {line['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
