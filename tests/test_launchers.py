"""The entry points users type, on 2 CPU ranks: the deepspeed launcher with SEER's fp16 ZeRO-2 config
(falls back to bf16 on CPU with one warning line) and torchrun with FSDP2."""

from __future__ import annotations

import pytest
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # an end-to-end job: not in the fast tier (-m 'not slow')

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = ["--model", "regnety_test", "--crops", "2x32+2x16", "--head_dims", "32", "--embed_dim", "16",
         "--num_prototypes", "32", "--max_steps", "3"]


def _run(cmd: list[str], out: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run(cmd + SMALL + ["--output_dir", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert "stem.conv.weight" in load_file(out / "export" / "model.safetensors")
    return done


def test_deepspeed_launcher_zero2_fp16_falls_back_on_cpu(tmp_path: Path) -> None:
    from bigseer.distributed import free_port  # not the launcher's default 29500: the machine may run other jobs

    done = _run([str(BIN / "deepspeed"), "--master_port", str(free_port()), "--num_gpus", "2", "examples/pretrain.py",
                 "--deepspeed_config", "ds_configs/zero2.json"], tmp_path)
    log = done.stderr + done.stdout
    assert "backend deepspeed, 2 rank(s), precision bf16, global batch 32" in log  # micro batch 16 from the JSON
    assert "RuntimeWarning: bigseer: DeepSpeed fp16 is not supported on this cpu device" in log
    assert (tmp_path / "checkpoints" / "step_00000003" / "state" / ".metadata").is_file()  # the elastic format


def test_torchrun_fsdp(tmp_path: Path) -> None:
    done = _run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "examples/pretrain.py",
                 "--backend", "fsdp", "--batch_size", "4", "--syncbn_group_size", "-1"], tmp_path)
    assert "backend fsdp, 2 rank(s), precision fp32, global batch 8" in done.stderr
    assert (tmp_path / "checkpoints" / "step_00000003" / "state" / ".metadata").is_file()
