"""The other ways users load an export: timm by name with a local file, accelerate's big-model loader on a
sharded export, torchvision from export.json alone (no bigseer import in the client's code), all offline."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from bigseer.export import export_checkpoint, load_pretrained
from tests.export.test_clients import PRESET, _run, _x, offline  # noqa: F401  (offline: autouse fixture)
from tests.numerics import assert_close_f64

pytestmark = pytest.mark.numerics


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    return _run(tmp_path_factory.mktemp("more_clients"), PRESET, "2x96+4x48")


def _ours(path: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(load_pretrained(path)).double()(x.double())


def test_timm_by_name_with_the_exported_file(trained, tmp_path: Path) -> None:
    """``timm.create_model("regnety_002", pretrained=True, pretrained_cfg_overlay=dict(file=...))``: timm's
    documented way to load a local weights file for one of its named models."""
    import timm

    export_checkpoint(trained[1], tmp_path / "timm")
    name = json.loads((tmp_path / "timm" / "export.json").read_text())["timm_name"]
    assert name == "regnety_002"
    net = timm.create_model(name, pretrained=True, num_classes=0,
                            pretrained_cfg_overlay=dict(file=str(tmp_path / "timm" / "model.safetensors")))
    x = _x()
    with torch.no_grad():
        theirs = net.double().eval()(x)
    assert_close_f64(theirs, _ours(tmp_path / "timm", x), "timm.create_model(name, pretrained_cfg_overlay=file)")


def test_accelerate_loads_a_sharded_export_into_an_empty_model(trained, tmp_path: Path) -> None:
    """The big-model path: build on the meta device, then ``load_checkpoint_and_dispatch`` reads the HF shard
    index shard by shard (what timm's local-dir cannot do; the export's note points here)."""
    import timm
    from accelerate import init_empty_weights, load_checkpoint_and_dispatch

    out = tmp_path / "sharded"
    export_checkpoint(trained[1], out, max_shard_size="1MB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    with init_empty_weights():
        net = timm.create_model("regnety_002", num_classes=0)
    net = load_checkpoint_and_dispatch(net, str(out), device_map={"": "cpu"}, strict=True)
    assert not any(t.is_meta for t in net.state_dict().values())
    ours = load_pretrained(out).state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in net.state_dict().items())  # copies of the same tensors
    x = _x()
    with torch.no_grad():
        theirs = net.double().eval()(x)
    assert_close_f64(theirs, _ours(out, x), "accelerate load_checkpoint_and_dispatch features")


def test_torchvision_from_export_json_alone(trained, tmp_path: Path) -> None:
    """A client that reads export.json and builds torchvision's RegNet itself gets a strict load."""
    from safetensors.torch import load_file
    from torch import nn
    from torchvision.models.regnet import BlockParams, RegNet

    export_checkpoint(trained[1], tmp_path / "tv", layout="torchvision")
    info = json.loads((tmp_path / "tv" / "export.json").read_text())
    net = RegNet(BlockParams(**info["torchvision_block_params"]), stem_width=info["stem_width"])
    net.fc = nn.Identity()
    net.load_state_dict(load_file(str(tmp_path / "tv" / "model.safetensors")), strict=True)
    x = _x()
    with torch.no_grad():
        theirs = net.double().eval()(x)
    assert_close_f64(theirs, _ours(tmp_path / "tv", x), "torchvision RegNet from export.json")
