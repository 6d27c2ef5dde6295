"""UBW-P's watermark metrics across victim training recipes and demo seeds.

    python bench/ubw_p_recipes.py                          # 3 recipes x 3 seeds, ~25 min
    python bench/ubw_p_recipes.py --recipes demo --seeds 7562772d64656d6f2d736565642d3031

For each (recipe, seed) it builds the UBW demo's training split for the recipe and the
UBW-P key from that seed, trains the demo's small CNN on the release, and prints BA,
ASR-A, ASR-C, D_p, D_s and D_c on the 10,000 test images, one JSON line each, then a
table. The default seed is the demo's, so its "demo" row is the demo's UBW-P victim.
"""

from __future__ import annotations

import argparse
import json
import time

from tracemark.demos.ubw import POISONED_LABEL_RECIPE, VictimRecipe

RECIPES = {  # name -> the victim's recipe ("2k": 2,000 training images, "4k": 4,000)
    "demo": POISONED_LABEL_RECIPE,  # 4k, 60 epochs, no augmentation, no weight decay
    "4k-noaug-40-wd0": VictimRecipe(per_class=400, epochs=40, augment=False, weight_decay=0.0),
    "3k-noaug-60-wd0": VictimRecipe(per_class=300, epochs=60, augment=False, weight_decay=0.0),
    "4k-noaug-40": VictimRecipe(per_class=400, epochs=40, augment=False),
    "2k-noaug-40-wd0": VictimRecipe(per_class=200, epochs=40, augment=False, weight_decay=0.0),
    "2k-noaug-40": VictimRecipe(per_class=200, epochs=40, augment=False),
    "2k-noaug-80": VictimRecipe(per_class=200, epochs=80, augment=False),
    "2k-aug-40": VictimRecipe(per_class=200, epochs=40, augment=True),
    "2k-aug-80": VictimRecipe(per_class=200, epochs=80, augment=True),
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
        "--recipes", default="demo,2k-noaug-40-wd0,2k-aug-40", help=f"from {', '.join(RECIPES)}"
    )
    ap.add_argument("--seeds", default=f"{DEMO_SEED},11111111,22222222")
    args = ap.parse_args()
    train, test = load_fashion_mnist(split="train"), load_fashion_mnist(split="test")
    rows = []
    for name in args.recipes.split(","):
        recipe = RECIPES[name]
        for seed in args.seeds.split(","):
            config = UbwDemoConfig(recipe=recipe, seed=seed)
            release, key = ubw.watermark(
                training_set(config, recipe, train), demo_key(config, "ubw-p", "ubw-p")
            )
            start = time.perf_counter()
            model = train_victim(config, recipe, "ubw-p", release)
            oracle = TorchModuleOracle(model, num_classes=10)
            metrics = ubw.report(lambda x, o=oracle: o.query(x).probs, key, test)
            row = {"recipe": name, "seed": seed, "train_s": round(time.perf_counter() - start, 1)}
            row |= {k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{'recipe':<16} {'seed':<34} {'BA':>6} {'ASR-A':>6} {'D_p':>6} {'D_s':>6}")
    for r in rows:
        print(
            f"{r['recipe']:<16} {r['seed']:<34} {r['BA']:>6.3f} {r['ASR-A']:>6.3f} "
            f"{r['D_p']:>6.3f} {r['D_s']:>6.3f}"
        )


if __name__ == "__main__":
    main()
