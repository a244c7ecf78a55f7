"""The real SwAV objective on a small RegNetY: 2 gloo ranks under each backend give the same per-step
losses and final weights as one process on the concatenated global batch.

The computations are equal in exact arithmetic (SyncBN over the world = full-batch BN, global Sinkhorn,
averaged gradients); they differ by fp32 summation orders only, so the tolerance is derived from the
float64 run of the same one-process reference (tests/numerics.py): within 8x its distance to fp32.
"""

from __future__ import annotations

import pytest
import torch

from bigseer.config import PretrainConfig
from tests.distributed_utils import run_distributed
from tests.numerics import assert_states_within_fp32_error, assert_within_fp32_error

pytestmark = [pytest.mark.numerics, pytest.mark.slow]  # re-run by .ci/run under another kernel dispatch

CFG = dict(model="regnety_test", head_dims=(32,), embed_dim=16, num_prototypes=32, sinkhorn_iters=3,
           epsilon=0.05, temperature=0.1)
GLOBAL_BATCH = 8
STEPS = 3


def _crops(step: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(2, GLOBAL_BATCH, 3, 32, 32, generator=g).to(dtype),
            torch.randn(2, GLOBAL_BATCH, 3, 16, 16, generator=g).to(dtype)]


def _train(backend: str, checkpointing: str, ds_config: str | None, rank: int, world: int,
           dtype: torch.dtype = torch.float32) -> tuple[list[float], dict]:
    from bigseer import parallel
    from bigseer.distributed import all_reduce_mean
    from bigseer.engine import build_swav_model
    from bigseer.optim import LARS

    torch.manual_seed(0)
    model = build_swav_model(PretrainConfig(**CFG)).to(dtype)
    init = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    par = parallel.setup(model, backend=backend, precision="fp32", syncbn_group_size=world if world > 1 else None,
                         checkpointing=checkpointing, ds_config=ds_config,
                         optimizer_factory=lambda groups: LARS(groups, lr=0.5, momentum=0.9, weight_decay=1e-5))
    per_rank = GLOBAL_BATCH // world
    losses = []
    for step in range(STEPS):
        local = [c[:, rank * per_rank:(rank + 1) * per_rank] for c in _crops(step, dtype)]
        loss = par.forward(local)
        par.backward(loss)
        par.step()
        par.run_on_full_params(par.unwrapped.normalize_prototypes)
        par.zero_grad()
        losses.append(float(all_reduce_mean(loss.detach())))
    state = par.full_state_dict()
    return losses, {k: v for k, v in state.items() if v.is_floating_point()}, init


def _ranks(rank: int, world: int, runs: list[tuple[str, str, str | None]]) -> list[tuple[list[float], dict]]:
    out = []
    for backend, checkpointing, ds in runs:
        losses, state, _ = _train(backend, checkpointing, ds, rank, world)
        out.append((losses, state if rank == 0 else {}))
    return out


@pytest.fixture(scope="module")
def reference() -> tuple[tuple[list[float], dict], tuple[list[float], dict]]:
    """One process on the global batch, in fp32 and in float64."""
    return _train("ddp", "none", None, 0, 1), _train("ddp", "none", None, 0, 1, torch.float64)


def _assert_same(got: tuple[list[float], dict], reference, what: str) -> None:
    (losses, state), ((ref_losses, ref_state, _), (losses64, state64, init)) = got, reference
    assert len(losses) == STEPS
    assert_within_fp32_error(torch.tensor(losses), torch.tensor(ref_losses), torch.tensor(losses64), what)
    # BN running stats are not moved by updates: compare weights with the update-based bound, stats plainly
    weights = [k for k in ref_state if "running" not in k]
    assert_states_within_fp32_error({k: state[k] for k in weights}, {k: ref_state[k] for k in weights},
                                    state64, what, init)
    assert_states_within_fp32_error({k: state[k] for k in ref_state if k not in weights},
                                    {k: ref_state[k] for k in ref_state if k not in weights}, state64, what)


def test_ddp_and_fsdp_match_one_process(reference: tuple[list[float], dict]) -> None:
    runs = [("ddp", "none", None), ("fsdp", "none", None), ("fsdp", "all", None), ("ddp", "all", None)]
    results = run_distributed(_ranks, 2, args=(runs,))[0]
    for (backend, ckpt, _), got in zip(runs, results):
        _assert_same(got, reference, f"{backend} checkpointing={ckpt}")
    assert reference[0][0][0] != reference[0][0][-1]  # training moved


def test_deepspeed_zero_stages_match_one_process(reference: tuple[list[float], dict]) -> None:
    runs = [("deepspeed", "none", f"ds_configs/zero{s}_fp32.json") for s in (1, 2, 3)]
    results = run_distributed(_ranks, 2, args=(runs,))[0]
    for (_, _, ds), got in zip(runs, results):
        _assert_same(got, reference, ds or "")
