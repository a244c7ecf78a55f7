"""``bigseer.data.settings``: the ``augment`` section a run config holds is the one augmentation config's
fields, under the same names and with the same defaults (``AugmentConfig.of`` maps them by name)."""

from __future__ import annotations

from dataclasses import MISSING, fields

from bigseer.config import PretrainConfig
from bigseer.data import AugmentConfig
from bigseer.data.settings import AugmentSettings


def test_augment_section_is_augment_configs_fields_with_its_defaults() -> None:
    config = {f.name: f.default for f in fields(AugmentConfig)}
    for f in fields(AugmentSettings):
        assert f.name in config, f"augment.{f.name} is no AugmentConfig field"
        assert f.default is not MISSING and tuple(f.default) == config[f.name] if isinstance(f.default, tuple) \
            else f.default == config[f.name], f.name


def test_a_run_configs_augment_section_reaches_augment_config() -> None:
    cfg = PretrainConfig(flip_p=0.0, jitter_strength=0.4, grayscale_p=0.1, blur_p=0.0, crop_ratio=(1.0, 1.0))
    aug = AugmentConfig.of(cfg)
    assert (aug.flip_p, aug.jitter_strength, aug.grayscale_p, aug.blur_p, aug.crop_ratio) == \
        (0.0, 0.4, 0.1, 0.0, (1.0, 1.0))
    assert AugmentConfig.of(PretrainConfig()) == AugmentConfig()
