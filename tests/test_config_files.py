"""Run configs as YAML files: sections owned by components, flags override the file, one-line errors naming
the key, shipped SEER recipes, and the round trip: a run's resolved config.yaml re-runs with identical losses."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bigseer.commands.pretrain import add_arguments, config_from_args
from bigseer.config_files import check_sections_cover_config, load_config_file
from bigseer.engine import pretrain
from bigseer.errors import ConfigError

TINY = ["--model", "regnety_test", "--crops", "2x32+2x16", "--head_dims", "32", "--embed_dim", "16",
        "--num_prototypes", "32", "--max_steps", "3", "--batch_size", "8", "--no_export", "--seed", "9"]


def _cfg(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_every_setting_belongs_to_one_section() -> None:
    check_sections_cover_config()


def test_resolved_config_reruns_with_identical_losses(tmp_path: Path) -> None:
    first = pretrain(_cfg([*TINY, "--output_dir", str(tmp_path / "a"), "--flip_p", "0.3"]))
    written = tmp_path / "a" / "config.yaml"
    text = written.read_text()
    assert "augment:" in text and "flip_p: 0.3" in text and "swav:" in text
    again = pretrain(_cfg(["--config", str(written), "--output_dir", str(tmp_path / "b")]))
    assert again.losses == first.losses and len(first.losses) == 3


def test_flags_override_the_file_and_sections_or_flat_keys(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("swav: {num_prototypes: 64, epsilon: 0.03}\noptim:\n  base_lr: 0.6\nseed: 4\n")
    cfg = _cfg(["--config", str(tmp_path / "run.yaml"), "--epsilon", "0.02"])
    assert (cfg.num_prototypes, cfg.epsilon, cfg.base_lr, cfg.seed) == (64, 0.02, 0.6, 4)


@pytest.mark.parametrize("text, match", [
    ("swav: {flip_p: 0.2}", r"unknown key swav.flip_p \(it belongs in section 'augment'\)"),
    ("optim: {base_lr: fast}", r"optim.base_lr: .*fast"),
    ("colour: 1", r"unknown key 'colour'; sections are model, data, augment"),
    ("- a\n- b", r"holds sections"),
    ("swav: {epsilon: [", r"not a valid YAML config"),
])
def test_bad_files_are_one_line_naming_the_key(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config_file(str(tmp_path / "bad.yaml"))
    assert "\n" not in str(info.value) and "bad.yaml" in str(info.value)


def test_shipped_recipes_and_seer_switch() -> None:
    seer = _cfg(["--seer"])
    assert seer == _cfg(["--config", "seer_rg256"])
    assert (seer.model, seer.num_prototypes, seer.syncbn_group_size) == ("regnety_256gf", 16384, 64)
    ten = _cfg(["--config", "seer_10b"])
    assert (ten.model, ten.crops, ten.epsilon, ten.syncbn_group_size) == ("seer_10b", "2x160+4x96", 0.03, 8)
    small = _cfg(["--config", "small_images", "--model", "regnety_test"])
    assert small.zero_init_last is False and small.crop_ratio == (1.0, 1.0)
    with pytest.raises(ConfigError, match="shipped recipe .*seer_10b"):
        load_config_file("no_such_recipe")
