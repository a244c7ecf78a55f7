"""swav_loss on one process: value and gradients vs the float64 reference; crops; autocast; errors."""

import pytest
import torch

import bigseer.ssl.swav as swav_mod
from bigseer.errors import ConfigError
from bigseer.ssl import swav_loss
from tests.ssl.reference import random_scores, ref_loss

pytestmark = pytest.mark.numerics  # re-run by .ci/run under another kernel dispatch


@pytest.mark.parametrize("num_crops, assign", [(2, (0, 1)), (6, (0, 1)), (5, (1, 3, 4)), (3, (2,))])
def test_matches_reference_loss_and_grads(num_crops, assign):
    s = random_scores(num_crops, 12, 10, seed=num_crops)
    loss = swav_loss(s, 0.1, 0.05, 3, assign)
    ref = ref_loss(s, 0.1, 0.05, 3, assign)
    assert loss.dim() == 0
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=0)
    g = torch.autograd.grad(loss, s, allow_unused=True)
    g_ref = torch.autograd.grad(ref, s, allow_unused=True)  # a crop only used for codes has no gradient
    for a, b in zip(g, g_ref):
        b = torch.zeros_like(s[0]) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13)
    # fp32 scores: same numbers to fp32 precision, fp32 result (input rounding 6e-8 |s| amplified by 1/T = 10
    # in the softmax and 1/eps = 20 in the codes: ~1.2e-6 relative; 1e-5 ~ 8x)
    s32 = [x.detach().float().requires_grad_() for x in s]
    l32 = swav_loss(s32, 0.1, 0.05, 3, assign)
    assert l32.dtype == torch.float32
    torch.testing.assert_close(l32.double(), ref.detach(), rtol=1e-5, atol=0)


def test_codes_carry_no_gradient():
    s = random_scores(2, 8, 6)
    # only the softmax path: d loss / d scores[0] must equal the reference that detaches the codes
    g = torch.autograd.grad(swav_loss(s, 0.1, 0.05, 3), s[0])[0]
    q1 = swav_mod.sinkhorn_codes(s[1], 0.05, 3, None, "none")
    manual = -(q1 * torch.log_softmax(s[0] / 0.1, dim=1)).sum(1).mean() / 2
    torch.testing.assert_close(g, torch.autograd.grad(manual, s[0])[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_keeps_sinkhorn_and_loss_fp32(dtype, monkeypatch):
    seen = []
    real = swav_mod.sinkhorn_codes

    def spy(scores, *a, **k):
        out = real(scores, *a, **k)
        seen.append((scores.dtype, out.dtype))
        return out

    monkeypatch.setattr(swav_mod, "sinkhorn_codes", spy)
    w = torch.randn(16, 8, requires_grad=True)
    x = torch.randn(3, 4, 8)
    with torch.autocast("cpu", dtype=dtype):
        scores = [x[v] @ w.t() for v in range(3)]  # low precision under autocast
        assert scores[0].dtype == dtype
        loss = swav_loss(scores, 0.1, 0.05, 3)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert seen and all(o == torch.float32 for _, o in seen)
    loss.backward()
    assert torch.isfinite(w.grad).all()


def test_small_epsilon_16k_no_nan():
    s = random_scores(2, 32, 16384, dim=32, seed=5)
    s = [x.detach().float().requires_grad_() for x in s]
    loss = swav_loss(s, 0.1, 0.03, 10)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(x.grad).all() for x in s)


@pytest.mark.parametrize("scores, assign, match", [
    ([torch.zeros(4, 5), torch.zeros(3, 5)], (0, 1), "mismatched"),
    ([torch.zeros(4, 5), torch.zeros(4, 6)], (0, 1), "mismatched"),
    ([torch.zeros(0, 5), torch.zeros(0, 5)], (0, 1), "B > 0"),
    ([torch.zeros(4, 5), torch.zeros(4, 5)], (0, 2), "out of range"),
    ([torch.zeros(4, 5), torch.zeros(4, 5)], (-1,), "out of range"),
    ([torch.zeros(4, 5), torch.zeros(4, 5)], (), "at least one"),
    ([torch.zeros(4, 5), torch.zeros(4, 5)], (1, 1), "twice"),
    ([torch.zeros(4, 5)], (0,), "at least 2 crops"),
    ([], (0,), "non-empty"),
])
def test_bad_input(scores, assign, match):
    with pytest.raises(ConfigError, match=match):
        swav_loss(scores, 0.1, 0.05, 3, assign)


def test_bad_temperature():
    with pytest.raises(ConfigError, match="temperature"):
        swav_loss([torch.zeros(2, 3)] * 2, 0.0, 0.05, 3)
