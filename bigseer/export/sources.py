"""Open any supported weights as timm-keyed trunk tensors: training checkpoints, bigseer exports in
every layout (single or sharded safetensors, detectron2 .pth), timm / torchvision / HF / pycls /
VISSL-SEER files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bigseer.errors import CheckpointError, ConfigError
from bigseer.export.layouts import detect_layout, get_layout
from bigseer.export.readers import (
    DictSource,
    TensorInfo,
    TensorSource,
    open_training_checkpoint,
    resolve_step_dir,
    torch_load,
)
from bigseer.export.validate import check_trunk, infer_preset
from bigseer.export.writer import INDEX_FILE, SINGLE_FILE
from bigseer.models.regnet import RegNetParams, resolve_params

# bigseer's own metadata keys (safetensors metadata and detectron2 .pth top level).
META_REGNET = "bigseer.regnet"
META_LAYOUT = "bigseer.layout"
DETECTRON2_FILE = "model.pth"
_STRIP_PREFIXES = ("module.", "trunk.", "regnet.", "backbone.bottom_up.", "_orig_mod.")
_NON_TRUNK_PREFIXES = ("fc.", "head.", "heads.", "classifier.", "pooler.")


class MappedSource(TensorSource):
    """A view of other sources under new names (timm trunk keys)."""

    def __init__(self, entries: dict[str, tuple[TensorSource, str]], description: str) -> None:
        super().__init__(description)
        self._entries = entries
        listed: dict[int, dict[str, TensorInfo]] = {}
        for k, (src, name) in entries.items():
            infos = listed.setdefault(id(src), src.infos())
            self._infos[k] = infos[name]

    def _read(self, name: str) -> torch.Tensor:
        src, inner = self._entries[name]
        return src.get(inner)

    def close(self) -> None:
        for src in {id(s): s for s, _ in self._entries.values()}.values():
            src.close()


class SafetensorsSource(TensorSource):
    """One or more safetensors files, read one tensor at a time with ``safe_open``."""

    def __init__(self, files: list[Path]) -> None:
        super().__init__(str(files[0].parent if len(files) > 1 else files[0]))
        from safetensors import safe_open

        self._handles = {}
        self._where: dict[str, Any] = {}
        self.metadata: dict[str, str] = {}
        for f in files:
            try:
                h = safe_open(str(f), framework="pt")
            except Exception as exc:
                raise CheckpointError(f"{f}: not a readable safetensors file (truncated or foreign): {exc}") from exc
            self._handles[f] = h
            self.metadata.update(h.metadata() or {})
            for k in h.keys():
                sl = h.get_slice(k)
                dtype = getattr(torch, _ST_TO_TORCH.get(sl.get_dtype(), "float32"))
                self._infos[k] = TensorInfo(tuple(sl.get_shape()), dtype)
                self._where[k] = h

    def _read(self, name: str) -> torch.Tensor:
        return self._where[name].get_tensor(name)

    def close(self) -> None:
        self._handles.clear()
        self._where.clear()


_ST_TO_TORCH = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


@dataclass
class OpenedWeights:
    """A trunk ready to stream: timm-keyed tensors, the architecture, where it came from."""

    trunk: TensorSource
    params: RegNetParams
    layout: str
    head: dict[str, tuple[TensorSource, str]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        self.trunk.close()


def open_weights(path: str | Path, model: str | RegNetParams | dict[str, Any] | None = None) -> OpenedWeights:
    """Open ``path`` (any supported checkpoint/weights file or directory) as timm-keyed trunk tensors,
    checked against the architecture (from the file's metadata, ``model=``, or inferred from shapes)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    given = resolve_params(model) if model is not None else None
    if p.name == "latest" and p.is_file() and resolve_step_dir(p.parent) is not None:
        p = p.parent  # OUTPUT_DIR/checkpoints/latest: the step it points at
    if p.is_dir() and resolve_step_dir(p) is not None:
        source, params, meta = open_training_checkpoint(p)
        if given is not None and given != params:
            check_trunk({k[6:]: v.shape for k, v in source.infos().items() if k.startswith("trunk.")}, given,
                        f"checkpoint {p}")
        trunk = {k[len("trunk."):]: (source, k) for k in source.infos() if k.startswith("trunk.")}
        head = {k: (source, k) for k in source.infos() if k.startswith("head.")}
        view = MappedSource(trunk, source.description)
        check_trunk({k: v.shape for k, v in view.infos().items()}, params, f"checkpoint {p}")
        return OpenedWeights(view, params, "timm", head, meta)
    file_meta: dict[str, Any] = {}
    if p.is_dir():
        if (p / INDEX_FILE).is_file():
            source = _sharded_safetensors(p / INDEX_FILE)
        elif (p / SINGLE_FILE).is_file():
            source = SafetensorsSource([p / SINGLE_FILE])
        elif (p / DETECTRON2_FILE).is_file():
            source, file_meta = _torch_weights(p / DETECTRON2_FILE)
        else:
            raise CheckpointError(f"{p}: no {SINGLE_FILE}, {INDEX_FILE}, {DETECTRON2_FILE} or training checkpoint")
    else:
        if p.suffix == ".safetensors":
            source = SafetensorsSource([p])
        elif p.name.endswith(".index.json"):
            source = _sharded_safetensors(p)
        else:
            source, file_meta = _torch_weights(p)
    if isinstance(source, SafetensorsSource):
        file_meta = dict(source.metadata)
    return _as_trunk(source, p, given, file_meta)


def _sharded_safetensors(index: Path) -> SafetensorsSource:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a safetensors index (needs 'weight_map'): {exc}") from exc
    files = sorted({index.parent / f for f in weight_map.values()})
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{index}: shard file(s) missing: {', '.join(missing)}")
    return SafetensorsSource(files)


def _torch_weights(path: Path) -> tuple[TensorSource, dict[str, Any]]:
    """A torch pickle -> (tensors, top-level metadata); unwraps VISSL, pycls, timm and detectron2 nesting."""
    loaded = torch_load(path, mmap=True)
    meta: dict[str, Any] = {}
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path}: does not hold a state dict (got {type(loaded).__name__})")
    if "classy_state_dict" in loaded:  # VISSL / ClassyVision SEER checkpoints
        try:
            sd = loaded["classy_state_dict"]["base_model"]["model"]["trunk"]
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: VISSL checkpoint without classy_state_dict.base_model.model.trunk") from exc
        meta[META_LAYOUT] = "vissl"
    elif isinstance(loaded.get("model_state"), dict):  # pycls
        sd = loaded["model_state"]
    else:
        for key in ("model", "state_dict", "module"):
            if isinstance(loaded.get(key), dict):
                meta = {k: v for k, v in loaded.items() if isinstance(v, str)}
                sd = loaded[key]
                break
        else:
            sd = loaded
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (foreign file?)")
    return DictSource(tensors, str(path)), meta


def _as_trunk(source: TensorSource, path: Path, given: RegNetParams | None, meta: dict[str, Any]) -> OpenedWeights:
    names = list(source.infos())
    stripped = {}
    for k in names:
        s = k
        changed = True
        while changed:
            changed = False
            for pre in _STRIP_PREFIXES:
                if s.startswith(pre):
                    s, changed = s[len(pre):], True
        stripped[k] = s
    layout = meta.get(META_LAYOUT) or detect_layout(list(stripped.values()))
    if layout is None:
        raise CheckpointError(f"{path}: no RegNetY trunk keys in any known layout (first key {names[0]!r})")
    lay = get_layout(layout)
    trunk: dict[str, tuple[TensorSource, str]] = {}
    head: dict[str, tuple[TensorSource, str]] = {}
    for k, s in stripped.items():
        if s.startswith(_NON_TRUNK_PREFIXES):
            head[s] = (source, k)
            continue
        try:
            name = lay.to_timm(s)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
        if name in trunk:
            raise CheckpointError(f"{path}: keys {trunk[name][1]!r} and {k!r} both map to trunk key {name!r} "
                                  f"({layout} layout)")
        trunk[name] = (source, k)
    view = MappedSource(trunk, str(path))
    shapes = {k: v.shape for k, v in view.infos().items()}
    what = f"{path} ({layout} layout)"
    if given is not None:
        params = given
    elif META_REGNET in meta:
        try:
            params = resolve_params(json.loads(meta[META_REGNET]))
        except (ValueError, ConfigError) as exc:
            raise CheckpointError(f"{path}: invalid {META_REGNET} metadata: {exc}") from exc
    else:
        params = infer_preset(shapes, what)[1]
    check_trunk(shapes, params, what)
    return OpenedWeights(view, params, layout, head, meta)
