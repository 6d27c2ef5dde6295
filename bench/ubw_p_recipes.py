"""UBW-P's watermark metrics across victim training recipes and demo seeds.

    python bench/ubw_p_recipes.py                          # 3 recipes x 3 seeds, ~20 min
    python bench/ubw_p_recipes.py --recipes aug-40 --seeds 7562772d64656d6f2d736565642d3031

For each (recipe, seed) it builds the UBW demo's 2,000-image training split and UBW-P key
from that seed, trains the demo's small CNN on the release, and prints BA, ASR-A, ASR-C,
D_p, D_s and D_c on the 10,000 test images, one JSON line each, then a table. The
default seed is the demo's, so its aug-40 row is the demo's UBW-P victim.
"""

from __future__ import annotations

import argparse
import json
import time

RECIPES = {  # name -> (epochs, random shift and flip)
    "aug-40": (40, True),
    "aug-80": (80, True),
    "noaug-40": (40, False),
    "noaug-80": (80, False),
}


def main() -> None:
    from tracemark.datasets import load_fashion_mnist
    from tracemark.demos.ubw import (
        DEMO_SEED,
        UbwDemoConfig,
        demo_key,
        train_victim,
        training_set,
    )
    from tracemark.methods import ubw
    from tracemark.oracle import TorchModuleOracle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--recipes", default="aug-40,noaug-40,aug-80", help=f"from {', '.join(RECIPES)}"
    )
    ap.add_argument("--seeds", default=f"{DEMO_SEED},11111111,22222222")
    ap.add_argument("--per-class", type=int, default=200)
    args = ap.parse_args()
    train, test = load_fashion_mnist(split="train"), load_fashion_mnist(split="test")
    rows = []
    for recipe in args.recipes.split(","):
        epochs, augment = RECIPES[recipe]
        for seed in args.seeds.split(","):
            config = UbwDemoConfig(
                per_class=args.per_class, epochs=epochs, augment=augment, seed=seed
            )
            release, key = ubw.watermark(
                training_set(config, train), demo_key(config, "ubw-p", "ubw-p")
            )
            start = time.perf_counter()
            model = train_victim(config, "ubw-p", release)
            oracle = TorchModuleOracle(model, num_classes=10)
            metrics = ubw.report(lambda x, o=oracle: o.query(x).probs, key, test)
            row = {"recipe": recipe, "seed": seed, "train_s": round(time.perf_counter() - start, 1)}
            row |= {k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{'recipe':<9} {'seed':<34} {'BA':>6} {'ASR-A':>6} {'D_p':>6} {'D_s':>6}")
    for r in rows:
        print(
            f"{r['recipe']:<9} {r['seed']:<34} {r['BA']:>6.3f} {r['ASR-A']:>6.3f} "
            f"{r['D_p']:>6.3f} {r['D_s']:>6.3f}"
        )


if __name__ == "__main__":
    main()
