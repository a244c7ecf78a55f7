"""Converting published-style weights (VISSL-SEER, torchvision, timm, detectron2/pycls) into bigseer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bigseer.errors import CheckpointError
from bigseer.export import convert_weights, load_pretrained
from bigseer.export.layouts import LAYOUTS
from bigseer.models import PRESETS, build_regnet
from tests.export.builders import randomize
from tests.numerics import assert_close_f64

pytestmark = pytest.mark.numerics  # re-run by .ci/run under another kernel dispatch


@pytest.fixture()
def trunk() -> torch.nn.Module:
    return randomize(build_regnet("regnety_tiny")).eval()


def _in_layout(sd: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    return {LAYOUTS[layout].from_timm(k): v for k, v in sd.items()}


def test_vissl_seer_checkpoint_converts(trunk, tmp_path: Path) -> None:
    sd = trunk.state_dict()
    vissl = _in_layout(sd, "vissl")
    assert "_feature_blocks.res2.block1-0.f.se.excitation.0.weight" in vissl
    assert "_feature_blocks.res5.block4-0.f.final_bn.running_var" in vissl
    assert "_feature_blocks.res3.block2-0.proj.weight" in vissl and "_feature_blocks.res3.block2-0.bn.bias" in vissl
    heads = {"0.prototypes0.weight": torch.randn(10, 4), "0.projection_head.0.weight": torch.randn(4, 4)}
    ckpt = {"classy_state_dict": {"base_model": {"model": {"trunk": vissl, "heads": heads}}}, "iteration": 3}
    # legacy (non-zip) pickle, as old VISSL releases may be: the reader falls back from mmap
    torch.save(ckpt, tmp_path / "model_final_checkpoint_phase0.torch", _use_new_zipfile_serialization=False)
    convert_weights(tmp_path / "model_final_checkpoint_phase0.torch", tmp_path / "out")
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(out) == set(sd)
    assert all(torch.equal(out[k], v) for k, v in sd.items())
    loaded = load_pretrained(tmp_path / "out")
    assert loaded.params == PRESETS["regnety_tiny"]  # inferred from shapes, then recorded in metadata
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())  # bitwise: copies only
    # The forwards are not a bitwise claim: the loaded weights live in the safetensors mmap (another
    # alignment, so other MKL/oneDNN kernels). Same function, compared in float64.
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert_close_f64(loaded.double()(x), trunk.double()(x), "vissl trunk forward")


def test_torchvision_and_timm_files_with_classifier(trunk, tmp_path: Path) -> None:
    sd = trunk.state_dict()
    tv = _in_layout(sd, "torchvision") | {"fc.weight": torch.randn(10, 128), "fc.bias": torch.randn(10)}
    torch.save(tv, tmp_path / "tv.pth")
    timm_sd = {k: v.clone() for k, v in sd.items()} | {"head.fc.weight": torch.randn(10, 128)}
    save_file(timm_sd, str(tmp_path / "timm.safetensors"))
    for f in ("tv.pth", "timm.safetensors"):
        loaded = load_pretrained(tmp_path / f, model="regnety_tiny")
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items()), f


def test_pycls_file_converts(trunk, tmp_path: Path) -> None:
    sd = trunk.state_dict()
    torch.save({"model_state": _in_layout(sd, "detectron2"), "epoch": 1}, tmp_path / "RegNetY.pyth")
    loaded = load_pretrained(tmp_path / "RegNetY.pyth")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())


def test_wrong_architecture_names_first_differing_key(trunk, tmp_path: Path) -> None:
    save_file(trunk.state_dict(), str(tmp_path / "tiny.safetensors"))
    with pytest.raises(CheckpointError, match=r"does not match RegNetY regnety_test: first differing key "
                                              r"'stem.conv.weight': file has shape \[16, 3, 3, 3\], "
                                              r"model expects \[8, 3, 3, 3\]"):
        load_pretrained(tmp_path / "tiny.safetensors", model="regnety_test")


def test_unknown_shapes_and_foreign_files(trunk, tmp_path: Path) -> None:
    sd = dict(trunk.state_dict())
    sd["s4.b1.conv1.conv.weight"] = torch.zeros(1, 1, 1, 1)
    save_file(sd, str(tmp_path / "odd.safetensors"))
    with pytest.raises(CheckpointError, match=r"matches no RegNetY preset.*closest 'regnety_tiny'.*"
                                              r"s4.b1.conv1.conv.weight"):
        load_pretrained(tmp_path / "odd.safetensors")
    torch.save({"encoder.layer.0.weight": torch.zeros(3)}, tmp_path / "bert.pt")
    with pytest.raises(CheckpointError, match="no RegNetY trunk keys in any known layout"):
        load_pretrained(tmp_path / "bert.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_pretrained(tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointError, match="no such file"):
        load_pretrained(tmp_path / "nothing.pth")
