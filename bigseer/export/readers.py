"""Stream tensors out of bigseer training checkpoints and weight files.

Training checkpoints are format "elastic" (:mod:`bigseer.checkpoint.elastic`, read here through
``DcpSource``); "torch" / "dcp" / "deepspeed" are the per-backend formats of bigseer 0.1, still exported.

Every reader lists tensor names, shapes and dtypes without loading data (``infos()``) and returns one
tensor at a time (``get(name)``), so an export never holds the whole model: "torch" files are opened
with ``mmap=True`` and re-opened every ``window_bytes`` so touched pages are released; "dcp" loads one
key at a time with ``no_dist=True``; "deepspeed" uses ``zero_to_fp32``'s lazy mode over the mmap-ed
optimizer partitions (stage 0: the module states file).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from bigseer.errors import CheckpointError, ConfigError
from bigseer.models.regnet import RegNetParams, resolve_params


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of a stored tensor (no data)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * self.dtype.itemsize


class TensorSource:
    """Named tensors readable one at a time. Subclasses fill ``_infos`` and implement ``_read``."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._infos: dict[str, TensorInfo] = {}

    def infos(self) -> dict[str, TensorInfo]:
        """name -> TensorInfo, in storage order."""
        return dict(self._infos)

    def get(self, name: str) -> torch.Tensor:
        """The tensor called ``name`` (CPU, contiguous)."""
        if name not in self._infos:
            raise CheckpointError(f"{self.description}: no tensor {name!r}")
        return self._read(name)

    def _read(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        """Release files and mappings."""

    def __enter__(self) -> "TensorSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def one_line(exc: BaseException, first: bool = False) -> str:
    """The first (or last) non-empty line of an exception message, for one-line errors."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if first else lines[-1]) if lines else type(exc).__name__


def _info(t: Any) -> TensorInfo:
    return TensorInfo(tuple(int(s) for s in t.shape), t.dtype)


class DictSource(TensorSource):
    """Tensors already in memory (converted files, small state dicts)."""

    def __init__(self, tensors: dict[str, torch.Tensor], description: str = "state dict") -> None:
        super().__init__(description)
        self._tensors = tensors
        self._infos = {k: _info(v) for k, v in tensors.items()}

    def _read(self, name: str) -> torch.Tensor:
        return self._tensors[name]


def torch_load(path: Path, *, mmap: bool = True) -> Any:
    """``torch.load(weights_only=True)``; unreadable/truncated/foreign files -> CheckpointError."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if not (mmap and "mmap can only be used" in str(exc)):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: file not found") from exc
    except Exception as exc:  # torch raises RuntimeError / UnpicklingError / EOFError for bad files
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or foreign): "
                              f"{one_line(exc, first=True)}") from exc


class TorchFileSource(TensorSource):
    """A ``torch.save`` file holding a state dict at ``select(loaded)``; read through ``mmap``.

    The file is re-mapped after ``window_bytes`` of tensor data have been handed out, so resident
    file pages stay bounded by roughly that window plus the largest tensor.
    """

    def __init__(self, path: Path, select: Callable[[Any], dict[str, torch.Tensor]],
                 window_bytes: int = 128 << 20) -> None:
        super().__init__(str(path))
        self.path = path
        self._select = select
        self._window = window_bytes
        self._since_open = 0
        self._sd: dict[str, torch.Tensor] | None = None
        self._open()
        assert self._sd is not None
        self._infos = {k: _info(v) for k, v in self._sd.items() if isinstance(v, torch.Tensor)}

    def _open(self) -> None:
        loaded = torch_load(self.path, mmap=True)
        sd = self._select(loaded)
        if not isinstance(sd, dict):
            raise CheckpointError(f"{self.path}: does not contain a state dict")
        self._sd = sd
        self._since_open = 0

    def _read(self, name: str) -> torch.Tensor:
        if self._sd is None or self._since_open > self._window:
            self._sd = None  # drop the old mapping before re-mapping
            self._open()
        assert self._sd is not None
        t = self._sd[name]
        self._since_open += t.numel() * t.element_size()
        return t

    def close(self) -> None:
        self._sd = None


class DcpSource(TensorSource):
    """A torch.distributed.checkpoint directory read key by key without a process group."""

    def __init__(self, path: Path, prefix: str = "model.") -> None:
        super().__init__(str(path))
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.path = path
        self.prefix = prefix
        try:
            metadata = FileSystemReader(str(path)).read_metadata()
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable torch.distributed.checkpoint directory: "
                                  f"{one_line(exc)}") from exc
        for fqn, md in metadata.state_dict_metadata.items():
            if fqn.startswith(prefix) and isinstance(md, TensorStorageMetadata):
                self._infos[fqn[len(prefix):]] = TensorInfo(tuple(md.size), md.properties.dtype)

    def _read(self, name: str) -> torch.Tensor:
        from torch.distributed.checkpoint import CheckpointException, FileSystemReader, load

        info = self._infos[name]
        out = torch.empty(info.shape, dtype=info.dtype)
        try:
            with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
                warnings.simplefilter("ignore", UserWarning)
                load({self.prefix + name: out}, storage_reader=FileSystemReader(str(self.path)), no_dist=True)
        except (Exception, CheckpointException) as exc:  # CheckpointException derives from BaseException
            raise CheckpointError(f"{self.path}: cannot read {name!r} (truncated checkpoint?): "
                                  f"{one_line(exc)}") from exc
        return out


class DeepSpeedSource(TensorSource):
    """A ``DeepSpeedEngine.save_checkpoint`` directory (ZeRO 0-3), consolidated lazily to fp32.

    ZeRO 1-3 go through ``deepspeed.utils.zero_to_fp32`` in lazy mode (its optimizer partitions are
    mmap-ed; each tensor is gathered on ``get``). Note that zero_to_fp32 unpickles DeepSpeed's own
    files with ``weights_only=False``: only read checkpoints you wrote. Stage 0 reads
    ``mp_rank_00_model_states.pt["module"]`` with ``weights_only=True``.
    """

    def __init__(self, path: Path, tag: str | None = None) -> None:
        super().__init__(str(path))
        if tag is None:
            latest = path / "latest"
            tag = latest.read_text().strip() if latest.is_file() else "state"
        tag_dir = path / tag
        if not tag_dir.is_dir():
            raise CheckpointError(f"{path}: no DeepSpeed checkpoint tag directory {tag!r}")
        optim_files = sorted(tag_dir.glob("*optim_states.pt"))
        self._lazy: dict[str, Any] = {}
        if optim_files:
            from bigseer.parallel.deepspeed_files import zero_fp32_state_dict

            try:
                self._lazy = zero_fp32_state_dict(str(path), tag)
            except ImportError as exc:  # pragma: no cover - deepspeed is a dependency of the deepspeed backend
                raise CheckpointError(f"{path}: reading a ZeRO checkpoint needs deepspeed ({exc})") from exc
            except Exception as exc:
                raise CheckpointError(f"{tag_dir}: unreadable DeepSpeed ZeRO checkpoint (truncated?): "
                                      f"{one_line(exc)}") from exc
        else:
            model_file = tag_dir / "mp_rank_00_model_states.pt"
            loaded = torch_load(model_file, mmap=True)
            if not isinstance(loaded, dict) or not isinstance(loaded.get("module"), dict):
                raise CheckpointError(f"{model_file}: no 'module' state dict (not a DeepSpeed checkpoint)")
            self._lazy = loaded["module"]
        self._infos = {k: _info(v) for k, v in self._lazy.items() if hasattr(v, "shape")}

    def _read(self, name: str) -> torch.Tensor:
        v = self._lazy[name]
        return v if isinstance(v, torch.Tensor) else v.contiguous()

    def close(self) -> None:
        self._lazy = {}


# ---------------------------------------------------------------------------------------------
# Training checkpoint directories (docs/INTERFACES.md "Training checkpoint directory")


def resolve_step_dir(path: str | Path) -> Path | None:
    """The committed step directory for ``path`` (see :func:`bigseer.checkpoint.find_latest`)."""
    from bigseer.checkpoint.directory import find_latest

    return find_latest(path)


def read_meta(step_dir: Path) -> dict[str, Any]:
    """meta.json of a step directory, validated (:func:`bigseer.checkpoint.read_meta`)."""
    from bigseer.checkpoint.directory import read_meta as _read

    return _read(step_dir)


def meta_params(meta: dict[str, Any], where: Path) -> RegNetParams:
    """The RegNet params recorded in meta.json."""
    try:
        return resolve_params(meta["model"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{where}: invalid model params in meta.json: {exc}") from exc


def open_training_checkpoint(path: str | Path) -> tuple[TensorSource, RegNetParams, dict[str, Any]]:
    """Open a bigseer training checkpoint of any format: (source of ``trunk.*``/``head.*`` tensors,
    RegNet params, meta)."""
    step = resolve_step_dir(path)
    if step is None:
        raise CheckpointError(f"{path}: not a bigseer training checkpoint (no meta.json or latest)")
    meta = read_meta(step)
    params = meta_params(meta, step)
    fmt = meta["format"]
    if fmt == "elastic":  # every backend since bigseer 0.2: logical tensors in DCP (bigseer.checkpoint.elastic)
        from bigseer.checkpoint.elastic import STATE_DIR

        if not (step / STATE_DIR).is_dir():
            raise CheckpointError(f"{step}: format 'elastic' but no {STATE_DIR}/ directory")
        source: TensorSource = DcpSource(step / STATE_DIR)
    elif fmt == "torch":
        def select(loaded: Any) -> dict[str, torch.Tensor]:
            if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
                raise CheckpointError(f"{step / 'state.pt'}: no 'model' state dict")
            return loaded["model"]

        source = TorchFileSource(step / "state.pt", select)
    elif fmt == "dcp":
        if not (step / "dcp").is_dir():
            raise CheckpointError(f"{step}: format 'dcp' but no dcp/ directory")
        source = DcpSource(step / "dcp")
    else:
        if not (step / "deepspeed").is_dir():
            raise CheckpointError(f"{step}: format 'deepspeed' but no deepspeed/ directory")
        source = DeepSpeedSource(step / "deepspeed")
    if not any(k.startswith("trunk.") for k in source.infos()):
        raise CheckpointError(f"{source.description}: no 'trunk.*' tensors (foreign checkpoint?)")
    return source, params, meta


def iter_prefixed(infos: dict[str, TensorInfo], prefix: str) -> Iterator[tuple[str, TensorInfo]]:
    """(name without prefix, info) for names under ``prefix``."""
    for k, v in infos.items():
        if k.startswith(prefix):
            yield k[len(prefix):], v
