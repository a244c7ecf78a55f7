"""requirements.lock pins what bootstrap installs, and is refused once pyproject.toml outgrows it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root / "scripts" / "lock_check.py")], capture_output=True, text=True)


def _copy(tmp: Path) -> Path:
    (tmp / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "lock_check.py", tmp / "scripts")
    shutil.copy(REPO / "pyproject.toml", tmp)
    shutil.copy(REPO / "requirements.lock", tmp)
    return tmp


def test_lock_matches_pyproject_and_pins_every_package() -> None:
    assert _check(REPO).returncode == 0
    lines = [ln for ln in (REPO / "requirements.lock").read_text().splitlines() if ln and not ln.startswith("#")]
    assert all("==" in ln for ln in lines), [ln for ln in lines if "==" not in ln]
    names = {ln.split("==")[0].lower() for ln in lines}
    assert {"torch", "torchvision", "deepspeed", "timm", "omegaconf", "submitit", "pytest"} <= names
    assert "torch==2.14.1" in lines and "torchvision==0.29.1" in lines


def test_changed_dependencies_make_bootstrap_refuse_the_lock(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    text = (root / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(text.replace('"tqdm",', '"tqdm",\n    "rich",'))
    done = _check(root)
    assert done.returncode == 1 and "bash scripts/lock.sh" in done.stderr
    (root / "requirements.lock").unlink()
    assert "missing" in _check(root).stderr
