"""``--init_from`` through the engine: the run starts from the given trunk (and head with ``--init_head``), the
trunk stays exactly the source's while a fresh head warms up, then trains; the model is named by the weights
when ``--model`` is not given, another architecture fails in one line before any work; ``--resume`` wins.
(Loading each kind of weights into each backend: tests/test_warm_start.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bigseer.config import PretrainConfig
from bigseer.engine import build_job, pretrain
from bigseer.errors import CheckpointError
from bigseer.run import resolve_run
from tests.state_compare import load_export, load_state

pytestmark = [pytest.mark.slow]

BASE = dict(model="regnety_test", crops="2x32+2x16", head_dims=(32,), embed_dim=16, num_prototypes=32,
            batch_size=8, seed=5, recipe="none", async_checkpoint=False)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short run with a checkpoint (trunk and head) and its export (trunk only)."""
    out = tmp_path_factory.mktemp("init") / "source"
    pretrain(PretrainConfig(**BASE, output_dir=str(out), max_steps=2))
    return out


def _trunk(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    """The trunk's tensors of a checkpoint (``state/model.trunk.*``) or an export (``export/model.safetensors/*``)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and isinstance(v, torch.Tensor)}


def test_the_trunk_is_the_source_while_the_head_warms_up_then_it_trains(source: Path, tmp_path: Path) -> None:
    """Steps 1-2 (head warm-up): the whole trunk bitwise the export's, BN running statistics included (a frozen
    trunk keeps them; only the batch counters move); the head is a fresh one, not the source run's. Step 3: the
    trunk trains and its statistics move."""
    out = tmp_path / "continued"
    pretrain(PretrainConfig(**BASE, output_dir=str(out), max_steps=3, checkpoint_every=1, keep_last=5,
                            init_from=str(source / "export"), head_warmup_steps=2, export=False))
    exported = _trunk(load_export(source / "export"), "export/model.safetensors/")
    params = [k for k in exported if not k.endswith("num_batches_tracked")]
    assert len(params) > 20 and any(k.endswith("running_var") for k in params)
    steps = {s: load_state(out, s) for s in (1, 2, 3)}
    for s in (1, 2):
        trunk = _trunk(steps[s], "state/model.trunk.")
        assert [k for k in params if not torch.equal(trunk[k], exported[k])] == [], s
    moved = [k for k in params if not torch.equal(_trunk(steps[3], "state/model.trunk.")[k], exported[k])]
    assert len(moved) > len(params) // 2
    own_head = _trunk(load_state(source, 2), "state/model.head.")
    head = _trunk(steps[1], "state/model.head.")
    assert not torch.equal(head["prototypes.0.weight"], own_head["prototypes.0.weight"])


def test_init_head_takes_trunk_and_head_of_a_checkpoint(source: Path, tmp_path: Path) -> None:
    """Built from ``--init_from CHECKPOINT --init_head`` (before any step): the whole model is the checkpoint's,
    bitwise; the optimizer starts fresh (no momentum); no head warm-up by default."""
    cfg = PretrainConfig(**BASE, output_dir=str(tmp_path / "with_head"), max_steps=20, init_from=str(source),
                         init_head=True, export=False)
    run = resolve_run(cfg, 1)
    assert run.cfg.head_warmup_steps == 0
    job = build_job(run)
    try:
        got = {f"state/model.{k}": v for k, v in job.par.full_state_dict().items()}
        momentum = [s.get("momentum_buffer") for s in job.par.optimizer.state.values()]
    finally:
        job.writer.close()
        job.par.close()
    ref = load_state(source, 2)
    keys = [k for k in ref if k.startswith("state/model.")]
    assert sorted(keys) == sorted(got)
    assert [k for k in keys if not torch.equal(got[k], ref[k])] == []
    assert all(m is None or not m.any() for m in momentum)


def test_defaults_model_from_the_weights_and_one_line_for_another_architecture(source: Path, tmp_path: Path) -> None:
    """No --model: the weights name it (regnety_test here, not the default regnety_tiny); head warm-up = the LR
    warm-up steps; the peak LR x 1/8 (without --init_from: x 1, no warm-up). --model regnety_tiny given: one line
    naming both, before any work."""
    cfg = PretrainConfig(**{**BASE, "model": "regnety_tiny"}, output_dir=str(tmp_path / "x"), max_steps=30,
                         init_from=str(source / "export"))
    run = resolve_run(cfg, 1, explicit=["output_dir", "max_steps", "init_from"])
    assert run.cfg.model == "regnety_test" and run.cfg.head_warmup_steps == run.cfg.warmup_steps == 3
    # a warm start's peak lr is 1/8 of the from-scratch rule's (benchmarks/results/continue.md)
    from bigseer.optim.schedules import linear_scaled_lr
    from bigseer.trainer import peak_lr

    assert run.cfg.init_lr_scale == 0.125 and peak_lr(run.cfg, 1) == linear_scaled_lr(run.cfg.base_lr, 8) / 8
    fresh = resolve_run(PretrainConfig(**BASE, output_dir=str(tmp_path / "y"), max_steps=30), 1)
    assert fresh.cfg.init_lr_scale == 1.0 and fresh.cfg.head_warmup_steps == 0
    with pytest.raises(CheckpointError) as err:
        resolve_run(cfg, 1, explicit=["model", "output_dir", "max_steps", "init_from"])
    msg = str(err.value)
    assert "\n" not in msg and "regnety_test" in msg and "regnety_tiny" in msg, msg
    assert not (tmp_path / "x").exists()


def test_resume_wins_over_init_from(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A restarted job (--resume auto with a checkpoint of its own) continues its checkpoint: the steps go on from
    it and the --init_from weights are not loaded again, nor needed (deleted here); without --model the model is
    its checkpoint's."""
    import shutil

    out, weights = tmp_path / "job", tmp_path / "weights"
    shutil.copytree(source / "export", weights)
    kw = dict(BASE, output_dir=str(out), init_from=str(weights), head_warmup_steps=0, export=False,
              resume="auto", log_samples=True)
    pretrain(PretrainConfig(**{**kw, "model": "regnety_tiny"}, max_steps=2))  # the default: named by the weights
    first = capsys.readouterr().err  # the run logs to the current standard error (bigseer.train_log)
    assert "trunk tensors loaded" in first and "holds regnety_test" in first, first[-2000:]
    shutil.rmtree(weights)
    pretrain(PretrainConfig(**{**kw, "model": "regnety_tiny"}, max_steps=3))
    second = capsys.readouterr().err
    assert "not used: the run resumes" in second and "trunk tensors loaded" not in second, second[-2000:]
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
