"""Streaming safetensors writer: one tensor in memory at a time, HF-style shards above a size.

Shard planning uses ``huggingface_hub.split_torch_state_dict_into_shards`` on meta tensors (names,
shapes, dtypes only). Each shard file is then written tensor by tensor in the safetensors format
(8-byte little-endian header length, JSON header with ``__metadata__``, raw little-endian data) so peak
memory is about the largest tensor, never a whole shard (``safetensors.torch.save_file`` needs the
whole shard in memory and copies it to bytes).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable

import torch

from bigseer.errors import ConfigError
from bigseer.export.readers import TensorInfo

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_PATTERN = "model{suffix}.safetensors"

_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    """'fp32' | 'bf16' | 'fp16' -> torch dtype."""
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def parse_shard_size(size: int | str) -> int:
    """'5GB' / '500MB' / bytes -> a positive number of bytes (ConfigError otherwise)."""
    from huggingface_hub.serialization._base import parse_size_to_int

    try:
        text = str(size).strip()
        n = size if isinstance(size, int) else int(text) if text.lstrip("-").isdigit() else parse_size_to_int(text)
    except ValueError as exc:
        raise ConfigError(f"max_shard_size {size!r} is invalid: use bytes or e.g. '5GB', '500MB'") from exc
    if n <= 0:
        raise ConfigError(f"max_shard_size {size!r} is invalid: must be > 0")
    return n


def write_safetensors(out_dir: Path, infos: dict[str, TensorInfo], fetch: Callable[[str], torch.Tensor],
                      max_shard_size: int | str, metadata: dict[str, str]) -> list[Path]:
    """Write ``infos``' tensors (``fetch(name)`` returns each, already in its final dtype) to
    ``model.safetensors`` or HF shards + index. Returns the written files (index last)."""
    from huggingface_hub import split_torch_state_dict_into_shards

    limit = parse_shard_size(max_shard_size)
    meta_sd = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in infos.items()}
    split = split_torch_state_dict_into_shards(meta_sd, filename_pattern=_PATTERN, max_shard_size=limit)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in list(out_dir.glob("model-*-of-*.safetensors")) + [out_dir / INDEX_FILE, out_dir / SINGLE_FILE]:
        stale.unlink(missing_ok=True)
    file_meta = {"format": "pt", **metadata}
    written = []
    for filename, names in split.filename_to_tensors.items():
        path = out_dir / filename
        _write_file(path, [(n, infos[n]) for n in names], fetch, file_meta)
        written.append(path)
    if split.is_sharded:
        index = {"metadata": {**split.metadata, "total_size": sum(v.nbytes for v in infos.values())},
                 "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        written.append(out_dir / INDEX_FILE)
    return written


def _write_file(path: Path, entries: list[tuple[str, TensorInfo]], fetch: Callable[[str], torch.Tensor],
                metadata: dict[str, str]) -> None:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, info in entries:
        if info.dtype not in _ST_DTYPES:
            raise ConfigError(f"tensor {name!r} has dtype {info.dtype}, which safetensors cannot store")
        header[name] = {"dtype": _ST_DTYPES[info.dtype], "shape": list(info.shape),
                        "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data start to 8 bytes, as safetensors does
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, info in entries:
            t = fetch(name)
            if tuple(t.shape) != info.shape or t.dtype != info.dtype:
                raise ConfigError(f"tensor {name!r} changed while exporting: planned {list(info.shape)} "
                                  f"{info.dtype}, got {list(t.shape)} {t.dtype}")
            if t.numel():
                f.write(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
            del t
    tmp.replace(path)
