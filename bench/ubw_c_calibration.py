"""UBW-C's verification with and without its calibration, on the models of
tests/test_ubw_calibration.py: one trained on random patches (it reacts to any patch, and
never saw the audited keys), one trained on a publisher's release.

Prints, per never-published key, the margin test's p-value alone (UBW-C's default before
0.7.0) and the calibrated verdict's (the default since), the same for keys of format 1
(the paper's public pattern), and the publisher's verdict.

    python bench/ubw_c_calibration.py [--never 20] [--alpha 0.05]   # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_ubw_calibration import any_patch, load_data, publisher, ubw_c_key
from tracemark.keys import Key
from tracemark.methods.ubw import verify


def row(name: str, verdicts: list, alpha: float) -> str:
    margin = np.array([v.statistics["margin_test_p_value"] for v in verdicts])
    p = np.array([v.p_value for v in verdicts])
    effect = np.mean([v.effect for v in verdicts])
    null_mean = np.mean([v.statistics["null_statistic_mean"] for v in verdicts])
    queries = np.mean([v.queries for v in verdicts])
    return (
        f"| {name} | {len(p)} | {effect:.3f} | {null_mean:.3f} | {(margin <= alpha).sum()} | "
        f"{(p <= alpha).sum()} | {np.median(p):.3f} | {queries:,.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--never", type=int, default=20, help="never-published keys")
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()
    data = load_data()
    test = data[1]
    model = any_patch(data)
    keys = [ubw_c_key("never", i) for i in range(args.never)]
    drawn = [verify(model, k, test, alpha=args.alpha) for k in keys]
    public = [
        verify(
            model,
            Key(method="ubw", seed=k.seed, params=k.params, version=1),
            test,
            alpha=args.alpha,
        )
        for k in keys
    ]
    print(f"alpha = {args.alpha}; model trained on random patches (never saw these keys)\n")
    print(
        "| keys | audits | mean ΔP (key) | mean ΔP (null patches) | margin test alone flags "
        "| calibrated flags | median calibrated p | mean queries |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(row("format 2 (pattern drawn from the key)", drawn, args.alpha))
    print(row("format 1 (the paper's public pattern)", public, args.alpha))
    owner = verify(publisher(data), ubw_c_key("publisher"), test, alpha=args.alpha)
    st = owner.statistics
    print(
        f"\npublisher on its own release's model: p = {owner.p_value:.4g} (margin "
        f"{st['margin_test_p_value']:.3g}, calibrated {st['calibrated_p_value']:.4g}), ΔP "
        f"{owner.effect:.3f} against never-published {st['null_statistic_mean']:.3f} (max "
        f"{st['null_statistic_max']:.3f}), {owner.queries:,} queries"
    )


if __name__ == "__main__":
    main()
