"""``bigseer convert``: timm / torchvision / HF / pycls-detectron2 / VISSL-SEER (incl. SEER-10B's part
layout) weights -> a bigseer trunk (timm-layout ``model.safetensors`` with the RegNet params in its
metadata, plus timm's local-dir config.json), ready to fine-tune."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bigseer.errors import ConfigError
from bigseer.export.exporter import export_weights
from bigseer.export.sources import open_weights
from bigseer.export.writer import parse_dtype, parse_shard_size
from bigseer.models.regnet import RegNetParams


def convert_weights(src: str | Path, out: str | Path, *, model: str | RegNetParams | dict[str, Any] | None = None,
                    dtype: str = "fp32", max_shard_size: int | str = "5GB") -> list[Path]:
    """Convert ``src`` (file or directory in any supported layout) into a bigseer trunk under ``out``.

    The architecture comes from the file's bigseer metadata, ``model=`` (preset name or params), or is
    inferred by matching shapes against the presets. Returns the written files.
    """
    target = parse_dtype(dtype)
    parse_shard_size(max_shard_size)
    opened = open_weights(src, model)
    try:
        return export_weights(opened, Path(out), layout="timm", dtype=target, max_shard_size=max_shard_size,
                              include_head=False)
    finally:
        opened.close()


def parse_model_arg(text: str | None) -> str | dict[str, Any] | None:
    """``--model``: a preset name, or a JSON dict of RegNetParams fields (``'{"depth": 20, "w0": 368, ...}'``)."""
    if text is None or not text.lstrip().startswith("{"):
        return text
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--model {text!r} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"--model {text!r} must be a preset name or a JSON object of RegNetParams fields")
    return value
