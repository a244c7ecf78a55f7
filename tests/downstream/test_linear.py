"""Linear evaluation: the trunk stays frozen (weights and BatchNorm statistics), res4/res5 features."""

import pytest
import torch
from safetensors.torch import save_file

from bigseer.downstream.config import EvalConfig
from bigseer.downstream.linear import LinearProbe
from bigseer.downstream.run_state import checkpoint_path
from bigseer.downstream.synthetic import write_colour_folder
from bigseer.downstream.train import run_downstream
from bigseer.errors import ConfigError
from bigseer.models import build_regnet


def test_probe_keeps_trunk_in_eval_and_trains_only_the_head():
    trunk = build_regnet("regnety_test")
    probe = LinearProbe(trunk, num_classes=4, layer="res4")
    probe.train()
    assert not probe.trunk.training and probe.fc.training
    assert probe.fc.in_features == trunk.stage_widths[2]
    out = probe(torch.randn(4, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (4, 4)
    assert probe.fc.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in probe.trunk.parameters())
    with pytest.raises(ConfigError, match="res3"):
        LinearProbe(build_regnet("regnety_test"), 4, layer="res3")


@pytest.mark.parametrize("layer", ["res4", "res5"])
def test_linear_run_leaves_trunk_weights_and_bn_stats_unchanged(tmp_path, layer):
    data = write_colour_folder(str(tmp_path / "data"), num_classes=3, train_per_class=8, val_per_class=3, size=32)
    trunk = build_regnet("regnety_test")
    with torch.no_grad():  # non-trivial BN statistics, so "unchanged" is a real check
        for name, buf in trunk.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.5, 0.5)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    weights = str(tmp_path / "trunk.safetensors")
    save_file(trunk.state_dict(), weights)
    out = str(tmp_path / "out")
    cfg = EvalConfig(mode="linear", layer=layer, data=data, weights=weights, model="regnety_test", epochs=2,
                     batch_size=8, lr=0.1, train_crop=32, eval_resize=32, eval_crop=32, output_dir=out, cpu=True,
                     progress=False)
    res = run_downstream(cfg)
    assert res["layer"] == layer and len(res["history"]) == 2
    state = torch.load(checkpoint_path(out), weights_only=True)["model"]
    after = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    # ... while the head did learn something
    head_w = state["fc.weight"]
    assert head_w.abs().max() > 0.05  # init std 0.01
