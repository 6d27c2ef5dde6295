"""The evaluation harness's own promises, measured: resume after SIGINT or a kill, and its
overhead beside training and queries.

    python bench/harness.py                 # a 6-cell spec, about 5 minutes on 2 cores
    python bench/harness.py --kill          # SIGKILL instead of SIGINT

1. Runs the spec uninterrupted into one store (in-process), timing every phase.
2. Runs it again into a second store in a child process (`tracemark evaluate`), sends
   SIGINT (or SIGKILL) once half the cells are stored, then re-runs the same command.
3. Prints how many cells the re-run computed, whether the two stores hold the same rows
   (timings aside), and the harness's share of the uninterrupted run's wall time.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """
name = "bench-harness"
seeds = [0, 1]
alpha = 0.05
accesses = ["probabilities", "label"]

[dataset]
owner_images = 4000
test_images = 1000
aux_images = 300

[recipes.small]
images = 1500
epochs = 8
batch_size = 64

[methods.tracker]
method = "tracker"
members = 3
never_published = 6
images_per_user = 20
collection = 60
params = { compress = false }
options = { n_pseudo = 39 }

[methods.isotope]
method = "isotope"
members = 2
never_published = 4
images_per_user = 60
classes = [3, 6]
params = { fraction = 0.5, visibility = 0.6 }
options = { externals = 39, aux_per_mark = 60 }

[methods.ubw]
method = "ubw"
members = 1
never_published = 6
options = { m = 50 }
never_options = { trigger = "independent" }
"""


def stored_cells(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kill", action="store_true", help="SIGKILL instead of SIGINT")
    args = ap.parse_args()
    from tracemark.evaluate import cells_of, evaluate, open_store
    from tracemark.evaluate.spec import load_spec

    tmp = Path(tempfile.mkdtemp(prefix="tracemark-harness-bench-"))
    spec_path = tmp / "spec.toml"
    spec_path.write_text(SPEC)
    spec = load_spec(spec_path)
    total = len(cells_of(spec))

    start = time.perf_counter()
    whole = evaluate(spec, tmp / "whole.db", cache=tmp / "cache-whole")
    wall = time.perf_counter() - start
    phases = {k: round(v, 1) for k, v in whole.phases.items()}
    print(
        json.dumps(
            {
                "uninterrupted": {
                    "cells": whole.computed,
                    "seconds": round(wall, 1),
                    "phases": phases,
                    "overhead": whole.overhead,
                }
            }
        )
    )

    db = tmp / "resumed.db"
    command = [
        sys.executable,
        "-m",
        "tracemark",
        "evaluate",
        str(spec_path),
        "--db",
        str(db),
        "--cache",
        str(tmp / "cache-resumed"),
        "--quiet",
    ]
    # A shell's background job inherits SIGINT ignored, and Python then keeps ignoring it:
    # give the child the default disposition, so that it gets the KeyboardInterrupt Ctrl-C
    # would give it.
    child = subprocess.Popen(
        command,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    while stored_cells(db) < total // 2 and child.poll() is None:
        time.sleep(0.2)
    if child.poll() is not None:
        raise SystemExit(f"the run ended (status {child.returncode}) before it was interrupted")
    child.send_signal(signal.SIGKILL if args.kill else signal.SIGINT)
    status = child.wait()
    before = stored_cells(db)
    if before == total:
        raise SystemExit("every cell was stored before the interrupt took effect")
    rerun = subprocess.run(command, capture_output=True, text=True, check=True)
    with open_store(db) as a, open_store(tmp / "whole.db") as b:
        same = sorted(a.rows()) == sorted(b.rows())
        runs = a.runs()
    print(
        json.dumps(
            {
                "interrupted_with": "SIGKILL" if args.kill else "SIGINT",
                "exit_status": status,
                "cells": total,
                "stored_before_rerun": before,
                "computed_by_rerun": runs[-1]["computed"],
                "rows_identical_to_uninterrupted": same,
                "rerun_stderr_tail": rerun.stderr.strip().splitlines()[-1:],
            }
        )
    )
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
