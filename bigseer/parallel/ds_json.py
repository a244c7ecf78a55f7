"""The one DeepSpeed-JSON reader: a dict, a JSON path, or a name of a config shipped in the package.

``resolve_ds_config("zero2")`` finds ``bigseer/parallel/ds_configs/zero2.json`` (installed with the
package; the repository's top-level ``ds_configs/`` is the same folder), so ``--ds_config zero2`` and
``--deepspeed_config ds_configs/zero2.json`` mean the same everywhere. Light: no deepspeed import.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from bigseer.errors import ConfigError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ds_configs")


def shipped_configs() -> list[str]:
    """Names of the DeepSpeed configs that ship with bigseer."""
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))


def ds_config_path(name_or_path: str) -> str:
    """The file a ``--ds_config`` value names; ConfigError listing the shipped names when there is none."""
    if os.path.isfile(name_or_path):
        return name_or_path
    base = os.path.basename(name_or_path)
    candidate = os.path.join(CONFIG_DIR, base if base.endswith(".json") else f"{base}.json")
    if os.path.isfile(candidate):
        return candidate
    raise ConfigError(f"DeepSpeed config {name_or_path!r} not found: give a JSON file or one of the shipped names "
                      f"({', '.join(shipped_configs())})")


def load_ds_config(name_or_path: str | dict[str, Any]) -> dict[str, Any]:
    """The config as a dict (a copy when a dict is given); one-line ConfigError for a missing or bad file."""
    if isinstance(name_or_path, dict):
        return copy.deepcopy(name_or_path)
    path = ds_config_path(name_or_path)
    try:
        with open(path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"DeepSpeed config {path} must be a JSON object")
    return cfg
