"""--deepspeed_native: DeepSpeed's own checkpoint beside bigseer's, with its `latest` file, so DeepSpeed's
zero_to_fp32.py (which DeepSpeed copies into it) runs as its docs say, without guessing --tag; its weights
are the ones bigseer exports."""

from __future__ import annotations

import pytest
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from bigseer.config import PretrainConfig
from bigseer.engine import pretrain
from tests.distributed_utils import run_distributed

pytestmark = pytest.mark.slow  # an end-to-end job: not in the fast tier (-m 'not slow')


def _train(rank: int, world: int, out: str, ds: str) -> None:
    pretrain(PretrainConfig(model="regnety_test", crops="2x32+2x16", head_dims=(32,), embed_dim=16, num_prototypes=32,
                            batch_size=4, max_steps=2, ds_config=ds, deepspeed_native=True, output_dir=out))


def test_zero_to_fp32_runs_on_the_native_checkpoint_and_matches_the_export(tmp_path: Path) -> None:
    from bigseer.parallel.ds_json import load_ds_config

    ds = tmp_path / "z3.json"
    ds.write_text(json.dumps(dict(load_ds_config("zero3_fp32"), train_micro_batch_size_per_gpu=4)))
    run_distributed(_train, 2, args=(str(tmp_path / "run"), str(ds)), env={"DS_ACCELERATOR": "cpu"})
    native = tmp_path / "run" / "checkpoints" / "step_00000002" / "deepspeed"
    assert (native / "latest").read_text().strip() == "state"
    done = subprocess.run([sys.executable, str(native / "zero_to_fp32.py"), str(native), str(tmp_path / "fp32")],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, DS_ACCELERATOR="cpu"))
    assert done.returncode == 0, done.stderr[-2000:]
    files = list((tmp_path / "fp32").glob("*.safetensors")) or list((tmp_path / "fp32").glob("*.bin"))
    assert files, list((tmp_path / "fp32").iterdir())
    theirs: dict[str, torch.Tensor] = {}
    for f in files:
        theirs.update(load_file(str(f)) if f.suffix == ".safetensors" else torch.load(f, weights_only=False))
    ours = load_file(str(tmp_path / "run" / "export" / "model.safetensors"))
    params = {k: v for k, v in ours.items() if "running" not in k and "num_batches" not in k}
    assert params and all(torch.equal(theirs[f"trunk.{k}"], v) for k, v in params.items())
