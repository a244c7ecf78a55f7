"""Configs that other libraries need next to the weights, derived from ``RegNetParams`` and the
training meta: HF config.json / preprocessor_config.json / model card, timm config.json (local-dir),
torchvision BlockParams, timm model name."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from bigseer.errors import ConfigError
from bigseer.models.regnet import PRESETS, TIMM_NAMES, RegNetParams


def hf_config(params: RegNetParams) -> dict[str, Any]:
    """``config.json`` for ``transformers.RegNetModel`` (layer_type "y").

    HF's RegNetY fixes the bottleneck ratio at 1 and the SE width at round(block input / 4), and uses
    one ``groups_width`` (groups = max(1, width // groups_width)), which equals bigseer's per-stage
    ``min(g, w)`` because stage widths are rounded to multiples of g.
    """
    if params.bottleneck_ratio != 1.0 or params.se_ratio != 0.25:
        raise ConfigError("the hf layout needs bottleneck_ratio=1.0 and se_ratio=0.25 "
                          f"(got {params.bottleneck_ratio}, {params.se_ratio})")
    widths, depths, _ = params.stages()
    return {
        "architectures": ["RegNetModel"], "model_type": "regnet", "layer_type": "y",
        "num_channels": 3, "embedding_size": params.stem_width, "hidden_sizes": widths, "depths": depths,
        "groups_width": params.group_width, "hidden_act": "relu", "downsample_in_first_stage": True,
    }


def torchvision_block_params(params: RegNetParams) -> dict[str, Any]:
    """Keyword arguments for ``torchvision.models.regnet.BlockParams`` giving bigseer's exact network.

    torchvision's named ``regnet_y_*`` constructors round group widths differently (its regnet_y_8gf
    is not SEER's RG8), so bigseer always describes the per-stage widths/depths/group widths.
    """
    widths, depths, groups = params.stages()
    return {"depths": depths, "widths": widths, "group_widths": groups,
            "bottleneck_multipliers": [params.bottleneck_ratio] * 4, "strides": [2, 2, 2, 2],
            "se_ratio": params.se_ratio}


def build_torchvision(params: RegNetParams) -> Any:
    """``torchvision.models.RegNet`` with bigseer's architecture and ``fc = Identity`` (trunk only):
    it loads a torchvision-layout export with ``load_state_dict(strict=True)``."""
    from torch import nn
    from torchvision.models.regnet import BlockParams, RegNet

    model = RegNet(BlockParams(**torchvision_block_params(params)), stem_width=params.stem_width)
    model.fc = nn.Identity()
    return model


def timm_name(params: RegNetParams) -> str | None:
    """timm's model name for the same network (``timm.create_model(name, num_classes=0)``), if any."""
    for name, p in PRESETS.items():
        if p == params:
            return TIMM_NAMES.get(name)
    return None


def preset_name(params: RegNetParams) -> str | None:
    """The bigseer preset with these params, if any."""
    for name, p in PRESETS.items():
        if p == params:
            return name
    return None


# ---------------------------------------------------------------------------------------------
# Preprocessing and client configs written next to the weights (hf: preprocessor_config.json and a
# model card; timm: config.json for ``timm.create_model("local-dir:DIR")``).

META_INPUT = "bigseer.input"  # safetensors metadata: the InputSpec JSON, so re-exports keep it
DEFAULT_INPUT_SIZE = 224
EVAL_CROP_PCT = 0.875  # SEER / VISSL evaluation: resize the short side to 256, center-crop 224
TIMM_BASE_ARCH = "regnety_002"  # entrypoint for networks timm has no name for (every cfg field is overridden)


@dataclass(frozen=True)
class InputSpec:
    """The input the trunk was trained with: RGB, ``size`` px, normalised with ``mean`` / ``std``."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # where ``size`` came from, for export.json / the model card
    crop_pct: float = EVAL_CROP_PCT


def input_spec(meta: dict[str, Any]) -> InputSpec:
    """The trunk's training input. From a training checkpoint's ``meta["config"]``: size = the largest
    crop of ``crops`` (e.g. "2x224+4x96" -> 224) and ImageNet mean/std (bigseer always normalises with
    them); from a bigseer export's ``META_INPUT`` metadata: what that export recorded; else 224."""
    from bigseer.data.multicrop import IMAGENET_MEAN, IMAGENET_STD, parse_crops

    config: dict[str, Any] = meta["config"] if isinstance(meta.get("config"), dict) else {}
    crops = config.get("crops")
    if crops is not None:
        try:
            size = max(g.size for g in parse_crops(crops))
        except ConfigError as exc:
            raise ConfigError(f"checkpoint meta config 'crops': {exc}") from exc
        return InputSpec(size, IMAGENET_MEAN, IMAGENET_STD, f"largest pretraining crop of {crops!r}")
    if isinstance(meta.get(META_INPUT), str):
        return _spec_from_json(meta[META_INPUT])
    return InputSpec(DEFAULT_INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD, "default (no crops recorded in the source)")


def spec_json(spec: InputSpec) -> str:
    """``META_INPUT`` metadata value for ``spec``."""
    return json.dumps(asdict(spec), sort_keys=True)


def _spec_from_json(text: str) -> InputSpec:
    try:
        d = json.loads(text)
        mean, std = tuple(map(float, d["mean"])), tuple(map(float, d["std"]))
        spec = InputSpec(int(d["size"]), mean, std, str(d["source"]), float(d["crop_pct"]))  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"invalid {META_INPUT} metadata {text!r}: {exc}") from exc
    if spec.size < 1 or len(spec.mean) != 3 or len(spec.std) != 3 or not 0 < spec.crop_pct <= 1:
        raise ConfigError(f"invalid {META_INPUT} metadata {text!r}: needs size >= 1, 3 means, 3 stds and "
                          "crop_pct in (0, 1]")
    return spec


def hf_preprocessor_config(spec: InputSpec) -> dict[str, Any]:
    """``preprocessor_config.json`` for ``AutoImageProcessor`` (RegNet maps to ConvNextImageProcessor):
    bicubic resize of the short side to ``size / crop_pct``, center crop ``size``, /255, mean/std."""
    return {"image_processor_type": "ConvNextImageProcessor", "do_resize": True,
            "size": {"shortest_edge": spec.size}, "crop_pct": spec.crop_pct, "resample": 3, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(spec.mean),
            "image_std": list(spec.std)}


def timm_model_args(params: RegNetParams) -> dict[str, Any]:
    """Every ``timm.models.regnet.RegNetCfg`` field for ``params``: timm's ``RegNet`` overlays extra
    keyword arguments on its cfg, so any regnety entrypoint given these builds exactly this network."""
    w0 = int(params.w0) if float(params.w0).is_integer() else params.w0
    return {"depth": params.depth, "w0": w0, "wa": params.wa, "wm": params.wm, "group_size": params.group_width,
            "bottle_ratio": params.bottleneck_ratio, "se_ratio": params.se_ratio, "group_min_ratio": 0.0,
            "stem_width": params.stem_width, "downsample": "conv1x1", "linear_out": False, "preact": False,
            "num_features": 0, "act_layer": "relu", "norm_layer": "batchnorm"}


def timm_config(params: RegNetParams, spec: InputSpec) -> tuple[dict[str, Any], list[str]]:
    """(``config.json`` for ``timm.create_model("local-dir:DIR", pretrained=True)``, notes). The
    trunk has no classifier: ``num_classes`` 0 (pass ``num_classes=N`` to timm for a new head)."""
    name = timm_name(params)
    notes = []
    if name is None:
        notes.append(f"timm has no model named for these RegNetY params ({preset_name(params) or 'custom'}): "
                     f"config.json uses timm's {TIMM_BASE_ARCH} entrypoint with model_args setting every RegNetCfg "
                     "field (timm's RegNet overlays them on its cfg), so timm.create_model('local-dir:DIR') "
                     "builds exactly this network")
    widths = params.stages()[0]
    pretrained_cfg = {
        "tag": "bigseer", "custom_load": False, "input_size": [3, spec.size, spec.size], "fixed_input_size": False,
        "interpolation": "bicubic", "crop_pct": spec.crop_pct, "crop_mode": "center", "mean": list(spec.mean),
        "std": list(spec.std), "num_classes": 0, "pool_size": [max(1, spec.size // 32)] * 2,
        "first_conv": "stem.conv", "classifier": "head.fc", "license": "other",
        "description": "SwAV (SEER recipe) pretrained RegNetY trunk exported by bigseer"}
    config = {"architecture": name or TIMM_BASE_ARCH, "num_classes": 0, "num_features": widths[-1],
              "global_pool": "avg", "model_args": timm_model_args(params), "pretrained_cfg": pretrained_cfg}
    return config, notes


_CARD_CONFIG_KEYS = ("crops", "batch_size", "max_steps", "num_prototypes", "embed_dim", "head_dims", "temperature",
                     "epsilon", "sinkhorn_iters", "freeze_prototypes_iters", "queue_length", "base_lr", "schedule",
                     "weight_decay", "precision", "syncbn_group_size")


def model_card(params: RegNetParams, spec: InputSpec, meta: dict[str, Any], library: str, version: str) -> str:
    """README.md with Hub front matter (library_name, tags, ``license: other`` placeholder) and the
    architecture, preprocessing and recorded pretraining settings; the data section is a placeholder."""
    widths, depths, groups = params.stages()
    tags = ("image-feature-extraction", "self-supervised", "swav", "seer", "regnet", "bigseer")
    front = ["---", f"library_name: {library}", "license: other  # placeholder: set your weights' and data's licence",
             "pipeline_tag: image-feature-extraction", "tags:", *(f"- {t}" for t in tags), "---"]
    body = [
        f"# {preset_name(params) or 'custom RegNetY'} trunk, SwAV pretraining (bigseer {version})", "",
        "RegNetY trunk without classifier, pretrained with SwAV in the SEER recipe by bigseer.", "",
        "## Architecture", "", f"- RegNetParams: {json.dumps(asdict(params))}",
        f"- stage widths {widths}, depths {depths}, group widths {groups}; features: {widths[-1]}", "",
        "## Preprocessing", "",
        (f"RGB, resize the short side to {int(spec.size / spec.crop_pct)} (bicubic), center-crop {spec.size}, "
         f"scale to [0, 1], normalise with mean {list(spec.mean)} and std {list(spec.std)} (size: {spec.source})."),
        "", "## Pretraining", "", *_pretraining_lines(meta), "",
        "## Data", "", "TODO: describe the pretraining images (source, size, filtering, licence).", "",
        "## License", "", "`license: other` is a placeholder: state the licence before publishing.", ""]
    return "\n".join(front + [""] + body)


def _pretraining_lines(meta: dict[str, Any]) -> list[str]:
    """'- key: value' for the run facts and the pretraining settings the checkpoint recorded."""
    config: dict[str, Any] = meta["config"] if isinstance(meta.get("config"), dict) else {}
    lines = [f"- {k}: {meta[k]}" for k in ("step", "backend", "world_size") if meta.get(k) is not None]
    lines += [f"- {k}: {config[k]}" for k in _CARD_CONFIG_KEYS if config.get(k) is not None]
    return lines or ["- not recorded in the source checkpoint"]
