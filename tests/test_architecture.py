"""The package's shape: no import cycles, light imports stay light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_import_cycles():
    run = subprocess.run(
        [sys.executable, ROOT / "scripts" / "import_cycles.py"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout
    assert run.stdout.strip().endswith("modules") and run.stdout.startswith("0 import cycle")


def _loaded_after(statement: str, modules: tuple[str, ...]) -> dict[str, bool]:
    code = f"import sys; {statement}; print(*[m in sys.modules for m in {modules!r}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return dict(zip(modules, (v == "True" for v in out.stdout.split()), strict=True))


def test_light_imports_stay_light():
    assert _loaded_after("import tracemark.stats", ("PIL", "pydantic", "torch")) == {
        "PIL": False,
        "pydantic": False,
        "torch": False,
    }
    assert not _loaded_after("import tracemark", ("torch",))["torch"]
    # The entry points still import on first use.
    loaded = _loaded_after("import tracemark; tracemark.mark_folder", ("tracemark.api", "torch"))
    assert loaded == {"tracemark.api": True, "torch": False}
