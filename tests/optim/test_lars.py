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
