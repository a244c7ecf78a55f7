"""Sinkhorn on one process: marginals, agreement with the textbook algorithm, stability, dtypes, errors."""

import pytest
import torch

from bigseer.errors import ConfigError
from bigseer.ssl import sinkhorn
from tests.ssl.reference import random_scores, ref_sinkhorn

pytestmark = pytest.mark.numerics  # re-run by .ci/run under another kernel dispatch


def test_marginals_and_reference():
    s = random_scores(1, 48, 12, seed=1)[0].detach()
    q = sinkhorn(s, 0.05, 3)
    assert q.dtype == torch.float64 and q.shape == (48, 12)
    torch.testing.assert_close(q, ref_sinkhorn(s, 0.05, 3), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(q.sum(1), torch.ones(48, dtype=torch.float64))
    # with many iterations the prototype marginals become uniform: B / K each
    q = sinkhorn(s, 0.05, 200)
    torch.testing.assert_close(q.sum(0), torch.full((12,), 48 / 12, dtype=torch.float64), rtol=1e-6, atol=0)
    # fp32 input -> fp32 codes close to the fp64 ones. Derived bound: rounding s to fp32 (6e-8 |s|, |s| <= 1)
    # is amplified by exp(s / eps) to 6e-8 / 0.05 = 1.2e-6 relative, plus a few ulps per iteration: 1e-5 ~ 7x
    q32 = sinkhorn(s.float(), 0.05, 3)
    assert q32.dtype == torch.float32
    torch.testing.assert_close(q32.double(), ref_sinkhorn(s, 0.05, 3), rtol=1e-5, atol=1e-7)


def test_zero_iterations_is_row_softmax():
    s = random_scores(1, 8, 5)[0].detach()
    torch.testing.assert_close(sinkhorn(s, 0.1, 0), torch.softmax(s / 0.1, dim=1))


def test_small_epsilon_16k_prototypes_stays_finite():
    g = torch.Generator().manual_seed(3)
    s = torch.rand(64, 16384, generator=g) * 2 - 1  # scores near +-1
    s[:, 0] = 1.0
    s[0] = -1.0
    q = sinkhorn(s, 0.03, 10)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(1), torch.ones(64), rtol=1e-5, atol=1e-5)
    # eps = 0.01: the textbook fp32 version overflows, and row 0 underflows after the column shift;
    # ours stays finite and matches the float64 textbook result (input rounding 6e-8 / 0.01 = 6e-6 relative
    # through exp(s / eps); 1e-4 ~ 16x)
    assert not torch.isfinite(torch.exp(s / 0.01)).all()
    q = sinkhorn(s, 0.01, 3)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.double(), ref_sinkhorn(s.double(), 0.01, 3), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_and_autocast_compute_in_fp32(dtype):
    s = random_scores(1, 16, 8)[0].detach().to(dtype)
    with torch.autocast("cpu", dtype=dtype):
        q = sinkhorn(s, 0.05, 3)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q, sinkhorn(s.float(), 0.05, 3))


@pytest.mark.parametrize("args, match", [
    ((torch.zeros(0, 4), 0.05, 3), "B > 0"),
    ((torch.zeros(4, 0), 0.05, 3), "K > 0"),
    ((torch.zeros(4), 0.05, 3), "2-D"),
    ((torch.zeros(4, 4), 0.0, 3), "epsilon"),
    ((torch.zeros(4, 4), 0.05, -1), "num_iters"),
    ((torch.zeros(4, 4, dtype=torch.long), 0.05, 3), "floating"),
])
def test_bad_input(args, match):
    with pytest.raises(ConfigError, match=match):
        sinkhorn(*args)
