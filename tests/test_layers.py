"""The checks of .ci/run, so the README's test command runs them too: import-linter holds the layers of
docs/ARCHITECTURE.md (no upward import, no import cycle, deepspeed/fairscale only in bigseer.parallel), ruff
lints the package, mypy type-checks the core packages. Their settings are pyproject.toml's [tool.importlinter],
[tool.ruff] and [tool.mypy]; each tool keeps a cache in the repository root, so a second run takes seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

CHECKS = {
    "import-linter": ["lint-imports"],
    "ruff": ["ruff", "check", "bigseer"],
    "mypy": ["mypy"],
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_check_passes(name: str) -> None:
    tool, *args = CHECKS[name]
    exe = BIN / tool
    assert exe.is_file(), f"{exe} is missing: scripts/bootstrap.sh installs the locked test tools"
    res = subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{name} failed ({' '.join([tool, *args])}):\n{res.stdout[-6000:]}{res.stderr[-3000:]}"
