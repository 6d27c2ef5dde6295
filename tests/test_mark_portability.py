"""Marks made on another kind of CPU pass the audit's check of the published files.

The tracker's noise is a float64 BLAS product. OpenBLAS kernels with fused multiply-add
(Haswell, SkylakeX, Zen, ...) all give the same marks; those without (Sandybridge,
Prescott) differ in one pixel of about 0.4% of images (bench/mark_portability.py). The
check accepts up to two such pixels per file, each within one flip of the noise's sign,
and nothing more. The two kernels are forced in child processes (``OPENBLAS_CORETYPE``),
so the test means the same on every x86-64 machine with AVX2 and FMA.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tracemark.errors import TracemarkError
from tracemark.keys import Key, load_key
from tracemark.methods.tracker.inputs import check_marks


def _has_fma() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return platform.machine() == "x86_64" and " avx2" in flags and " fma" in flags


pytestmark = pytest.mark.skipif(
    not _has_fma(), reason="forces OpenBLAS's x86-64 Haswell kernel: needs AVX2 and FMA"
)

# A key and two crops whose marks differ between the two kernels, found by marking 256
# crops of skimage's astronaut under 40 keys ("flip-33": crops 121 and 201, one pixel each).
SEED = hashlib.sha256(b"flip-33").hexdigest()
CROPS = [*range(118, 126), *range(198, 204)]  # 14 images, two of them the ones that differ


def _child(code: str, core: str, *args: object) -> str:
    env = {**os.environ, "OPENBLAS_CORETYPE": core}
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


CHECK = (
    "import json, sys\n"
    "from tracemark.keys import load_key\n"
    "from tracemark.methods.tracker.inputs import check_marks\n"
    "print(json.dumps(check_marks(load_key(sys.argv[1]), sys.argv[2], sys.argv[3], None)))\n"
)


@pytest.fixture(scope="module")
def marked_on_fma(tmp_path_factory):
    """Crops of a real photo, marked by the CLI under the Haswell (FMA) kernel."""
    import skimage.data

    root = tmp_path_factory.mktemp("portable")
    photo = skimage.data.astronaut()
    (root / "photos").mkdir()
    for i in CROPS:
        y, x = (i // 16) * 32, (i % 16) * 32
        Image.fromarray(photo[y : y + 32, x : x + 32]).save(root / "photos" / f"crop{i:03d}.png")
    Key(method="tracker", seed=SEED).save(root / "k.key")
    mark = "from tracemark.cli import main; import sys; main(sys.argv[1:])"
    _child(mark, "Haswell", "mark", root / "k.key", root / "photos", root / "pub", "--quiet")
    return root


def test_marks_from_a_cpu_with_fma_pass_the_check_on_one_without(marked_on_fma):
    root = marked_on_fma
    args = (root / "k.key", root / "photos", root / "pub")
    assert json.loads(_child(CHECK, "Haswell", *args)) == [len(CROPS), 0]
    # Regenerated without FMA, crops 121 and 201 differ in one pixel each: accepted.
    assert json.loads(_child(CHECK, "Sandybridge", *args)) == [len(CROPS), 2]


def _edit(pub: Path, name: str, pixels: list[tuple[int, int]], levels: int) -> None:
    path = pub / name
    x = np.asarray(Image.open(path)).astype(np.int64)
    for y, col in pixels:
        x[y, col] = np.clip(x[y, col] + levels, 0, 255)
    Image.fromarray(x.astype(np.uint8)).save(path)


@pytest.mark.parametrize(
    "pixels, levels, accepted",
    [
        ([(3, 4), (20, 9)], 11, True),  # two pixels, each within a flip (11.2 levels at r 0.7)
        ([(3, 4), (20, 9), (30, 30)], 11, False),  # three: more than a CPU's flips
        ([(5, 5)], 40, False),  # one, but further than any flip
    ],
)
def test_only_pixels_a_flip_explains_are_accepted(
    marked_on_fma, tmp_path, pixels, levels, accepted
):
    pub = tmp_path / "pub"
    shutil.copytree(marked_on_fma / "pub", pub)
    key = load_key(marked_on_fma / "k.key")
    before = check_marks(key, marked_on_fma / "photos", pub, None)[1]  # 0, or 2 without FMA
    _edit(pub, "crop119.png", pixels, levels)
    if accepted:
        assert check_marks(key, marked_on_fma / "photos", pub, None) == (len(CROPS), before + 2)
    else:
        with pytest.raises(TracemarkError, match=r"do not carry this key's mark.*crop119\.png"):
            check_marks(key, marked_on_fma / "photos", pub, None)
