"""Every export layout loads strictly in its target library and gives bigseer's features."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bigseer.export import export_checkpoint, load_pretrained
from bigseer.export.configs import build_torchvision
from bigseer.export.layouts import LAYOUTS
from bigseer.models import PRESETS
from tests.export.builders import TinySwAV, randomize, write_torch_checkpoint
from tests.numerics import assert_close_f64

pytestmark = pytest.mark.numerics  # re-run by .ci/run under another kernel dispatch

PRESET = "regnety_200mf"  # = timm's regnety_002 (2.8M params)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinySwAV, Path, torch.Tensor]:
    root = tmp_path_factory.mktemp("interop")
    model = randomize(TinySwAV(PRESET)).eval()
    write_torch_checkpoint(root / "run", model, PRESET)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return model, root, x


def _same_function(net: torch.nn.Module, model: TinySwAV, x: torch.Tensor, out=lambda y: y) -> None:
    """The client's network computes bigseer's trunk function: both evaluated in float64 (the randomized
    weights give activations ~1e6, where fp32 rounding of two kernel choices alone exceeds 1e-4)."""
    with torch.no_grad():
        ours = copy.deepcopy(model.trunk).double()(x.double())
        assert_close_f64(out(net.double().eval()(x.double())), ours, type(net).__name__)


def test_timm_layout_loads_strictly_in_timm(trained, tmp_path: Path) -> None:
    import timm

    model, root, x = trained
    export_checkpoint(root / "run", tmp_path)
    net = timm.create_model("regnety_002", num_classes=0, pretrained=False)
    net.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
    _same_function(net, model, x)


def test_torchvision_layout_loads_strictly_in_torchvision(trained, tmp_path: Path) -> None:
    model, root, x = trained
    export_checkpoint(root / "run", tmp_path, layout="torchvision")
    net = build_torchvision(PRESETS[PRESET])
    assert type(net).__module__ == "torchvision.models.regnet"
    net.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
    _same_function(net, model, x)


def test_hf_layout_loads_in_transformers(trained, tmp_path: Path) -> None:
    from transformers import RegNetModel

    model, root, x = trained
    export_checkpoint(root / "run", tmp_path, layout="hf", max_shard_size="4MB")  # sharded on purpose
    assert (tmp_path / "model.safetensors.index.json").is_file()
    net, info = RegNetModel.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    _same_function(net, model, x, out=lambda y: y.pooler_output.flatten(1))


def test_detectron2_layout_uses_pycls_names_and_round_trips(trained, tmp_path: Path) -> None:
    model, root, x = trained
    export_checkpoint(root / "run", tmp_path, layout="detectron2")
    saved = torch.load(tmp_path / "model.pth", weights_only=True)
    assert saved["matching_heuristics"] is True and saved["input_format"] == "RGB"
    keys = set(saved["model"])
    # pycls / detectron2 names (REFERENCE.md section 2)
    for name in ("stem.conv.weight", "stem.bn.running_mean", "s1.b1.f.a.weight", "s1.b1.f.a_bn.bias",
                 "s1.b1.f.b.weight", "s1.b1.f.b_bn.weight", "s1.b1.f.se.f_ex.0.weight", "s1.b1.f.se.f_ex.2.bias",
                 "s1.b1.f.c.weight", "s1.b1.f.c_bn.running_var", "s1.b1.proj.weight", "s1.b1.bn.weight"):
        assert name in keys, name
    assert not any("conv1" in k or "downsample" in k for k in keys)
    trunk = load_pretrained(tmp_path / "model.pth")
    for k, v in model.trunk.state_dict().items():
        assert torch.equal(trunk.state_dict()[k], v), k
    _same_function(trunk, model, x)


@pytest.mark.parametrize("layout", ["timm", "torchvision", "hf", "detectron2"])
def test_load_pretrained_reads_every_layout(trained, tmp_path: Path, layout: str) -> None:
    model, root, x = trained
    export_checkpoint(root / "run", tmp_path, layout=layout, dtype="bf16")
    trunk = load_pretrained(tmp_path)
    assert trunk.params == PRESETS[PRESET]
    for k, v in model.trunk.state_dict().items():
        expected = v.to(torch.bfloat16).float() if v.is_floating_point() else v
        assert torch.equal(trunk.state_dict()[k], expected), (layout, k)


def test_key_maps_invert_for_every_layout() -> None:
    keys = list(TinySwAV("regnety_tiny").trunk.state_dict())
    for name, layout in LAYOUTS.items():
        mapped = [layout.from_timm(k) for k in keys]
        assert len(set(mapped)) == len(keys), name
        assert [layout.to_timm(k) for k in mapped] == keys, name
