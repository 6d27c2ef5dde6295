"""What each victim learned of the marks: the members' effect sizes in a results store.

    python bench/member_effects.py results/realistic-0.3.db            # seconds, no model
    python bench/member_effects.py results/realistic-0.3.db --access label

Every audit stores its effect: for the tracker, how far the owner's mean loss lies below
the pseudo-users' in their standard deviations; for isotope, how far the mark's shift
lies above the external marks'. An exact test flags an owner only when few null draws
reach it, so the members' effects against the smallest flagged one show why a cell
detects what it does: a victim that learned its members' marks by less than that spread
cannot be caught at alpha by any audit of the same answers. Printed per cell (method,
recipe, seed) for the marked victim: members flagged, their effects (flagged ones
starred), the smallest flagged and largest unflagged member effect, and the
never-published owners' mean and largest effect.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from tracemark.evaluate.store import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("db", type=Path)
    ap.add_argument("--access", default="probabilities")
    ap.add_argument("--method", action="append", help="only these methods (repeatable)")
    a = ap.parse_args()
    with Store(a.db, read_only=True) as store:
        cells = {c["cell_id"]: c for c in store.cells() if c["countermeasure"] == "none"}
        groups: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
        for row in store.audits():
            cell = cells.get(row["cell_id"])
            if cell is None or row["model"] != "marked" or row["access"] != a.access:
                continue
            if a.method and cell["method_name"] not in a.method:
                continue
            name = f"{cell['method_name']} / {cell['recipe']} / seed {cell['seed']}"
            groups[name][row["member"]].append((row["effect"], bool(row["decision"])))
    print(f"{a.db}, marked victims, {a.access}: effects (flagged members starred)")
    for name in sorted(groups):
        members, never = groups[name][1], groups[name][0]
        flagged = [e for e, d in members if d]
        missed = [e for e, d in members if not d]
        shown = " ".join(f"{e:.2f}{'*' if d else ''}" for e, d in sorted(members, reverse=True))
        never_effects = np.array([e for e, _ in never]) if never else np.zeros(1)
        print(
            f"{name:34} members {len(flagged)}/{len(members)}: {shown}\n"
            f"{'':34} smallest flagged {min(flagged, default=float('nan')):.2f}, "
            f"largest missed {max(missed, default=float('nan')):.2f}; never published "
            f"(n = {len(never)}) mean {never_effects.mean():.2f}, largest {never_effects.max():.2f}"
        )


if __name__ == "__main__":
    main()
