"""UBW-P with labels only: does the key's trigger stand out by *where* labels go?

    python bench/ubw_label_dispersion.py --recipe cnn-long --nulls 50   # ~1 min per recipe

On the realistic victims the label-flip test cannot reject: the victims flip 92-94% of
the correctly classified test images under the key's trigger and 85% under the control
trigger, and the test asks for tau = 0.25 more. UBW-P is *untargeted*: the victim learned
random labels under the trigger, so its triggered labels should spread over the classes
(the paper's D_p, which needs labels only), while a trigger it never saw pushes images to
whatever class an occluded corner looks like. For one UBW-P cell of
``specs/realistic.toml`` (victims from ``--cache``, trained as the harness trains them),
the m test images the audit uses are queried under the key's trigger, the control and
independent triggers, and ``--nulls`` never-published triggers at the key's place (the
calibration's draws), on the marked victim and on the clean model; each trigger's flip
rate, D_p (per true class, class-weighted) and the entropy of the flipped images' labels
are printed with the key trigger's rank among the never-published ones. A statistic that
is one fixed function of the answers, ranked among never-published triggers of the same
kind, is exact by exchangeability (docs/methods/ubw.md, the calibration).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import entropy

from cell_victims import prepared_cell, realistic_cell_arguments
from tracemark.methods.ubw.metrics import prediction_dispersibility
from tracemark.methods.ubw.verify import select_correct, triggered
from tracemark.oracle import TorchModuleOracle
from tracemark.stats import rank_p_value


def statistics(labels: np.ndarray, y: np.ndarray, k: int) -> dict[str, float]:
    flipped = labels != y
    spread = np.bincount(labels[flipped], minlength=k) if flipped.any() else np.ones(k)
    return {
        "flip rate": float(flipped.mean()),
        "D_p": prediction_dispersibility(labels, y, k),
        "entropy of flipped labels": float(entropy(spread)),
    }


def main() -> None:
    ap = realistic_cell_arguments(__doc__.split("\n")[0])
    ap.add_argument("--nulls", type=int, default=50)
    ap.add_argument("--m", type=int, default=100)
    a = ap.parse_args()
    _, p = prepared_cell("realistic", "ubw-p", a.recipe, a.seed, a.cache)
    key = next(mk.key for o, mk in zip(p.world.owners, p.world.marked, strict=True) if o.member)
    test, k = p.aux, p.num_classes
    for name, model in p.models.items():
        if model is None:
            continue
        oracle = TorchModuleOracle(model, num_classes=k)
        idx, _, _ = select_correct(oracle, key, test, a.m, None)
        images, y = test.images[idx], test.labels[idx]

        def stats(which, images=images, y=y, oracle=oracle):
            return statistics(oracle.query(triggered(key, images, which)).top1(), y, k)

        own = stats("key")
        named = {"control": stats("control"), "independent": stats("independent")}
        null = [stats(j) for j in range(a.nulls)]
        print(f"\n{a.recipe} seed {a.seed}, {name} model, m = {idx.size}")
        for s in own:
            values = np.array([n[s] for n in null])
            p_value = rank_p_value(own[s], values, "greater")
            print(
                f"  {s:26} key {own[s]:.3f}  control {named['control'][s]:.3f}  "
                f"independent {named['independent'][s]:.3f}  never-published "
                f"{np.median(values):.3f} (min {values.min():.3f}, max {values.max():.3f})  "
                f"key's rank p {p_value:.3f}"
            )


if __name__ == "__main__":
    main()
