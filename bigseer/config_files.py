"""Run configs as YAML files: ``bigseer pretrain --config run.yaml``, flags override the file.

A file has one section per component, holding the settings that component owns (``SECTIONS``); flat keys
work too. Parsing and type validation are omegaconf's, against :class:`bigseer.config.PretrainConfig`
(a structured config), with one-line errors naming the file and the key. Every run writes its resolved
config to ``OUTPUT_DIR/config.yaml`` (:func:`dump_config`): ``--config`` of that file runs it again.
The SEER recipes ship as such files (``bigseer/recipes/*.yaml``) and resolve by name (``--config seer_rg256``).
The ``augment`` keys are the fields of :class:`bigseer.data.AugmentConfig`, the one augmentation config of
pretraining and evaluation.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from bigseer.config import CONFIG_SECTIONS, PretrainConfig
from bigseer.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"

# section -> the PretrainConfig fields it holds: the fields of the dataclass its component owns
SECTIONS: dict[str, tuple[str, ...]] = {name: tuple(f.name for f in fields(cls)) for name, cls in CONFIG_SECTIONS}
_OWNER = {name: section for section, names in SECTIONS.items() for name in names}


def recipe_path(name_or_path: str) -> Path:
    """A config file path, or the shipped recipe of that name (``seer_rg256``, ``seer_10b``, ...)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = RECIPES_DIR / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
    if shipped.is_file():
        return shipped
    names = sorted(f.stem for f in RECIPES_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!r} not found: give a YAML file or a shipped recipe ({', '.join(names)})")


def _flatten(doc: dict[str, Any], where: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if key in SECTIONS and isinstance(value, dict):
            for inner, v in value.items():
                if inner not in SECTIONS[key]:
                    owner = _OWNER.get(inner)
                    hint = f" (it belongs in section {owner!r})" if owner else ""
                    raise ConfigError(f"{where}: unknown key {key}.{inner}{hint}; section {key} holds "
                                      f"{', '.join(SECTIONS[key])}")
                flat[inner] = v
        elif key in _OWNER:
            flat[key] = value
        else:
            raise ConfigError(f"{where}: unknown key {key!r}; sections are {', '.join(SECTIONS)}")
    return flat


def load_config_file(name_or_path: str) -> dict[str, Any]:
    """The settings a config file gives (flat ``PretrainConfig`` field names), type-checked by omegaconf."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = recipe_path(name_or_path)
    try:
        doc = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # yaml.YAMLError, OmegaConf errors
        raise ConfigError(f"{path}: not a valid YAML config: {str(exc).splitlines()[0]}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a config file holds sections (model, data, ...), not {type(doc).__name__}")
    flat = _flatten(doc, str(path))
    schema = OmegaConf.structured(PretrainConfig)
    try:
        merged = OmegaConf.merge(schema, flat)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        msg = str(exc).splitlines()[0]
        where = f"{_OWNER.get(key, '?')}.{key}" if key else "?"
        raise ConfigError(f"{path}: {where}: {msg}") from None
    out = OmegaConf.to_container(merged)
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in out.items() if k in flat}


def sectioned(cfg: PretrainConfig) -> dict[str, dict[str, Any]]:
    """``cfg`` as the sectioned document a config file holds."""
    d = cfg.to_dict()
    return {section: {name: d[name] for name in names} for section, names in SECTIONS.items()}


def dump_config(cfg: PretrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write the resolved ``cfg`` as YAML (atomically), each key commented with its field's description;
    ``--config`` of it runs the same."""
    import re

    import yaml

    from bigseer.atomic import write_text_atomic

    helps = {f.name: f.metadata.get("help", "") for f in fields(PretrainConfig)}
    lines = []
    for line in yaml.safe_dump(sectioned(cfg), sort_keys=False, width=1000).splitlines():
        key = re.match(r"^  (\w+):", line)
        lines.append(f"{line}  # {helps[key.group(1)]}" if key and helps.get(key.group(1)) else line)
    header = "# resolved bigseer pretrain config: `bigseer pretrain --config THIS_FILE` runs it again\n"
    return write_text_atomic(path, header + "\n".join(lines) + "\n")


def check_sections_cover_config() -> None:
    """Every PretrainConfig field belongs to exactly one section (checked by the tests)."""
    names = [f.name for f in fields(PretrainConfig)]
    listed = [n for ns in SECTIONS.values() for n in ns]
    missing, extra = set(names) - set(listed), set(listed) - set(names)
    dup = {n for n in listed if listed.count(n) > 1}
    if missing or extra or dup:
        raise AssertionError(f"SECTIONS: missing {sorted(missing)}, unknown {sorted(extra)}, twice {sorted(dup)}")
