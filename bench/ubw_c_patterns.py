"""Would a finer UBW-C pattern verify better? The calibrated verdict of a publisher whose
trigger a model learned, with the key's 3x3 pattern upscaled to the patch (key format 2,
the default) against a pattern drawn at the patch's full resolution (7x7 on Fashion-MNIST;
an alternative measured, not adopted).

The calibration ranks the key's trigger among never-published patterns drawn the same way,
so its power depends on how much more the model reacts to the key's pattern than to
others. There are 508 3x3 patterns and each has 9 one-pixel neighbours, about 2% of the
null draws, which a model that learned one might react to as much; a 7x7 pattern has no
such neighbours among the draws. Each model is tests/test_ubw_calibration.py's
publisher-alone model (20% of 3,000 images carry the trigger at random places, with random
labels; no benign patterns), trained once per key and pattern kind; a second key, which
never published, is verified on it too. The 7x7 draws replace make_trigger in the verifier
for the key's trigger and its null draws alike, so their rank test is exact too.

    python bench/ubw_c_patterns.py [--keys 5] [--alpha 0.01]   # ~4 min a model on 2 cores
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_ubw_calibration import SHAPE, load_data, poisoned_model, ubw_c_key
from tracemark.methods.ubw import key_trigger, verify
from tracemark.methods.ubw.triggers import Trigger

verify_module = importlib.import_module("tracemark.methods.ubw.verify")
PURPOSES = {
    "key": key_trigger.PURPOSE_PATCH_PATTERN,
    "independent": key_trigger.PURPOSE_INDEPENDENT,
}


def full_resolution(key, shape, which="key") -> Trigger:
    """A patch-sized 0/1 pattern drawn from the key (``which`` as make_trigger takes it)."""
    size = key_trigger.patch_size(key.typed_params(), *shape[:2])
    if isinstance(which, int):
        rng = key.rng(key_trigger.PURPOSE_NULL, which)
    else:
        rng = key.rng(PURPOSES.get(which, key_trigger.PURPOSE_CONTROL))
    while True:
        p = rng.integers(0, 2, size=(size, size)).astype(np.float32)
        if 0 < p.sum() < p.size:
            return Trigger("patch", p, placement="random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=5, help="publishers per pattern kind")
    parser.add_argument("--alpha", type=float, default=0.01)
    args = parser.parse_args()
    data = load_data()
    test = data[1]
    kinds = {"3x3 upscaled (format 2)": key_trigger.make_trigger, "7x7": full_resolution}
    print(f"alpha = {args.alpha}; cap {round(10 / args.alpha)} never-published patterns\n")
    print(
        "| pattern | key | publisher p | ΔP key | mean ΔP nulls | nulls read | never-published p |"
    )
    print("|---|---|---|---|---|---|---|")
    rows: dict[str, list[float]] = {k: [] for k in kinds}
    for kind, maker in kinds.items():
        verify_module.make_trigger = maker  # the verdict's own trigger and its null draws
        for i in range(args.keys):
            key, never = ubw_c_key("pattern-probe", i), ubw_c_key("pattern-probe-never", i)
            trigger = maker(key, SHAPE)
            model = poisoned_model(data, lambda j, t=trigger: t)
            v = verify(model, key, test, alpha=args.alpha)
            n = verify(model, never, test, alpha=args.alpha)
            st = v.statistics
            rows[kind].append(v.p_value)
            print(
                f"| {kind} | {i} | {v.p_value:.4g} | {v.effect:.3f} | "
                f"{st['null_statistic_mean']:.3f} | {st['null_triggers_used']} | {n.p_value:.3g} |",
                flush=True,
            )
    verify_module.make_trigger = key_trigger.make_trigger
    print()
    for kind, ps in rows.items():
        p = np.array(ps)
        print(f"{kind}: {(p <= args.alpha).sum()}/{len(p)} verified, median p {np.median(p):.3g}")


if __name__ == "__main__":
    main()
