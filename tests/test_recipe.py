"""The auto recipe: tiers by image size, prototypes by image count, valid PretrainConfig overrides, the data
probe reading image headers only, SEER one switch away, explicit flags winning, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFile

from bigseer.config import PretrainConfig, validate
from bigseer.errors import ConfigError, DataError
from bigseer.recipe import (DataProbe, apply_recipe, auto_recipe, crop_size, num_prototypes, probe_data,
                            recipe_flags, recipe_for)


@pytest.mark.parametrize("side, crops, zero_init", [
    (28, "2x32@0.7-1", False), (64, "2x64@0.7-1", False), (120, "2x128@0.3-1+4x64@0.1-0.3", False),
    (500, "2x224+4x96", True),
])
def test_tiers_by_image_size(side, crops, zero_init, tmp_path):
    r = auto_recipe(side, 1438)
    assert r.overrides["crops"] == crops and r.overrides["zero_init_last"] is zero_init
    assert r.description.startswith("recipe auto (") and "\n" not in r.description
    assert recipe_flags(r.overrides) in r.description
    # every override is a PretrainConfig field with a value validate() accepts
    validate(PretrainConfig(**r.overrides, output_dir=str(tmp_path)))


def test_small_images_get_weak_augmentation_and_large_get_seer():
    small, large = auto_recipe(32, 1000).overrides, auto_recipe(300, 1000).overrides
    assert small["jitter_strength"] < large["jitter_strength"] == 1.0
    assert small["blur_p"] == small["grayscale_p"] == 0.0 and large["blur_p"] == 0.5
    assert small["crop_ratio"] == (1.0, 1.0)


def test_prototypes_and_head_scale_with_image_count():
    assert num_prototypes(1438) == 96 and num_prototypes(10) == 32 and num_prototypes(10**9) == 16384
    assert all(num_prototypes(n) % 16 == 0 for n in (100, 5000, 77777, 10**6))
    assert auto_recipe(64, 1438).overrides["num_prototypes"] == 96
    assert auto_recipe(64, 10**6).overrides["head_dims"] == (2048,)
    assert crop_size(10) == 32 and crop_size(1000) == 224 and crop_size(71) == 64


def test_apply_recipe_keeps_explicit_fields_and_seer_is_one_switch():
    cfg = PretrainConfig(crops="2x48", epsilon=0.03)
    out = apply_recipe(cfg, auto_recipe(32, 1000), explicit={"crops"})
    assert out.crops == "2x48" and out.zero_init_last is False and out.epsilon == 0.03
    seer = recipe_for("seer")
    assert seer.overrides["num_prototypes"] == 16384 and seer.overrides["crops"] == "2x224+4x96"
    assert recipe_for("none").overrides == {}


def _png(path: str, w: int, h: int) -> None:
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def test_probe_data_reads_sides_from_headers(tmp_path, monkeypatch):
    for i, (w, h) in enumerate([(40, 30), (64, 64), (100, 50), (20, 80)]):
        _png(str(tmp_path / f"{i}.png"), w, h)
    (tmp_path / "notes.txt").write_text("not an image")
    class Decoded(BaseException):  # not an Exception: nothing on the way may swallow it
        pass

    def no_decode(*a, **k):
        raise Decoded("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)  # only headers may be read from files
    probe = probe_data(str(tmp_path))
    assert probe.n_images == 5 and sorted(probe.sides) == [20, 30, 50, 64]  # the text file is not an image
    assert probe.median_side == 40.0
    assert recipe_for("auto", probe=probe).overrides["crops"] == "2x32@0.7-1"


def test_probe_data_and_auto_errors(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError):
        probe_data(str(tmp_path))
    with pytest.raises(ConfigError, match="median_side"):
        auto_recipe(0, 10)
    with pytest.raises(ConfigError, match="n_images"):
        auto_recipe(32, 0)
    with pytest.raises(ConfigError, match="recipe='fast'"):
        recipe_for("fast")
    with pytest.raises(ConfigError, match="needs the data"):
        recipe_for("auto")
    assert DataProbe(3, (10, 30, 20)).median_side == 20
