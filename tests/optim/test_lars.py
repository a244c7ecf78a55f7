"""LARS against the LARC formula written out by hand."""

import pytest
import torch
from torch import nn

from bigseer.errors import ConfigError
from bigseer.optim import LARS, build_lars, lars_param_groups

pytestmark = pytest.mark.numerics  # re-run by .ci/run under another kernel dispatch


def _manual_step(p, g, buf, lr, mom, wd, trust, eps=1e-8):
    d = g + wd * p
    pn, gn = p.norm(), g.norm()
    ratio = trust * pn / (gn + wd * pn + eps) if pn > 0 and gn > 0 else torch.tensor(1.0)
    d = d * ratio
    buf = d.clone() if buf is None else buf * mom + d
    return p - lr * buf, buf


def test_lars_matches_formula_two_steps():
    torch.manual_seed(0)
    p0 = torch.randn(5, 4)
    grads = [torch.randn(5, 4), torch.randn(5, 4)]
    param = nn.Parameter(p0.clone())
    opt = LARS([param], lr=0.5, momentum=0.9, weight_decay=1e-5, trust_coefficient=0.001)
    ref, buf = p0.clone(), None
    for g in grads:
        param.grad = g.clone()
        opt.step()
        ref, buf = _manual_step(ref, g, buf, 0.5, 0.9, 1e-5, 0.001)
    torch.testing.assert_close(param.detach(), ref, rtol=1e-6, atol=1e-7)
    assert not torch.equal(param.detach(), p0)


def test_lars_zero_param_norm_uses_ratio_one_and_excluded_group_is_plain_sgd():
    z = nn.Parameter(torch.zeros(3))
    b = nn.Parameter(torch.ones(3))
    opt = LARS([{"params": [z]}, {"params": [b], "lars_exclude": True, "weight_decay": 0.0}], lr=0.1, momentum=0.0)
    z.grad = torch.full((3,), 2.0)
    b.grad = torch.full((3,), 2.0)
    opt.step()
    torch.testing.assert_close(z.detach(), torch.full((3,), -0.2))  # ||p|| = 0 -> no adaptation
    torch.testing.assert_close(b.detach(), torch.full((3,), 0.8))  # excluded: plain SGD, no decay


def test_lars_clip_caps_ratio_at_lr():
    p = nn.Parameter(torch.full((4,), 100.0))
    opt = LARS([p], lr=0.01, momentum=0.0, weight_decay=0.0, trust_coefficient=1.0, clip=True)
    p.grad = torch.full((4,), 1e-3)
    opt.step()  # unclipped ratio 1e5 would move p by 1e-3 * 1e5 * 0.01; clipped: ratio/lr capped at 1
    torch.testing.assert_close(p.detach(), torch.full((4,), 100.0 - 0.01 * 1e-3))


def test_lars_param_groups_exclude_bn_and_bias():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    assert len(lars_param_groups(model)) == 1
    groups = lars_param_groups(model, exclude_bn_bias=True)
    assert [len(g["params"]) for g in groups] == [2, 4]
    assert groups[1]["lars_exclude"] and groups[1]["weight_decay"] == 0.0
    with pytest.raises(ConfigError, match="weight_decay"):
        LARS(model.parameters(), weight_decay=-1)


def test_build_lars_splits_groups_it_is_given():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = build_lars([{"params": list(model.parameters())}], lr=0.2, trust=0.002, exclude_bn_bias=True)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 3]
    assert [g["lars_exclude"] for g in opt.param_groups] == [False, True]
    assert opt.param_groups[0]["trust_coefficient"] == 0.002 and opt.param_groups[1]["weight_decay"] == 0.0
    assert len(build_lars(model.parameters(), lr=0.1).param_groups) == 1


def test_zero_partitioned_group_cuts_padding_and_equals_plain_lars():
    """A ZeRO partition on one rank: the tensor flattened plus padding (ZeRO-3 leaves it uninitialised,
    here NaN); norms come from the first zero_numel elements only, so the step equals plain LARS."""
    torch.manual_seed(0)
    p0, grads = torch.randn(3, 4), [torch.randn(3, 4), torch.randn(3, 4)]
    plain = nn.Parameter(p0.clone())
    flat = nn.Parameter(torch.cat([p0.reshape(-1), torch.full((4,), float("nan"))]))
    kw = dict(lr=0.5, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.02)
    o_plain = LARS([plain], **kw)
    o_flat = LARS([{"params": [flat], "zero_partitioned": True, "zero_numel": p0.numel()}], **kw)
    for g in grads:
        plain.grad = g.clone()
        flat.grad = torch.cat([g.reshape(-1), torch.full((4,), float("inf"))])
        o_plain.step()
        o_flat.step()
    torch.testing.assert_close(flat.detach()[:12].view(3, 4), plain.detach(), rtol=1e-6, atol=1e-7)
    assert not torch.equal(plain.detach(), p0)


def test_zero_partitioned_group_with_two_tensors_is_refused():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = LARS([{"params": [a, b], "zero_partitioned": True, "zero_numel": 2}], lr=0.1)
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    with pytest.raises(ConfigError, match="zero_partitioned param groups need exactly one tensor"):
        opt.step()


def test_zero_param_groups_one_tensor_each_keeping_options():
    from bigseer.parallel import param_groups_for, zero_param_groups

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    groups = zero_param_groups(param_groups_for(model, exclude_bn_bias=True))
    assert [len(g["params"]) for g in groups] == [1, 1, 1, 1]
    assert [g.get("lars_exclude", False) for g in groups] == [False, True, True, True]
    assert all(g["zero_partitioned"] and g["zero_numel"] == g["params"][0].numel() for g in groups)
    opt = build_lars(groups, lr=0.1, exclude_bn_bias=True)  # splitting one-tensor groups keeps them one-tensor
    assert len(opt.param_groups) == 4 and all(len(g["params"]) == 1 for g in opt.param_groups)


def _mixed_groups(dtype_b=torch.float64):
    """Params for every branch of a step: decay and not, clip, excluded with decay, no momentum, a zero
    tensor, a param without a grad, and one whose grad (so its momentum) starts at the second step."""
    torch.manual_seed(3)
    ps = [nn.Parameter(torch.randn(*s, dtype=torch.float64)) for s in ((4, 3), (7,), (2, 2, 3), (5,))]
    late = nn.Parameter(torch.randn(6, dtype=torch.float64))
    zero = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    nograd = nn.Parameter(torch.randn(2, dtype=torch.float64))
    other = nn.Parameter(torch.randn(3, 2, dtype=dtype_b))
    groups = [{"params": [ps[0], ps[1], late, zero, other]},
              {"params": [ps[2], nograd], "weight_decay": 0.0, "clip": True},
              {"params": [ps[3]], "lars_exclude": True, "weight_decay": 1e-2},
              {"params": [], "momentum": 0.0}]
    return groups, ps + [late, zero, other], late, nograd


@pytest.mark.parametrize("dtype_b", [torch.float64, torch.float32])
def test_foreach_update_equals_the_per_tensor_loop(monkeypatch, dtype_b):
    """``foreach=True`` (the default on accelerators) takes the multi-tensor path and lands where the
    per-tensor loop (the default on CPU) does.
    float64, the same element-wise ops on the same tensors: equal to 1e-12 relative. With one float32
    tensor among float64 ones (``dtype_b``) that group cannot be one foreach call and takes the loop."""
    calls = []
    real = LARS._foreach_update
    monkeypatch.setattr(LARS, "_foreach_update", lambda self, ps, *a: (calls.append(len(ps)), real(self, ps, *a)))
    runs = []
    for foreach in (True, False):
        groups, params, late, nograd = _mixed_groups(dtype_b)
        groups[-1]["params"] = [nn.Parameter(torch.randn(4, dtype=torch.float64))]  # momentum-free group
        params.append(groups[-1]["params"][0])
        opt = LARS(groups, lr=0.3, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.05, foreach=foreach)
        gen = torch.Generator().manual_seed(5)
        for step in range(3):
            for p in params:
                p.grad = None if (p is late and step == 0) else torch.randn(p.shape, generator=gen, dtype=p.dtype)
            opt.step()
        runs.append(([p.detach().clone() for p in params + [nograd]],
                     [opt.state[p]["momentum_buffer"].clone() for p in params if p in opt.state]))
    n_calls = 3 * (3 if dtype_b == torch.float64 else 2)  # the mixed-dtype group never goes foreach
    assert len(calls) == n_calls + 3  # + the momentum-free group, 3 steps
    for a, b in zip(*[r[0] + r[1] for r in runs]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    assert len(runs[0][1]) == len(runs[1][1]) == 7  # momentum for all with a grad in a momentum group


def test_foreach_default_is_the_loop_on_cpu(monkeypatch):
    """As torch's optimizers choose: the multi-tensor path by default only off CPU (it saves kernel
    launches; on CPU the loop runs, measured as fast: benchmarks/results/lars.md)."""
    calls = []
    monkeypatch.setattr(LARS, "_foreach_update", lambda self, *a: calls.append(1))
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    LARS([p], lr=0.1).step()
    assert calls == [] and not torch.equal(p.detach(), torch.ones(3))
    LARS([p], lr=0.1, foreach=True).step()
    assert calls == [1]
