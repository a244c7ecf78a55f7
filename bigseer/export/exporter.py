"""``bigseer export``: a training checkpoint (any backend, any world size) -> safetensors in the
timm / torchvision / hf layout, or a detectron2 ``.pth``; streamed one tensor at a time."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from bigseer.errors import CheckpointError
from bigseer.export.configs import (
    META_INPUT,
    InputSpec,
    hf_config,
    hf_preprocessor_config,
    input_spec,
    model_card,
    preset_name,
    spec_json,
    timm_config,
    timm_name,
    torchvision_block_params,
)
from bigseer.export.layouts import Layout, get_layout
from bigseer.export.readers import TensorInfo, TensorSource
from bigseer.export.sources import DETECTRON2_FILE, META_LAYOUT, META_REGNET, OpenedWeights, open_weights
from bigseer.export.writer import INDEX_FILE, SINGLE_FILE, parse_dtype, parse_shard_size, write_safetensors
from bigseer.models.regnet import RegNetParams
from bigseer.version import __version__

log = logging.getLogger("bigseer.export")
CLIENT_FILES = ("config.json", "preprocessor_config.json")  # rewritten (or removed) by every export

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
    """Write an opened trunk in ``layout`` plus what the layout's own clients read next to the weights
    (hf: config.json, preprocessor_config.json, README.md; timm: config.json, README.md) and export.json;
    floating tensors are cast to ``dtype``, buffers keep theirs."""
    params = opened.params
    spec = input_spec(opened.meta)  # validates before writing
    config = hf_config(params) if layout == "hf" else None  # validates before writing
    if include_head and not opened.head:
        raise CheckpointError(f"--include_head: {opened.trunk.description} has no head tensors")
    plan = _plan(opened, get_layout(layout, export=True), dtype, include_head)

    def fetch(name: str) -> torch.Tensor:
        src, inner, info = plan[name]
        t = src.get(inner)
        return t.to(info.dtype) if t.dtype != info.dtype else t

    out.mkdir(parents=True, exist_ok=True)
    for stale in CLIENT_FILES:
        (out / stale).unlink(missing_ok=True)
    regnet_json = json.dumps(asdict(params), sort_keys=True)
    if layout == "detectron2":
        written = [_write_detectron2(out, plan, fetch, regnet_json, spec_json(spec))]
    else:
        metadata = {META_REGNET: regnet_json, META_LAYOUT: layout, META_INPUT: spec_json(spec)}
        written = write_safetensors(out, {k: v[2] for k, v in plan.items()}, fetch, max_shard_size, metadata)
    notes: list[str] = []
    if config is not None:
        written += _write_hf_files(out, config, params, spec, opened.meta)
    if layout == "timm":
        written += _write_timm_files(out, params, spec, opened.meta, notes)
    if include_head and layout in ("hf", "timm"):
        notes.append("--include_head: the SwAV head tensors (head.*) are not part of the client's model: "
                     + ("transformers reports them as unused" if layout == "hf" else
                        "timm's local-dir loader refuses unexpected keys; export without --include_head for it"))
    for note in notes:
        log.info("%s: %s", out, note)
    info = _export_info(opened, layout, dtype, include_head, spec, notes)
    written.append(_write_text(out / "export.json", json.dumps(info, indent=2) + "\n"))
    return written


def _plan(opened: OpenedWeights, lay: Layout, dtype: torch.dtype,
          include_head: bool) -> dict[str, tuple[TensorSource, str, TensorInfo]]:
    """Output name -> (source, name in the source, info in the output dtype)."""
    plan: dict[str, tuple[TensorSource, str, TensorInfo]] = {}
    for key, info in opened.trunk.infos().items():
        plan[lay.from_timm(key)] = (opened.trunk, key, _cast_info(info, dtype))
    if include_head:
        for key, (src, inner) in opened.head.items():
            plan[key] = (src, inner, _cast_info(src.infos()[inner], dtype))
    return plan


def _export_info(opened: OpenedWeights, layout: str, dtype: torch.dtype, include_head: bool, spec: InputSpec,
                 notes: list[str]) -> dict[str, Any]:
    """export.json: what was written, from what, for which input, and the notes."""
    params = opened.params
    info: dict[str, Any] = {
        "layout": layout, "regnet": asdict(params), "preset": preset_name(params), "timm_name": timm_name(params),
        "dtype": str(dtype).replace("torch.", ""), "include_head": include_head,
        "input": {"size": spec.size, "mean": list(spec.mean), "std": list(spec.std), "crop_pct": spec.crop_pct,
                  "color": "RGB", "size_from": spec.source},
        "source": opened.trunk.description,
        "source_meta": {k: opened.meta.get(k) for k in ("step", "backend", "world_size", "format")},
        "bigseer_version": __version__}
    if layout == "torchvision":
        info["torchvision_block_params"] = torchvision_block_params(params)
        info["stem_width"] = params.stem_width
    if layout == "detectron2":
        info["note"] = DETECTRON2_NOTE
    if notes:
        info["notes"] = notes
    return info


def export_notes(out: str | Path) -> list[str]:
    """The notes an export wrote to ``out/export.json`` (what a client cannot do with it, and why)."""
    try:
        return list(json.loads((Path(out) / "export.json").read_text()).get("notes", []))
    except (OSError, ValueError):
        return []


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _write_hf_files(out: Path, config: dict[str, Any], params: RegNetParams, spec: InputSpec,
                    meta: dict[str, Any]) -> list[Path]:
    """config.json, preprocessor_config.json and the README.md model card: AutoModel, AutoImageProcessor,
    pipeline("image-feature-extraction") and AutoModelForImageClassification load the directory."""
    return [_write_text(out / "config.json", json.dumps(config, indent=2) + "\n"),
            _write_text(out / "preprocessor_config.json", json.dumps(hf_preprocessor_config(spec), indent=2) + "\n"),
            _write_text(out / "README.md", model_card(params, spec, meta, "transformers", __version__))]


def _write_timm_files(out: Path, params: RegNetParams, spec: InputSpec, meta: dict[str, Any],
                      notes: list[str]) -> list[Path]:
    """config.json for ``timm.create_model("local-dir:DIR", pretrained=True)`` and a model card."""
    config, config_notes = timm_config(params, spec)
    notes += config_notes
    if (out / INDEX_FILE).is_file():
        notes.append(f"sharded export: timm's local-dir loader reads one weights file ({SINGLE_FILE}), not "
                     f"{INDEX_FILE}; load with bigseer.load_pretrained(DIR) or export with a --max_shard_size "
                     "above the model size")
    return [_write_text(out / "config.json", json.dumps(config, indent=2) + "\n"),
            _write_text(out / "README.md", model_card(params, spec, meta, "timm", __version__))]


def _cast_info(info: TensorInfo, dtype: torch.dtype) -> TensorInfo:
    return TensorInfo(info.shape, dtype) if info.dtype.is_floating_point else info


def _write_detectron2(out: Path, plan: dict[str, Any], fetch: Any, regnet_json: str, input_json: str) -> Path:
    """detectron2 reads pickles only: {"model": pycls-keyed tensors, ...} for DetectionCheckpointer
    (``matching_heuristics`` maps them under ``backbone.bottom_up``). Not streamed: torch.save needs the
    whole dict."""
    sd = {name: fetch(name).clone() for name in plan}
    path = out / DETECTRON2_FILE
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": sd, "__author__": "bigseer", "matching_heuristics": True, META_REGNET: regnet_json,
                META_LAYOUT: "detectron2", META_INPUT: input_json, "input_format": "RGB",
                "note": DETECTRON2_NOTE}, tmp)
    tmp.replace(path)
    return path
