"""Ctrl-C in the middle of an HTTP audit, many times: does the server answer exactly what
the query log holds?

    python bench/sigint_resume.py [--runs 20]

Serves an untrained small CNN with `tracemark serve` semantics (0.3 s latency per request,
access log of every image answered), runs `tracemark audit --query-log` against it as a
subprocess, sends SIGINT after a random number of logged batches (5 to 40), and compares
the server's access log with the query log. Prints one line per run and a summary. No
training: the model's answers do not matter here, only the traffic.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tracemark.datasets import load_fashion_mnist
from tracemark.keys import Key
from tracemark.models import build_model
from tracemark.serve import FaultPlan, ServeOptions, create_app, serving
from tracemark.training import export_torchscript


def complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tracemark-sigint-"))
    test = load_fashion_mnist(split="test")
    export_torchscript(build_model("small-cnn", in_channels=1, num_classes=10, seed=1),
                       root / "m.pt", example=test.images[:2])  # fmt: skip
    Key(method="tracker", params={"compress": False}, seed="ab" * 32).save(root / "k.json")
    originals = root / "originals"
    originals.mkdir()
    for i, x in enumerate(test.images[test.labels == 3][:90]):
        Image.fromarray(np.round(x[..., 0] * 255).astype(np.uint8)).save(originals / f"{i}.png")
    tm = [sys.executable, "-m", "tracemark"]
    subprocess.run([*tm, "mark", root / "k.json", originals, root / "published", "--publish",
                    "30", "--quiet"], check=True, capture_output=True)  # fmt: skip
    rng, bad = random.Random(0), 0
    for run in range(args.runs):
        access, log = root / f"served-{run}.jsonl", root / f"queries-{run}.jsonl"
        app = create_app(root / "m.pt", ServeOptions(faults=FaultPlan(latency=0.3)),
                         access_log=access)  # fmt: skip
        with serving(app) as url:
            audit = ["audit", root / "k.json", f"{url}/v2/models/model", "--marked",
                     root / "published", "--originals", originals, "--label", "3",
                     "--n-pseudo", "100", "--json", "--quiet", "--query-log", log,
                     "--concurrency", "2"]  # fmt: skip
            proc = subprocess.Popen(
                [*tm, *map(str, audit)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )  # fmt: skip
            target = 1 + rng.randint(5, 40) * 64
            while complete_lines(log) < target and proc.poll() is None:
                time.sleep(0.02)
            pressed = time.monotonic()
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=120)
            stopped = time.monotonic() - pressed
        served = len(access.read_text().splitlines())
        lines = [json.loads(x) for x in log.read_text().splitlines()[1:]]
        logged, distinct = len(lines), len({x["sha256"] for x in lines})
        ok = proc.returncode == 130 and served == logged == distinct
        bad += not ok
        print(f"run {run}: exit {proc.returncode}, served {served}, logged {logged} "
              f"({distinct} distinct), stopped {stopped:.1f} s after Ctrl-C: "
              f"{'ok' if ok else 'INCONSISTENT'}", flush=True)  # fmt: skip
    print(f"{args.runs - bad} of {args.runs} runs consistent (exit 130, served = logged)")


if __name__ == "__main__":
    main()
