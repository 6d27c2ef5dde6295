"""Null audits on a *marked* victim: fresh never-published owners against a model that
learned other owners' marks.

    python bench/marked_victim_null.py --method tracker --owners 200   # about 5 min once trained
    python bench/marked_victim_null.py --method isotope --owners 200   # about 10 min, shared

The null spec (specs/null.toml) audits never-published keys on clean models. A victim
trained on members' marks is where a never-published mark could look familiar (the same
class, a mark resembling a member's), so this audits ``--owners`` further never-published
owners on the realistic spec's CNN victim of ``--seed`` (trained, or read from
``--cache``), drawn exactly as the harness draws them (tracker: owners after the spec's
own, each with a collection from the owners' share and the key's choice of 25 published;
isotope: fresh keys, one class each in turn). Each audit is the harness's: the default
sequential test (cap 10/alpha = 1,000, so p reaches 0.001), or ``--fixed`` N draws.
Prints how many p-values fall at or below 0.01 and 0.05, with the binomial bound a valid
test stays under (0.999 quantile), for the marked victim and then its clean model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.stats import binom

from tracemark.evaluate import cells_of, load_spec
from tracemark.evaluate.run import prepare
from tracemark.evaluate.world import clean_indices, owners_of
from tracemark.keys import Key
from tracemark.methods import isotope, tracker
from tracemark.oracle import TorchModuleOracle
from tracemark.rng import derive_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=("tracker", "isotope"), default="tracker")
    ap.add_argument("--owners", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipe", default="cnn")
    ap.add_argument("--cache", type=Path, default=Path("runs/cache"))
    ap.add_argument("--fixed", type=int, help="rank among exactly N null draws instead")
    ap.add_argument("--models", default="marked,clean")
    args = ap.parse_args()
    spec = load_spec("realistic")
    cell = next(
        c
        for c in cells_of(spec)
        if (c.method_name, c.recipe_name, c.seed) == (args.method, args.recipe, args.seed)
    )
    start = time.perf_counter()
    p = prepare(cell, cache=args.cache)
    print(f"{cell.label}: victims ready in {time.perf_counter() - start:.0f} s", flush=True)
    m = cell.method
    if args.method == "tracker":
        more = m.model_copy(update={"never_published": m.never_published + args.owners})
        clean = clean_indices(spec.dataset, cell.recipe, cell.seed)
        extra = owners_of(spec.dataset, cell.method_name, more, cell.seed, clean)
        extra = extra[m.members + m.never_published :]
    options = {**m.options, "alpha": spec.alpha}
    if args.fixed is not None:
        options["fixed"] = args.fixed
    for which in args.models.split(","):
        oracle = TorchModuleOracle(p.models[which], num_classes=p.num_classes)
        ps = []
        for i in range(args.owners):
            if args.method == "tracker":
                o = extra[i]
                v = tracker.audit(
                    oracle,
                    o.key,
                    p.train.images[o.indices],
                    ids=[str(j) for j in o.indices],
                    published=m.images_per_user,
                    label=o.label,
                    **options,
                )
            else:
                seed = derive_bytes("ab" * 16, "bench/marked-victim-null", args.seed, i).hex()
                key = Key(method="isotope", params=m.params, seed=seed)
                v = isotope.audit(oracle, key, None, p.aux, label=i % 10, **options)
            ps.append(v.p_value)
        ps = np.array(ps)
        n = len(ps)
        figures = ", ".join(
            f"p <= {a}: {int((ps <= a).sum())} (bound {int(binom.ppf(0.999, n, a))})"
            for a in (0.001, 0.01, 0.05)
        )
        took = time.perf_counter() - start
        print(f"{which}: {n} never-published owners; {figures}; smallest p {ps.min():.4g}; "
              f"{took:.0f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
