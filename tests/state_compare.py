"""The complete saved state of a run at a step, and comparing two runs by it (not only by their losses).

A checkpoint ``OUT/checkpoints/step_XXXXXXXX`` (bigseer/checkpoint/store.py) is the whole state a resume
continues from; :func:`load_state` reads every item of it, without a process group, into one flat dict:

- ``state/<name>``: every logical tensor of the DCP ``state`` dir (bigseer/checkpoint/elastic.py): ``model.*``
  (parameters and buffers: BN ``running_mean`` / ``running_var`` / ``num_batches_tracked``), ``optim.*`` (LARS
  ``momentum_buffer``), ``queue.*`` (the SwAV queue);
- ``trainer/<path>``: trainer.pt (step, samples, lanes, global_batch, world_size, schedule, scaler, queue ages,
  catalog, health), nested dicts and lists flattened with ``/``;
- ``rng/rankNNNNN/<path>``: each rank's RNG (torch, numpy, python);
- ``meta/<path>``: meta.json (format, step, world_size, backend, model, head, the run's config).

:func:`load_export` reads an export dir into items of the same kind (``export/...``).

:func:`assert_same_state` is for bitwise claims (same world size, backend and kernels): the same keys,
``torch.equal`` on every tensor, ``==`` on everything else. :func:`assert_state_within_fp32_error` is for
a run continued on another world size or backend: floating tensors within the derived fp32 bound of
tests/numerics.py, everything else (step, samples, lanes, queue ages, BN batch counts, ...) exactly equal.
Items that legitimately differ are excluded only through the named tables below, each with its reason;
a caller adds its own through ``differ={pattern: reason}`` (every such pattern must match a key).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from tests.numerics import assert_states_within_fp32_error

# Differ between any two runs compared here (they are separate runs of the same training).
ANY_RUN = {
    "meta/config/output_dir": "each run writes its own directory",
    "meta/config/resume": "how the run was started (no / latest / auto), not what it computed",
    "export/export.json/source": "the path of the checkpoint it was exported from: each run's own directory",
    "meta/config/extra*": "the flags as typed (bigseer.cli records them; a resumed run adds --resume, an in-process "
                           "run records none); their values are the rest of meta/config, which is compared",
}
# Differ between runs started by different OS processes (the kill -9 / launcher / SLURM tests).
OTHER_PROCESS = {
    "rng/*/numpy/*": "bigseer never seeds NumPy's global generator nor draws from it (training draws from explicit "
                     "generators, bigseer/data), so it holds the start-up entropy of whichever process began the run",
    "rng/*/python/*": "the same for Python's `random`",
}
# Differ when the run continued on another world size or backend (test_elastic).
OTHER_LAYOUT = {
    "meta/world_size": "the world size that wrote the step",
    "trainer/world_size": "the world size that wrote the step (informational: resume reads lanes and global_batch)",
    "meta/backend": "the backend that wrote the step",
    "meta/config/backend": "the backend chosen by the resumed run",
    "meta/config/ds_config": "the DeepSpeed config of the resumed run's backend (None for ddp/fsdp)",
    "meta/config/batch_size": "per-rank batch = global batch / world size (trainer/global_batch is compared)",
    "meta/config/queue_length": "per-rank queue rows = 2 steps x per-rank batch (the queue.* tensors are compared)",
    "meta/config/shard_prototypes": "a layout choice (DeepSpeed cannot shard prototypes); the logical tensor is "
                                    "the same",
    "meta/head/shard_prototypes": "the same layout choice, as recorded for export",
    "rng/*": "one RNG file per rank: another world size has other files (and training draws nothing from them)",
}


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        if not value:
            out[prefix] = {}
        for k, v in value.items():
            _flatten(f"{prefix}/{k}", v, out)
    elif isinstance(value, (list, tuple)):
        if not value:
            out[prefix] = type(value)()
        for i, v in enumerate(value):
            _flatten(f"{prefix}/{i}", v, out)
    else:
        out[prefix] = value


def dcp_tensors(state_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every logical tensor of a DCP directory, whole (read in this process, no process group)."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(state_dir))
    md = reader.read_metadata().state_dict_metadata
    out = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in md.items()
           if isinstance(v, TensorStorageMetadata)}
    assert len(out) == len(md), f"{state_dir}: non-tensor entries {sorted(set(md) - set(out))}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(out, storage_reader=reader, no_dist=True)
    return out


def step_dir(run: str | Path, step: int) -> Path:
    return Path(run) / "checkpoints" / f"step_{step:08d}"


def load_state(run: str | Path, step: int) -> dict[str, Any]:
    """Everything checkpointed for ``step`` under run dir ``run`` (see the module docstring for the keys)."""
    d = step_dir(run, step)
    assert (d / "meta.json").is_file(), f"{d}: no committed checkpoint"
    out: dict[str, Any] = {f"state/{k}": v for k, v in dcp_tensors(d / "state").items()}
    _flatten("trainer", torch.load(d / "trainer.pt", weights_only=True), out)
    for f in sorted((d / "rng").glob("rank*.pt")):
        _flatten(f"rng/{f.stem}", torch.load(f, weights_only=True), out)
    _flatten("meta", json.loads((d / "meta.json").read_text()), out)
    items = sorted(p.name for p in d.iterdir())
    assert items == ["meta.json", "rng", "state", "trainer.pt"], f"{d}: unexpected items {items} (compare them too)"
    return out


def load_export(export_dir: str | Path) -> dict[str, Any]:
    """Everything a run exported, as items like :func:`load_state`'s: ``export/<file>.safetensors/<tensor>`` and
    ``.../__metadata__/<key>``, ``export/<file>.json/<path>``, ``export/<file>`` (bytes) for any other file."""
    from safetensors import safe_open

    out: dict[str, Any] = {}
    for f in sorted(Path(export_dir).rglob("*")):
        if not f.is_file():
            continue
        key = f"export/{f.relative_to(export_dir)}"
        if f.suffix == ".safetensors":
            with safe_open(str(f), "pt") as st:
                _flatten(f"{key}/__metadata__", st.metadata() or {}, out)
                for name in st.keys():
                    out[f"{key}/{name}"] = st.get_tensor(name)
        elif f.suffix == ".json":
            _flatten(key, json.loads(f.read_text()), out)
        else:
            out[key] = f.read_bytes()
    assert out, f"{export_dir}: nothing exported"
    return out


def _excluded(keys: set[str], tables: list[Mapping[str, str]], differ: Mapping[str, str]) -> set[str]:
    for pattern in differ:
        assert any(fnmatch.fnmatchcase(k, pattern) for k in keys), f"differ pattern {pattern!r} matches no item"
    patterns = [p for t in [*tables, differ] for p in t]
    return {k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and torch.equal(a, b)
    return type(a) is type(b) and a == b


def _split(got: Mapping[str, Any], ref: Mapping[str, Any], tables: list[Mapping[str, str]],
           differ: Mapping[str, str], what: str) -> list[str]:
    skip = _excluded(set(got) | set(ref), tables, differ)
    missing = sorted((set(got) ^ set(ref)) - skip)
    assert not missing, f"{what}: items in only one run: {missing[:10]}"
    return sorted(set(ref) - skip)


def assert_same_state(got: Mapping[str, Any], ref: Mapping[str, Any], what: str = "", *,
                      other_process: bool = False, differ: Mapping[str, str] | None = None) -> None:
    """Bitwise: the same items (up to :data:`ANY_RUN`, with ``other_process`` :data:`OTHER_PROCESS`, and
    ``differ``), every tensor ``torch.equal`` (same dtype), every other item ``==`` (same type)."""
    tables = [ANY_RUN] + ([OTHER_PROCESS] if other_process else [])
    keys = _split(got, ref, tables, differ or {}, what)
    bad = [k for k in keys if not _equal(got[k], ref[k])]
    assert not bad, f"{what}: {len(bad)} of {len(keys)} items differ, e.g. {bad[:8]}"


def assert_state_within_fp32_error(got: Mapping[str, Any], ref: Mapping[str, Any], other: Mapping[str, Any],
                                   init: Mapping[str, torch.Tensor], what: str = "", *,
                                   differ: Mapping[str, str] | None = None) -> None:
    """A run continued on another world size / backend: every floating tensor of ``ref`` within the bound of
    tests/numerics.py, with ``other`` (a second fp32 run of the reference computation in another summation
    order, e.g. on another world size) in the role of the second evaluation: ``|got - ref| <= 8 |ref - other|
    + 4 eps |other| + 8 rho |other - init|`` per tensor (``|ref - other|`` is the sum of two fp32 rounding
    errors of this computation, so if anything larger than ``|ref32 - ref64|``); ``init``: the state at step 0
    for the update-proportional part (:func:`initial_state`). Every other item (non-floating tensors such as
    ``num_batches_tracked``, step, samples, lanes, schedule, queue ages, ...) exactly equal, up to
    :data:`ANY_RUN`, :data:`OTHER_PROCESS`, :data:`OTHER_LAYOUT` and ``differ``."""
    keys = _split(got, ref, [ANY_RUN, OTHER_PROCESS, OTHER_LAYOUT], differ or {}, what)
    floats = [k for k in keys if isinstance(ref[k], torch.Tensor) and ref[k].is_floating_point()]
    bad = [k for k in keys if k not in floats and not _equal(got[k], ref[k])]
    assert not bad, f"{what}: {len(bad)} of {len(keys) - len(floats)} exact items differ, e.g. {bad[:8]}"
    assert set(floats) <= set(other) and set(floats) <= set(init), what
    assert all(got[k].dtype == ref[k].dtype for k in floats), what
    assert_states_within_fp32_error({k: got[k] for k in floats}, {k: ref[k] for k in floats},
                                    {k: other[k] for k in floats}, what, init={k: init[k] for k in floats})


def initial_state(cfg: Any, ref: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The step-0 value of every floating ``state/`` tensor of ``ref`` for a run of ``cfg`` (a PretrainConfig):
    the model as bigseer.engine builds it (its init is a function of (seed, name, row), so every backend and
    world size starts there), zeros for LARS momentum and the SwAV queue."""
    from bigseer.engine import build_swav_model

    model = {f"state/model.{k}": v for k, v in build_swav_model(cfg).state_dict().items()}
    out = {}
    for k, v in ref.items():
        if not (k.startswith("state/") and v.is_floating_point()):
            continue
        if k.startswith(("state/optim.", "state/queue.")):
            out[k] = torch.zeros_like(v)
        else:
            assert model[k].shape == v.shape, k
            out[k] = model[k]
    return out


def preempt_after(run: str | Path, step: int) -> None:
    """Make run dir ``run`` look like a job killed right after its step-``step`` checkpoint committed: later step
    dirs and metrics lines removed, ``latest`` on that step."""
    import shutil

    ckpts = Path(run) / "checkpoints"
    for d in ckpts.glob("step_*"):
        if int(d.name.split("_")[1]) > step:
            shutil.rmtree(d)
    (ckpts / "latest").write_text(f"step_{step:08d}\n")
    metrics = Path(run) / "metrics.jsonl"
    lines = [ln for ln in metrics.read_text().splitlines() if json.loads(ln)["step"] <= step]
    metrics.write_text("\n".join(lines) + "\n")


def step_records(run: str | Path) -> dict[int, dict]:
    """``metrics.jsonl`` of run dir ``run``, by step."""
    return {r["step"]: r for r in map(json.loads, (Path(run) / "metrics.jsonl").read_text().splitlines())}
