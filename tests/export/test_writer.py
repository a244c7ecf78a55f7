"""Streaming safetensors writer: HF-style shards, index, metadata, dtype, bad sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bigseer.errors import ConfigError
from bigseer.export import export_checkpoint, load_pretrained
from bigseer.export.readers import TensorInfo
from bigseer.export.writer import write_safetensors
from tests.export.builders import TinySwAV, randomize, write_torch_checkpoint


@pytest.fixture()
def run_dir(tmp_path: Path) -> tuple[TinySwAV, Path]:
    model = randomize(TinySwAV("regnety_tiny"))
    write_torch_checkpoint(tmp_path / "run", model, "regnety_tiny")
    return model, tmp_path / "run"


def test_sharded_export_round_trips(run_dir, tmp_path: Path) -> None:
    model, run = run_dir
    out = tmp_path / "sharded"
    export_checkpoint(run, out, max_shard_size="20KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    ref = model.trunk.state_dict()
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in ref.values())
    merged = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            data = sum(f.get_tensor(k).nbytes for k in f.keys())
            assert data <= 20_000 or len(list(f.keys())) == 1  # only an oversized tensor gets a shard alone
            meta = f.metadata()
            assert meta["format"] == "pt" and json.loads(meta["bigseer.regnet"])["depth"] == 6
            for k in f.keys():
                assert index["weight_map"][k] == shard.name
                merged[k] = f.get_tensor(k)
    assert set(merged) == set(ref)
    for k, v in ref.items():
        assert torch.equal(merged[k], v), k
    trunk = load_pretrained(out)
    assert all(torch.equal(trunk.state_dict()[k], v) for k, v in ref.items())
    # re-exporting into the same directory as one file removes the old shards and index
    export_checkpoint(run, out)
    assert sorted(p.name for p in out.glob("model*")) == ["model.safetensors"]


def test_writer_output_is_valid_safetensors_for_every_dtype(tmp_path: Path) -> None:
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.tensor(12),
               "d": torch.randn(2, 2).half(), "e": torch.zeros(0), "f": torch.tensor([True, False])}
    infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in tensors.items()}
    write_safetensors(tmp_path, infos, tensors.__getitem__, "1GB", {"x": "y"})
    loaded = load_file(str(tmp_path / "model.safetensors"))
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k


def test_fp16_export_keeps_buffers_integer(run_dir, tmp_path: Path) -> None:
    _, run = run_dir
    export_checkpoint(run, tmp_path / "o", dtype="fp16")
    sd = load_file(str(tmp_path / "o" / "model.safetensors"))
    assert sd["stem.conv.weight"].dtype == torch.float16
    assert sd["stem.bn.num_batches_tracked"].dtype == torch.int64


@pytest.mark.parametrize("kwargs, message", [
    ({"max_shard_size": 0}, "max_shard_size 0 is invalid"),
    ({"max_shard_size": "0GB"}, "max_shard_size '0GB' is invalid"),
    ({"max_shard_size": "lots"}, "max_shard_size 'lots' is invalid"),
    ({"layout": "keras"}, "unknown layout 'keras'"),
    ({"layout": "vissl"}, "unknown layout 'vissl'"),
    ({"dtype": "int8"}, "unknown dtype 'int8'"),
])
def test_bad_arguments_fail_before_reading(tmp_path: Path, kwargs: dict, message: str) -> None:
    # the checkpoint does not even exist: argument errors come first
    with pytest.raises(ConfigError, match=message):
        export_checkpoint(tmp_path / "missing", tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_export_and_convert(run_dir, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bigseer.cli import main

    model, run = run_dir
    assert main(["export", str(run), "--out", str(tmp_path / "tv"), "--layout", "torchvision",
                 "--include_head"]) == 0
    sd = load_file(str(tmp_path / "tv" / "model.safetensors"))
    assert torch.equal(sd["head.weight"], model.head.weight.detach())
    assert torch.equal(sd["trunk_output.block1.block1-0.f.a.0.weight"], model.trunk.s1.b1.conv1.conv.weight.detach())
    assert main(["convert", str(tmp_path / "tv" / "model.safetensors"), "--out", str(tmp_path / "back")]) == 0
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(back) == set(model.trunk.state_dict())
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--layout", "onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # convert writes timm's local-dir config.json; regnety_tiny has no timm name, which the note explains
    assert len(err) == 2 and err[0].startswith("bigseer convert: note: timm has no model named for these RegNetY "
                                               "params (regnety_tiny): config.json uses timm's regnety_002")
    assert err[1] == "bigseer export: error: unknown layout 'onnx'; choose one of: timm, torchvision, hf, detectron2"
