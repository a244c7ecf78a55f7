"""SEER's published VISSL checkpoints through ``bigseer convert`` / ``load_pretrained``: the SEER-10B part
layout, the RG32..RG256 and 10B shapes, and the published networks that carry a SEER name but are not it.

Real-size files cannot be written in a test (RG256 is 5 GB): their shapes are tested with files of
meta-device tensors (torch.save keeps shapes and dtypes, no data), which go through the same reader,
key mapping, preset inference and checks as a real file; data paths use small trunks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bigseer.errors import CheckpointError
from bigseer.export import convert_weights, load_pretrained
from bigseer.export.layouts import LAYOUTS
from bigseer.export.sources import open_weights
from bigseer.export.validate import FOREIGN_NETS
from bigseer.models import PRESETS, build_regnet
from bigseer.models.regnet import RegNetParams
from tests.export.builders import randomize
from tests.numerics import assert_close_f64

pytestmark = pytest.mark.numerics  # re-run by .ci/run under another kernel dispatch

# SEER-10B's FSDP groups (REFERENCE.md section 6): stage -> first block index of each part
SEER_10B_PARTS = {1: [0], 2: [0], 3: [0, 9], 4: [0]}
# a small trunk with several blocks in every stage (depths 2, 3, 4, 2)
SMALL = RegNetParams(depth=11, w0=16, wa=4.0, wm=1.6, group_width=8, stem_width=16)
PUBLISHED = {"regnety_32gf": 141_333_770, "regnety_64gf": 276_457_786, "regnety_128gf": 637_419_894,
             "regnety_256gf": 1_272_156_138}


def _vissl_key(timm_key: str, parts: dict[int, list[int]] | None) -> str:
    """timm key -> VISSL key; with ``parts``, in the 10B layout ``resN.blockS-partK.blockS-i``."""
    key = LAYOUTS["vissl"].from_timm(timm_key)
    m = re.match(r"^s(\d)\.b(\d+)\.", timm_key)
    if parts is None or m is None:
        return key
    stage, block = int(m.group(1)), int(m.group(2)) - 1
    part = sum(1 for start in parts[stage] if block >= start) - 1
    prefix = f"_feature_blocks.res{stage + 1}."
    return prefix + f"block{stage}-part{part}." + key[len(prefix):]


def _save_vissl(path: Path, trunk_sd: dict[str, torch.Tensor], parts: dict[int, list[int]] | None) -> Path:
    """A VISSL/ClassyVision checkpoint: classy_state_dict.base_model.model.{trunk, heads}."""
    trunk = {_vissl_key(k, parts): v for k, v in trunk_sd.items()}
    heads = {"0.projection_head.0.weight": torch.zeros(4, 4), "0.prototypes0.weight": torch.zeros(10, 4)}
    torch.save({"classy_state_dict": {"base_model": {"model": {"trunk": trunk, "heads": heads}}},
                "iteration": 1}, path)
    return path


def _meta_sd(params: RegNetParams) -> dict[str, torch.Tensor]:
    return dict(build_regnet(params, device="meta").state_dict())


def _n_params(opened) -> int:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(torch.Size(i.shape).numel() for k, i in opened.trunk.infos().items() if not k.endswith(buffers))


def test_10b_key_names_the_plain_vissl_block() -> None:
    vissl = LAYOUTS["vissl"]
    assert vissl.to_timm("_feature_blocks.res4.block3-part1.block3-9.f.a.0.weight") == "s3.b10.conv1.conv.weight"
    assert vissl.to_timm("_feature_blocks.res2.block1-part0.block1-1.f.final_bn.running_var") == \
        "s1.b2.conv3.bn.running_var"
    assert vissl.to_timm("_feature_blocks.res5.block4-part0.block4-0.proj.weight") == "s4.b1.downsample.conv.weight"
    with pytest.raises(CheckpointError, match=r"part of stage 3 holds a block of stage 2"):
        vissl.to_timm("_feature_blocks.res4.block3-part1.block2-9.f.a.0.weight")
    with pytest.raises(CheckpointError, match=r"res3 must hold block2-\*"):
        vissl.to_timm("_feature_blocks.res3.block3-0.f.a.0.weight")


@pytest.mark.parametrize("preset, parts, model", [
    ("regnety_200mf", {1: [0], 2: [0], 3: [0, 2], 4: [0, 4]}, None),  # inferred from shapes
    ("small", {1: [0], 2: [0, 1], 3: [0, 2], 4: [0]}, SMALL),  # no preset: model= as the user passes it
])
def test_10b_part_layout_converts_and_loads(tmp_path: Path, preset: str, parts: dict, model) -> None:
    trunk = randomize(build_regnet(model or preset)).eval()
    sd = trunk.state_dict()
    src = _save_vissl(tmp_path / "seer_10b_like.torch", sd, parts)
    keys = torch.load(src, weights_only=True)["classy_state_dict"]["base_model"]["model"]["trunk"]
    assert sum("-part1." in k for k in keys) > 0  # the file really is in the part layout
    convert_weights(src, tmp_path / "out", model=model)
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(out) == set(sd) and all(torch.equal(out[k], v) for k, v in sd.items())  # renamed, not merged
    loaded = load_pretrained(src, model=model)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close_f64(loaded.double()(x), trunk.double()(x), "10B-layout trunk forward")


def test_a_block_in_two_parts_is_refused(tmp_path: Path) -> None:
    sd = randomize(build_regnet("regnety_tiny")).state_dict()
    trunk = {_vissl_key(k, {1: [0], 2: [0], 3: [0], 4: [0]}): v for k, v in sd.items()}
    dup = "_feature_blocks.res4.block3-part0.block3-1.f.a.0.weight"
    trunk[dup.replace("part0", "part1")] = trunk[dup]
    torch.save({"classy_state_dict": {"base_model": {"model": {"trunk": trunk, "heads": {}}}}}, tmp_path / "d.torch")
    with pytest.raises(CheckpointError, match=r"both map to trunk key 's3.b2.conv1.conv.weight'"):
        load_pretrained(tmp_path / "d.torch")


def test_seer_10b_shapes_in_the_part_layout_are_recognised(tmp_path: Path) -> None:
    src = _save_vissl(tmp_path / "seer_10b.torch", _meta_sd(PRESETS["seer_10b"]), SEER_10B_PARTS)
    keys = torch.load(src, weights_only=True)["classy_state_dict"]["base_model"]["model"]["trunk"]
    assert "_feature_blocks.res4.block3-part1.block3-9.f.a.0.weight" in keys  # the published key pattern
    opened = open_weights(src)
    assert opened.params == PRESETS["seer_10b"] and opened.layout == "vissl"
    assert _n_params(opened) == 9_323_934_872


@pytest.mark.parametrize("preset", list(PUBLISHED))
def test_published_seer_trunk_shapes_are_recognised(tmp_path: Path, preset: str) -> None:
    src = _save_vissl(tmp_path / f"seer_{preset}.torch", _meta_sd(PRESETS[preset]), None)
    opened = open_weights(src)
    assert opened.params == PRESETS[preset]
    assert _n_params(opened) == PUBLISHED[preset]
    both = _save_vissl(tmp_path / f"seer_{preset}_parts.torch", _meta_sd(PRESETS[preset]),
                       {1: [0], 2: [0], 3: [0, 9], 4: [0]})
    assert open_weights(both).params == PRESETS[preset]  # part layout (regnet_fsdp) as well


@pytest.mark.parametrize("net", FOREIGN_NETS, ids=lambda n: n.preset)
def test_networks_that_are_not_seer_fail_with_the_params_that_build_them(tmp_path: Path, net) -> None:
    src = _save_vissl(tmp_path / "foreign.torch", _meta_sd(net.params), None)
    literal = f"model=RegNetParams(depth={net.params.depth}, w0={net.params.w0}, wa={net.params.wa}"
    for model in (None, net.preset):  # inferred, and when the user names the SEER preset
        with pytest.raises(CheckpointError) as err:
            open_weights(src, model)
        message = str(err.value)
        assert "\n" not in message and f"it is {net.what}" in message and f"not {net.seer_name}" in message
        assert literal in message
    cli = json.loads(message.split("--model '")[1].split("'")[0])
    assert open_weights(src, cli).params == net.params  # the dict the message gives builds the file's network


def test_old_rg64_and_classy_256gf_messages() -> None:
    old64, classy256 = (n for n in FOREIGN_NETS)
    assert old64.params.stages()[0] == [368, 992, 1488, 2976]
    assert classy256.params.stages()[0] == [640, 1696, 2544, 5088]
    assert sum(p.numel() for p in build_regnet(classy256.params, device="meta").parameters()) == 821_051_008


def test_a_damaged_foreign_file_is_still_named(tmp_path: Path) -> None:
    old64 = FOREIGN_NETS[0]
    sd = _meta_sd(old64.params)
    del sd["s3.b4.conv2.conv.weight"]
    src = _save_vissl(tmp_path / "old64.torch", sd, None)
    with pytest.raises(CheckpointError, match=r"its stage widths are those of \(but it differs: missing key "
                                              r"'s3.b4.conv2.conv.weight'.*\) ClassyVision's old regnet_y_64gf"):
        open_weights(src)


def test_cli_convert_takes_the_json_model_and_prints_one_error_line(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from bigseer.cli import main

    sd = randomize(build_regnet(SMALL)).state_dict()
    src = _save_vissl(tmp_path / "small.torch", sd, SEER_10B_PARTS | {3: [0, 2]})
    spec = json.dumps({"depth": 11, "w0": 16, "wa": 4.0, "wm": 1.6, "group_width": 8, "stem_width": 16})
    assert main(["convert", str(src), "--out", str(tmp_path / "out"), "--model", spec]) == 0
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(torch.equal(out[k], v) for k, v in sd.items())
    capsys.readouterr()
    foreign = _save_vissl(tmp_path / "classy256.torch", _meta_sd(FOREIGN_NETS[1].params), None)
    assert main(["convert", str(foreign), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bigseer convert: error: ") and "regnet_y_256gf" in err[0]
    assert main(["convert", str(src), "--out", str(tmp_path / "y"), "--model", "{depth: 11}"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        ("bigseer convert: error: --model '{depth: 11}' is not valid JSON: Expecting property name enclosed in "
         "double quotes: line 1 column 2 (char 1)")]
