"""Activation checkpointing: same loss/grads, BN running stats updated exactly once per forward."""

import pytest
import torch

from bigseer.errors import ConfigError
from bigseer.parallel.checkpointing import apply_checkpointing, select_blocks
from tests.parallel.standin import make_batch, make_model


def _run(spec):
    model = make_model(0)
    chosen = apply_checkpointing(model.trunk, spec)
    model.train()
    x = make_batch(4)
    loss = model(x)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    bufs = {n: b.clone() for n, b in model.named_buffers()}
    return loss.detach(), grads, bufs, chosen, model


@pytest.mark.parametrize("spec", ["all", [True, [0], False, [0]]])
def test_checkpointing_same_loss_grads_and_bn_updated_once(spec):
    loss0, g0, b0, chosen0, _ = _run("none")
    loss1, g1, b1, chosen1, model = _run(spec)
    assert chosen0 == [] and len(chosen1) >= 2
    assert torch.equal(loss0, loss1)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7, msg=n)
    for n in b0:  # running stats equal the single-update values; counter == 1 (not 2)
        torch.testing.assert_close(b1[n], b0[n], rtol=0, atol=0, msg=n)
    counts = {n: int(b) for n, b in b1.items() if n.endswith("num_batches_tracked")}
    assert counts and set(counts.values()) == {1}
    # keys unchanged by the wrapping
    assert list(model.state_dict()) == list(make_model(0).state_dict())


def test_checkpointing_bad_specs():
    trunk = make_model(0).trunk
    with pytest.raises(ConfigError, match="checkpointing"):
        select_blocks(trunk, "some")
    with pytest.raises(ConfigError, match="4 stages"):
        select_blocks(trunk, [True, False])
    with pytest.raises(ConfigError, match="out of range"):
        select_blocks(trunk, [[5], False, False, False])
