"""Run-config validation: every bad input fails up front with a message naming the field."""

from __future__ import annotations

import os

import json
from pathlib import Path

import pytest

from bigseer.commands.pretrain import add_arguments, config_from_args
from bigseer.recipe import seer_settings
from bigseer.config import PretrainConfig, finalize, resolve_backend, resolve_precision, validate
from bigseer.errors import ConfigError


def _ds(tmp_path: Path, **cfg: object) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.mark.parametrize("changes, match", [
    ({"backend": "horovod"}, "unknown backend 'horovod'"),
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"model": "regnety_99gf"}, "unknown RegNetY preset 'regnety_99gf'"),
    ({"batch_size": 0}, "batch_size=0 must be > 0"),
    ({"schedule": "step"}, "unknown schedule 'step'"),
    ({"data": "/nonexistent/images"}, "data path '/nonexistent/images' does not exist"),
    ({"warmup_steps": 50, "max_steps": 10}, "warmup_steps=50 must be < max_steps=10"),
    ({"head_dims": (0,)}, r"head_dims=\[0\]"),
    ({"crops": "2x"}, "bad crop spec '2x'"),
    ({"blur_p": 1.5}, r"blur_p=1.5 must be a probability"),
    ({"crop_ratio": (2.0, 1.0)}, r"crop_ratio=\[2.0, 1.0\] must be two numbers"),
    ({"crops": "1x64"}, "SwAV needs at least 2"),
    ({"crops_for_assign": (0, 6)}, r"crops_for_assign=\[0, 6\] must index the 6 crops"),
])
def test_bad_values_fail_before_work(changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate(PretrainConfig(**changes), world_size=1)


def test_world_size_dependent_checks() -> None:
    with pytest.raises(ConfigError, match="syncbn_group_size=3 is invalid: must be a positive integer dividing the world size 4"):
        validate(PretrainConfig(syncbn_group_size=3), world_size=4)
    validate(PretrainConfig(syncbn_group_size=2), world_size=4)
    with pytest.raises(ConfigError, match="num_prototypes=10 must be divisible by the world size 4"):
        validate(PretrainConfig(num_prototypes=10, shard_prototypes=True), world_size=4)


def test_deepspeed_config_contradictions(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a DeepSpeed JSON config"):
        validate(PretrainConfig(backend="deepspeed"), world_size=2)
    path = _ds(tmp_path, train_micro_batch_size_per_gpu=8)
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu=8 contradicts --batch_size 32"):
        validate(PretrainConfig(ds_config=path, batch_size=32), world_size=2)
    assert finalize(PretrainConfig(ds_config=path)).batch_size == 8  # taken from the JSON when not given
    validate(PretrainConfig(ds_config=path), world_size=2)
    path = _ds(tmp_path, train_batch_size=100)
    with pytest.raises(ConfigError, match="train_batch_size=100 contradicts"):
        validate(PretrainConfig(ds_config=path), world_size=2)
    with pytest.raises(ConfigError, match="DeepSpeed config '/nope.json' not found: give a JSON file or one of "
                                          "the shipped names .*zero2_fp32"):
        validate(PretrainConfig(ds_config="/nope.json"), world_size=2)
    # one reader: a shipped name resolves in validation and in the backend alike, from the package itself
    from bigseer.parallel.deepspeed import zero_stage
    from bigseer.parallel.ds_json import CONFIG_DIR, load_ds_config

    resolved = validate(PretrainConfig(ds_config="zero3_fp32"), world_size=2).ds_config
    assert resolved == os.path.join(CONFIG_DIR, "zero3_fp32.json") and "bigseer" in Path(CONFIG_DIR).parts
    assert zero_stage(load_ds_config("zero3_fp32")) == zero_stage(load_ds_config(resolved)) == 3
    path = _ds(tmp_path, fp16={"enabled": True})
    with pytest.raises(ConfigError, match="trains in fp16 but --precision is bf16"):
        validate(PretrainConfig(ds_config=path, precision="bf16"), world_size=2)
    cfg = PretrainConfig(ds_config=path)
    validate(cfg, world_size=2)
    assert resolve_backend(cfg, 2) == "deepspeed" and resolve_precision(cfg) == "fp16"
    for name, want in (("zero2_bf16", "bf16"), ("zero3_fp32", "fp32"), ("zero1", "fp16")):
        assert resolve_precision(PretrainConfig(ds_config=f"ds_configs/{name}.json")) == want, name
    with pytest.raises(ConfigError, match="backend is 'fsdp'"):
        validate(PretrainConfig(ds_config=path, backend="fsdp"), world_size=2)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        validate(PretrainConfig(ds_config=str(tmp_path / "bad.json")), world_size=2)


def test_defaults_that_depend_on_other_fields() -> None:
    cfg = finalize(PretrainConfig(max_steps=40))
    assert cfg.batch_size == 32 and cfg.warmup_steps == 4
    assert finalize(PretrainConfig(max_steps=10**6)).warmup_steps == 8000
    assert finalize(PretrainConfig(max_steps=3, warmup_steps=0)).warmup_steps == 0
    with pytest.raises(ConfigError, match="warmup_steps=8000 must be < max_steps=100"):
        validate(PretrainConfig(warmup_steps=8000, max_steps=100))


def test_auto_backend_and_roundtrip() -> None:
    assert resolve_backend(PretrainConfig(), 1) == "none"
    assert resolve_backend(PretrainConfig(), 2) == "ddp"
    cfg = PretrainConfig(head_dims=(32, 16), crops_for_assign=(0,))
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config key"):
        PretrainConfig.from_dict({"modle": "x"})


def test_flags_map_to_config_and_seer_recipe(monkeypatch) -> None:
    import argparse

    # --local_rank (the deepspeed launcher's) becomes LOCAL_RANK: undone after the test (setenv records "unset";
    # a leaked LOCAL_RANK made later accelerate tests try a distributed start)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("LOCAL_RANK")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--model", "regnety_test", "--head_dims", "8,4", "--resume",
                                              "--no_export", "--local_rank=0", "--deepspeed_config", "x.json",
                                              "--crop_ratio", "1,1"]))
    assert cfg.crop_ratio == (1.0, 1.0)
    assert cfg.model == "regnety_test" and cfg.head_dims == (8, 4) and cfg.resume and not cfg.export
    assert cfg.ds_config == "x.json" and os.environ["LOCAL_RANK"] == "0"
    seer = config_from_args(parser.parse_args(["--seer", "--num_prototypes", "3000"]))
    assert seer.model == seer_settings()["model"] == "regnety_256gf"
    assert seer.num_prototypes == 3000 and seer.sinkhorn_iters == 10 and seer.crops == "2x224+4x96"
    assert seer.precision == "fp16" and seer.max_steps > seer.warmup_steps == 8000
    validate(seer, world_size=64)
    ds = config_from_args(parser.parse_args(["--seer", "--deepspeed_config", "ds_configs/zero2_bf16.json"]))
    assert ds.precision == "auto" and resolve_precision(ds) == "bf16"
    validate(ds, world_size=64)


def test_validate_returns_the_finalized_config() -> None:
    cfg = validate(PretrainConfig(max_steps=40))
    assert cfg.batch_size == 32 and cfg.warmup_steps == 4
