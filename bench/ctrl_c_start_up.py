"""Ctrl-C in the first seconds of `tracemark audit`, many times: does it always end quietly?

    python bench/ctrl_c_start_up.py [--runs 200] [--from 1.0] [--to 2.2]

Builds a 20-image Fashion-MNIST owner (key, marks, 4 published) and an untrained model
in a temporary folder, then runs `tracemark audit` as a subprocess again and again and
sends SIGINT after a random delay in [--from, --to] seconds: the span in which the
command line imports torch to load the model. A run is good when it exits 130 (or by
SIGINT) or 0 with no traceback; anything else (SIGABRT: rc -6) is printed with its
stderr. Prints a summary line. Measured (docs/safety.md): 2 of 320 runs aborted before
0.6.1, 0 of 200 since.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from tracemark.datasets import load_fashion_mnist
from tracemark.models import build_model
from tracemark.training import save_checkpoint


def _owner(root: Path, console: Path) -> list[str]:
    """The audit's arguments for a small owner built under ``root``."""
    photos = root / "photos"
    photos.mkdir()
    for i, x in enumerate(load_fashion_mnist(split="test").images[:20]):
        Image.fromarray(np.round(x[..., 0] * 255).astype(np.uint8)).save(photos / f"{i:02d}.png")
    save_checkpoint(build_model("small-cnn", num_classes=10, width=8), root / "model.pt")
    key, pub = root / "me.key", root / "pub"
    subprocess.run([console, "keygen", "--out", key], check=True, capture_output=True)
    subprocess.run(
        [console, "mark", key, photos, pub, "--publish", "4"], check=True, capture_output=True
    )
    return [
        "audit", str(key), str(root / "model.pt"), "--marked", str(pub),
        "--originals", str(photos), "--n-pseudo", "9", "--alpha", "0.2", "--quiet",
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--from", dest="lo", type=float, default=1.0)
    ap.add_argument("--to", dest="hi", type=float, default=2.2)
    args = ap.parse_args()
    console = Path(sys.executable).with_name("tracemark")
    rng = random.Random(0)  # the delays only
    bad = 0
    with tempfile.TemporaryDirectory(prefix="tracemark-ctrl-c-") as tmp:
        audit = _owner(Path(tmp), console)
        for _ in range(args.runs):
            delay = rng.uniform(args.lo, args.hi)
            proc = subprocess.Popen(
                [console, *audit],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                # a background job inherits SIGINT ignored: give it Python's default back
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
            try:
                proc.communicate(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
            quiet = "Traceback" not in err and "Fatal Python error" not in err
            if not (quiet and proc.returncode in (0, 130, -signal.SIGINT)):
                bad += 1
                print(f"delay {delay:.2f} s: exit {proc.returncode}\n{err[-3000:]}", flush=True)
    print(f"{bad} of {args.runs} runs did not end quietly (SIGINT {args.lo}-{args.hi} s in)")


if __name__ == "__main__":
    main()
