"""The real SwAV objective on a small RegNetY: 2 gloo ranks under each backend give the same per-step
losses and final weights as one process on the concatenated global batch.

Tolerance: 2e-5 absolute on losses (~6) and 1e-4 on weights after 3 LARS steps. The computations are
equal in exact arithmetic (SyncBN over the world = full-batch BN, global Sinkhorn, averaged gradients);
the only differences are fp32 summation orders of the all-reduces (~1e-7 relative per op), which the
LARS trust ratios and 3 steps amplify to ~1e-6.
"""

from __future__ import annotations

import pytest
import torch

from bigseer.config import PretrainConfig
from tests.distributed_utils import run_distributed

CFG = dict(model="regnety_test", head_dims=(32,), embed_dim=16, num_prototypes=32, sinkhorn_iters=3,
           epsilon=0.05, temperature=0.1)
GLOBAL_BATCH = 8
STEPS = 3


def _crops(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(2, GLOBAL_BATCH, 3, 32, 32, generator=g), torch.randn(2, GLOBAL_BATCH, 3, 16, 16, generator=g)]


def _train(backend: str, checkpointing: str, ds_config: str | None, rank: int, world: int) -> tuple[list[float], dict]:
    from bigseer import parallel
    from bigseer.distributed import all_reduce_mean
    from bigseer.engine import build_swav_model
    from bigseer.optim import LARS

    torch.manual_seed(0)
    model = build_swav_model(PretrainConfig(**CFG))
    par = parallel.setup(model, backend=backend, precision="fp32", syncbn_group_size=world if world > 1 else None,
                         checkpointing=checkpointing, ds_config=ds_config,
                         optimizer_factory=lambda groups: LARS(groups, lr=0.5, momentum=0.9, weight_decay=1e-5))
    per_rank = GLOBAL_BATCH // world
    losses = []
    for step in range(STEPS):
        local = [c[:, rank * per_rank:(rank + 1) * per_rank] for c in _crops(step)]
        loss = par.forward(local)
        par.backward(loss)
        par.step()
        par.run_on_full_params(par.unwrapped.normalize_prototypes)
        par.zero_grad()
        losses.append(float(all_reduce_mean(loss.detach())))
    state = par.full_state_dict()
    return losses, {k: v for k, v in state.items() if v.is_floating_point()}


def _ranks(rank: int, world: int, runs: list[tuple[str, str, str | None]]) -> list[tuple[list[float], dict]]:
    out = []
    for backend, checkpointing, ds in runs:
        losses, state = _train(backend, checkpointing, ds, rank, world)
        out.append((losses, state if rank == 0 else {}))
    return out


@pytest.fixture(scope="module")
def reference() -> tuple[list[float], dict]:
    return _train("ddp", "none", None, 0, 1)


def _assert_same(got: tuple[list[float], dict], ref: tuple[list[float], dict], what: str) -> None:
    losses, state = got
    ref_losses, ref_state = ref
    assert len(losses) == STEPS
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), atol=2e-5, rtol=0, msg=what)
    assert state.keys() == ref_state.keys(), what
    for k in ref_state:
        torch.testing.assert_close(state[k], ref_state[k], atol=1e-4, rtol=1e-4, msg=f"{what}: {k}")


def test_ddp_and_fsdp_match_one_process(reference: tuple[list[float], dict]) -> None:
    runs = [("ddp", "none", None), ("fsdp", "none", None), ("fsdp", "all", None), ("ddp", "all", None)]
    results = run_distributed(_ranks, 2, args=(runs,))[0]
    for (backend, ckpt, _), got in zip(runs, results):
        _assert_same(got, reference, f"{backend} checkpointing={ckpt}")
    assert reference[0][0] != reference[0][-1]  # training moved


def test_deepspeed_zero_stages_match_one_process(reference: tuple[list[float], dict]) -> None:
    runs = [("deepspeed", "none", f"ds_configs/zero{s}_fp32.json") for s in (1, 2, 3)]
    results = run_distributed(_ranks, 2, args=(runs,))[0]
    for (_, _, ds), got in zip(runs, results):
        _assert_same(got, reference, ds or "")
