"""Small helpers shared by the tests."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from tracemark.rng import derive_bytes

# Changes every training seed and every random subset the suite draws (default 0: the
# seeds the suite was written with). scripts/seed-sweep.sh runs the training tests under
# several: an assertion that holds for one seed only is tuned to one model.
TEST_SEED = int(os.environ.get("TRACEMARK_TEST_SEED", "0"))


def seeded(default: str, purpose: str) -> str:
    """``default`` (a hex seed) under seed 0, else a seed derived from it and TEST_SEED."""
    if TEST_SEED == 0:
        return default
    return derive_bytes(default, f"tests/{purpose}", TEST_SEED)[: len(default) // 2].hex()


def demo_seed_args() -> list[str]:
    """``--seed`` for `tracemark demo` under a non-zero TEST_SEED (none under 0)."""
    return [] if TEST_SEED == 0 else ["--seed", str(TEST_SEED)]


def write_pngs(folder: Path, images: np.ndarray, prefix: str = "img") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images):
        Image.fromarray(np.round(x[..., 0] * 255).astype(np.uint8)).save(
            folder / f"{prefix}{i:04d}.png"
        )


def run_cli(args: list[str]) -> int:
    """Run the CLI in-process; returns its exit status."""
    from tracemark.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def live_processes(where: Callable[[list[str]], bool]) -> list[int]:
    """Live (not zombie) process ids whose /proc/PID/stat fields after "comm)" (state,
    ppid, pgrp, ...) satisfy ``where``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process just ended
        if fields[0] != "Z" and where(fields):
            pids.append(int(stat.parent.name))
    return pids


def tree_hashes(path: Path) -> dict[str, str]:
    """SHA-256 of every regular file under ``path`` (or of ``path`` itself), by relative
    path: compare two calls to show that a command changed nothing there."""
    path = Path(path)
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


SIZE_CHECKS: list[tuple[str, int, int, int, float]] = []  # printed by conftest at the end


def assert_at_level(p, alpha: float, name: str) -> None:
    """A size test: of n >= 500 null audits a valid test flags Binomial(n, <= alpha); more
    than the 0.999 quantile fails (1 run in 1,000 by bad luck). Records (name, n, flags,
    bound, power against 2 alpha) for the suite's closing summary."""
    from scipy.stats import binom

    p = np.asarray(p, dtype=np.float64)
    n = len(p)
    assert n >= 500, f"{name}: {n} trials cannot see a rate of 2 alpha"
    bound = int(binom.ppf(0.999, n, alpha))
    flags = int(np.sum(p <= alpha))
    power = float(binom.sf(bound, n, 2 * alpha))
    SIZE_CHECKS.append((name, n, flags, bound, power))
    assert flags <= bound, (name, flags, bound)


def assert_uniform_on_the_grid(p, draws: int) -> None:
    """A fixed rank test's p-values are uniform on {1, ..., draws + 1} / (draws + 1) under
    the null when scores do not tie: a chi-square test of the counts (rejects at 0.001)."""
    from scipy.stats import chisquare

    cells = np.rint(np.asarray(p) * (draws + 1)).astype(int)
    assert set(cells) <= set(range(1, draws + 2)), "p-values off the grid"
    counts = np.bincount(cells, minlength=draws + 2)[1:]
    assert chisquare(counts).pvalue > 0.001, counts


def render_in_chromium(page: Path, out: Path) -> tuple[str, np.ndarray]:
    """Render ``page`` in headless Chromium (Debian's `chromium`, which setup.sh
    installs): the DOM as the browser built it, and a screenshot as an RGB array."""
    import shutil
    import subprocess

    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is not installed: run bash scripts/setup.sh"
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--disable-dev-shm-usage",
             f"--user-data-dir={out.parent / 'chromium-profile'}"]  # fmt: skip
    url = page.resolve().as_uri()
    dom = subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    subprocess.run(
        [*flags, f"--screenshot={out}", "--window-size=1000,2400", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with Image.open(out) as im:
        return dom, np.asarray(im.convert("RGB"))


def assert_a_plot_is_drawn(shot: np.ndarray) -> None:
    """The screenshot holds a drawn plot, not a blank page: many pixels that are neither
    white nor text-black, in several colours (axes, bars, the owner's line)."""
    pixels = shot.reshape(-1, 3).astype(int)
    ink = pixels[(pixels.min(axis=1) < 235)]  # not white
    coloured = ink[(ink.max(axis=1) - ink.min(axis=1)) > 60]  # not grey or black
    assert len(ink) > 20_000, len(ink)
    assert len(coloured) > 500, len(coloured)
    assert len({tuple(c // 32) for c in coloured}) >= 3  # several distinct colours


def rechained(lines: list[str]) -> str:
    """Query-log lines with every record's "prev" recomputed: a forger who knows the format."""
    import hashlib
    import json

    out = [lines[0]]
    for line in lines[1:]:
        record = json.loads(line)
        record["prev"] = hashlib.sha256(out[-1].encode()).hexdigest()
        out.append(json.dumps(record))
    return "\n".join(out) + "\n"


def press_ctrl_c_twice(after: float) -> None:
    """From a daemon thread: SIGINT to the calling (main) thread after ``after`` seconds,
    then again 0.3 s later, as a user pressing Ctrl-C twice."""
    main = threading.get_ident()

    def press() -> None:
        time.sleep(after)
        for _ in range(2):
            signal.pthread_kill(main, signal.SIGINT)
            time.sleep(0.3)

    threading.Thread(target=press, daemon=True).start()
