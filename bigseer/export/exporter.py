"""``bigseer export``: a training checkpoint (any backend, any world size) -> safetensors in the
timm / torchvision / hf layout, or a detectron2 ``.pth``; streamed one tensor at a time."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from bigseer import __version__
from bigseer.errors import CheckpointError
from bigseer.export.configs import hf_config, preset_name, timm_name, torchvision_block_params
from bigseer.export.layouts import get_layout
from bigseer.export.readers import TensorInfo
from bigseer.export.sources import DETECTRON2_FILE, META_LAYOUT, META_REGNET, OpenedWeights, open_weights
from bigseer.export.writer import parse_dtype, parse_shard_size, write_safetensors
from bigseer.models.regnet import RegNetParams

DETECTRON2_NOTE = ("SEER trunks expect RGB input normalised with ImageNet mean/std: set cfg.INPUT.FORMAT='RGB', "
                   "cfg.MODEL.PIXEL_MEAN=[123.675, 116.28, 103.53], cfg.MODEL.PIXEL_STD=[58.395, 57.12, 57.375] "
                   "(detectron2 defaults to BGR).")


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, layout: str = "timm", dtype: str = "fp32",
                      max_shard_size: int | str = "5GB", include_head: bool = False,
                      model: str | RegNetParams | dict[str, Any] | None = None) -> list[Path]:
    """Export the trunk (and optionally the head) of ``checkpoint`` to ``out``; returns the written files.

    ``checkpoint`` is a bigseer training checkpoint (step dir, ``checkpoints`` dir or run dir) of any
    format, or any weights ``load_pretrained`` accepts. Arguments are validated before anything is read.
    """
    get_layout(layout, export=True)
    target = parse_dtype(dtype)
    parse_shard_size(max_shard_size)
    opened = open_weights(checkpoint, model)
    try:
        return export_weights(opened, Path(out), layout=layout, dtype=target, max_shard_size=max_shard_size,
                              include_head=include_head)
    finally:
        opened.close()


def export_weights(opened: OpenedWeights, out: Path, *, layout: str, dtype: torch.dtype,
                   max_shard_size: int | str, include_head: bool) -> list[Path]:
    """Write an opened trunk in ``layout``; floating tensors are cast to ``dtype``, buffers keep theirs."""
    lay = get_layout(layout, export=True)
    params = opened.params
    if layout == "hf":
        config = hf_config(params)  # validates before writing
    if include_head and not opened.head:
        raise CheckpointError(f"--include_head: {opened.trunk.description} has no head tensors")
    plan: dict[str, tuple[Any, str, TensorInfo]] = {}
    for key, info in opened.trunk.infos().items():
        plan[lay.from_timm(key)] = (opened.trunk, key, _cast_info(info, dtype))
    if include_head:
        for key, (src, inner) in opened.head.items():
            plan[key] = (src, inner, _cast_info(src.infos()[inner], dtype))

    def fetch(name: str) -> torch.Tensor:
        src, inner, info = plan[name]
        t = src.get(inner)
        return t.to(info.dtype) if t.dtype != info.dtype else t

    out.mkdir(parents=True, exist_ok=True)
    regnet_json = json.dumps(asdict(params), sort_keys=True)
    if layout == "detectron2":
        written = [_write_detectron2(out, plan, fetch, regnet_json)]
    else:
        metadata = {META_REGNET: regnet_json, META_LAYOUT: layout}
        written = write_safetensors(out, {k: v[2] for k, v in plan.items()}, fetch, max_shard_size, metadata)
    if layout == "hf":
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        written.append(out / "config.json")
    info = {"layout": layout, "regnet": asdict(params), "preset": preset_name(params),
            "timm_name": timm_name(params), "dtype": str(dtype).replace("torch.", ""), "include_head": include_head,
            "source": opened.trunk.description, "source_meta": {k: opened.meta.get(k) for k in
                                                                ("step", "backend", "world_size", "format")},
            "bigseer_version": __version__}
    if layout == "torchvision":
        info["torchvision_block_params"] = torchvision_block_params(params)
        info["stem_width"] = params.stem_width
    if layout == "detectron2":
        info["note"] = DETECTRON2_NOTE
    (out / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    written.append(out / "export.json")
    return written


def _cast_info(info: TensorInfo, dtype: torch.dtype) -> TensorInfo:
    return TensorInfo(info.shape, dtype) if info.dtype.is_floating_point else info


def _write_detectron2(out: Path, plan: dict[str, Any], fetch: Any, regnet_json: str) -> Path:
    """detectron2 reads pickles only: {"model": pycls-keyed tensors, ...} for DetectionCheckpointer
    (``matching_heuristics`` maps them under ``backbone.bottom_up``). Not streamed: torch.save needs the
    whole dict."""
    sd = {name: fetch(name).clone() for name in plan}
    path = out / DETECTRON2_FILE
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": sd, "__author__": "bigseer", "matching_heuristics": True, META_REGNET: regnet_json,
                META_LAYOUT: "detectron2", "input_format": "RGB", "note": DETECTRON2_NOTE}, tmp)
    tmp.replace(path)
    return path
