"""End-to-end pretraining: one process, exact resume, kill -9 at a random moment, export of the result.

Resumes are bitwise claims (one process, same kernels): the losses and the whole final checkpoint (weights,
BN buffers, LARS momentum, queue, trainer state, RNG; tests/state_compare.py) equal the uninterrupted run's."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bigseer.config import PretrainConfig
from bigseer.engine import pretrain
from tests.state_compare import assert_same_state, load_export, load_state, step_dir

pytestmark = pytest.mark.numerics  # re-run by .ci/run under another kernel dispatch

REPO = Path(__file__).resolve().parents[1]

TINY = dict(model="regnety_test", crops="2x32+2x16", batch_size=8, head_dims=(32,), embed_dim=16,
            num_prototypes=32, max_steps=10, warmup_steps=2, checkpoint_every=2, keep_last=2, seed=3)


def _losses(run_dir: Path) -> dict[int, float]:
    """Per-step loss from metrics.jsonl; a step logged twice (before a crash and after resume) keeps the last."""
    out: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["loss"]
    return out


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    out = tmp_path_factory.mktemp("ref")
    result = pretrain(PretrainConfig(**TINY, output_dir=str(out)))
    return out, result.losses


def test_run_writes_checkpoint_curves_and_loadable_export(reference_run: tuple[Path, list[float]]) -> None:
    out, losses = reference_run
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000010"
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000008", "step_00000010"]
    assert (out / "curves.png").stat().st_size > 0
    assert list((out / "tensorboard").glob("events.*"))
    from bigseer import load_pretrained

    from bigseer.export.readers import open_training_checkpoint

    trunk = load_pretrained(out / "export" / "model.safetensors")
    source, _, meta = open_training_checkpoint(out / "checkpoints" / "step_00000010")
    assert meta["format"] == "elastic"
    for k, v in trunk.state_dict().items():
        assert torch.equal(v, source.get(f"trunk.{k}")), k


def test_resume_continues_bitwise(reference_run: tuple[Path, list[float]], tmp_path: Path) -> None:
    """Resumed in this process from step 8: losses, final checkpoint (RNG included: same process) and export
    equal the uninterrupted run's, bitwise."""
    ref_dir, ref_losses = reference_run
    (tmp_path / "checkpoints").mkdir()
    shutil.copytree(ref_dir / "checkpoints" / "step_00000008", tmp_path / "checkpoints" / "step_00000008")
    (tmp_path / "checkpoints" / "latest").write_text("step_00000008\n")
    result = pretrain(PretrainConfig(**TINY, output_dir=str(tmp_path), resume=True))
    assert result.losses == ref_losses[8:]  # bitwise: same data position, RNG, optimizer state
    assert_same_state(load_state(tmp_path, 10), load_state(ref_dir, 10), "resume in-process")
    assert_same_state(load_export(tmp_path / "export"), load_export(ref_dir / "export"), "export")


def test_resume_refuses_other_model(reference_run: tuple[Path, list[float]], tmp_path: Path) -> None:
    from bigseer.errors import CheckpointError

    shutil.copytree(reference_run[0] / "checkpoints", tmp_path / "checkpoints")
    cfg = dict(TINY, model="regnety_tiny")
    with pytest.raises(CheckpointError, match="it trains model='regnety_test', this run asks model='regnety_tiny'"):
        pretrain(PretrainConfig(**cfg, output_dir=str(tmp_path), resume=True, export=False))


def _cli_args(out: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "bigseer", "pretrain", "--output_dir", str(out), "--no_export"]
    for k, v in TINY.items():
        args += [f"--{k}", ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    return args + list(extra)


@pytest.mark.slow
def test_kill_9_at_random_moment_then_resume_matches(reference_run: tuple[Path, list[float]],
                                                       tmp_path: Path) -> None:
    _, ref_losses = reference_run
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = random.Random()
    for attempt in range(4):  # retry (shorter delay) if the run finished before the kill landed
        run_dir = tmp_path / f"attempt{attempt}"
        proc = subprocess.Popen(_cli_args(run_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        latest = run_dir / "checkpoints" / "latest"
        deadline = time.time() + 120
        while not latest.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4) / (attempt + 1))  # after the first commit, possibly mid-write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # the final checkpoint must be the resumed run's own (a committed step dir is never replaced)
        if proc.returncode == -signal.SIGKILL and latest.read_text().strip() != "step_00000010" \
                and not step_dir(run_dir, 10).exists():
            break
    else:
        pytest.fail("the training subprocess always finished before it could be killed")
    done = subprocess.run(_cli_args(run_dir, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stderr
    losses = _losses(run_dir)
    assert [losses[s] for s in range(1, 11)] == ref_losses
    assert_same_state(load_state(run_dir, 10), load_state(reference_run[0], 10), "kill -9 + resume",
                      other_process=True, differ={"meta/config/export": "this run is started with --no_export"})


def test_corrupt_files_are_skipped_counted_and_logged(tmp_path: Path) -> None:
    from PIL import Image

    data = tmp_path / "images"
    data.mkdir()
    for i in range(6):
        Image.new("RGB", (48 + 8 * i, 40), (40 * i, 255 - 30 * i, 90)).save(data / f"ok{i}.png")
    (data / "empty.jpg").write_bytes(b"")
    (data / "notes.png").write_text("not an image at all\n" * 20)
    good = (data / "ok0.png").read_bytes()
    (data / "cut.png").write_bytes(good[: len(good) // 2])
    cfg = dict(TINY, max_steps=2, warmup_steps=0, checkpoint_every=0, data=str(data), batch_size=8)
    result = pretrain(PretrainConfig(**cfg, output_dir=str(tmp_path / "run"), export=False))
    assert len(result.losses) == 2
    assert result.skipped.get("empty") and result.skipped.get("not_image")
    assert sum(result.skipped.values()) >= 3  # all three bad files met in the first pass (9 files, 16 samples)
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["skipped"] == result.skipped and len(last["peak_mem_mb_per_rank"]) == 1


def test_non_finite_loss_stops_cleanly_and_keeps_last_checkpoint(tmp_path: Path, monkeypatch) -> None:
    from bigseer import checkpoint as ckpt
    from bigseer.ssl import SwAVModel

    real_forward = SwAVModel.forward
    calls = {"n": 0}

    def forward(self, crops):  # finite for 2 steps, then NaN
        calls["n"] += 1
        loss = real_forward(self, crops)
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setattr(SwAVModel, "forward", forward)
    cfg = dict(TINY, max_steps=6, checkpoint_every=2, export=False)
    with pytest.raises(FloatingPointError, match="loss is nan at step 3.*--resume continues"):
        pretrain(PretrainConfig(**cfg, output_dir=str(tmp_path)))
    latest = ckpt.find_latest(tmp_path)
    assert latest is not None and latest.name == "step_00000002"
    assert ckpt.read_meta(latest)["step"] == 2


def test_decode_device_runs_the_tensor_path_and_bad_settings_fail_first(tmp_path: Path,
                                                                        capfd: pytest.CaptureFixture) -> None:
    """``--decode_device cpu-tensor`` is the ``cuda`` path's code on CPU: the run trains on the same samples, step
    by step, as the default path (pixels agree within the bound of tests/data/test_render.py, so losses are not
    compared); ``cuda`` without CUDA and loader workers with device decoding are one line each, before work."""
    from bigseer.config import validate
    from bigseer.errors import ConfigError

    cfg = dict(TINY, max_steps=3, checkpoint_every=0, export=False, log_samples=True)
    samples = {}
    for device in ("cpu", "cpu-tensor"):
        result = pretrain(PretrainConfig(**cfg, output_dir=str(tmp_path / device), decode_device=device))
        assert all(l == l for l in result.losses) and len(result.losses) == 3
        samples[device] = [json.loads(r)["samples"] for r in (tmp_path / device / "metrics.jsonl").read_text().splitlines()]
    assert "decoded on cpu" in capfd.readouterr().err
    assert samples["cpu"] == samples["cpu-tensor"] and len(samples["cpu"]) == 3
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"decode_device=cuda needs CUDA"):
            validate(PretrainConfig(**TINY, decode_device="cuda"))
    with pytest.raises(ConfigError, match=r"set num_workers 0 \(got 2\)"):
        validate(PretrainConfig(**TINY, decode_device="cpu-tensor", num_workers=2))
    with pytest.raises(ConfigError, match=r"decode_device='gpu' is invalid"):
        validate(PretrainConfig(**TINY, decode_device="gpu"))
