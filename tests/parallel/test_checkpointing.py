"""Activation checkpointing: same loss/grads, BN running stats updated exactly once per forward.

Float64: the recomputed forward runs on freshly allocated activations, which need not see the same
kernels as the first (alignment), so fp32 would be a rounding-level comparison; float64 makes 1e-9 safe.
A second BN update would move the running stats by ~1e-1, orders of magnitude above it."""

import pytest

from bigseer.errors import ConfigError
from bigseer.parallel.checkpointing import apply_checkpointing, select_blocks
from tests.numerics import assert_close_f64
from tests.parallel.standin import make_batch, make_model

pytestmark = pytest.mark.numerics  # re-run by .ci/run under another kernel dispatch


def _run(spec):
    model = make_model(0).double()
    chosen = apply_checkpointing(model.trunk, spec)
    model.train()
    x = make_batch(4).double()
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
    assert (chosen1[0] is model.trunk.stem) == (spec == "all")  # "all" takes the stem too, a stage list does not
    assert_close_f64(loss1, loss0, "loss")
    for n in g0:
        assert_close_f64(g1[n], g0[n], n)
    for n in b0:  # running stats equal the single-update values; counter == 1 (not 2)
        assert_close_f64(b1[n], b0[n], n)
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
