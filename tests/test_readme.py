"""The README's task sections run as written: every ```bash block whose first line is `# tested` is executed
line by line, in order, in a scratch folder (the commands use relative paths), with the venv's commands
first on PATH. A README that drifts from the code fails here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # an end-to-end job: not in the fast tier (-m 'not slow')

REPO = Path(__file__).resolve().parents[1]


def tested_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    out = []
    for block in blocks:
        lines = block.splitlines()
        if lines and lines[0].strip() == "# tested":
            out += [ln for ln in lines[1:] if ln.strip() and not ln.lstrip().startswith("#")]
    return out


def test_readme_has_tested_sections_for_every_task() -> None:
    cmds = tested_commands()
    for word in ("bigseer pretrain", "--resume auto", "bigseer shard", "bigseer index", "bigseer export",
                 "bigseer eval", "bigseer submit", "local-dir:", "pipeline("):
        assert any(word in c for c in cmds), word


def test_readme_commands_run_as_written(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DS_ACCELERATOR="cpu",
               PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    for cmd in tested_commands():
        done = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode:
            pytest.fail(f"README command failed ({done.returncode}): {cmd}\n{done.stderr[-3000:]}")
    assert (tmp_path / "runs" / "readme" / "checkpoints" / "latest").read_text().strip() == "step_00000009"
