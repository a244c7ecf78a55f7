"""``bigseer.downstream.config``: evaluation's augmentation is pretraining's ``AugmentConfig``, by field name."""

from __future__ import annotations

import pytest

from bigseer.data import AugmentConfig
from bigseer.downstream.config import EvalConfig
from bigseer.errors import ConfigError


def test_augment_is_augment_config_of_the_resolved_mode() -> None:
    finetune = EvalConfig(data="d", model="m", flip_p=0.0).resolved().augment()
    assert finetune == AugmentConfig(flip_p=0.0, jitter_strength=0.8, grayscale_p=0.2, blur_p=0.5)
    linear = EvalConfig(data="d", model="m", mode="linear", blur_p=0.3).resolved().augment()
    assert linear == AugmentConfig(jitter_strength=0.0, grayscale_p=0.0, blur_p=0.3)
    with pytest.raises(ConfigError, match="resolved"):
        EvalConfig(data="d", model="m").augment()
