"""A checkpoint across backends: a model's ``state_pieces()`` saved in bigseer's elastic format, a step taken,
loaded back, loaded under FSDP2, one FSDP2 step, then exported and loaded as a pretrained trunk."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests.gpu.steps import (
    build_model,
    compare_states,
    full_float_state,
    lars,
    max_change,
    pieces_as_full,
    train_step,
)


def _save(par: Any, cfg: Any, backend: str, tmp: Path) -> tuple[Path, dict[str, Any]]:
    from bigseer.checkpoint import save_checkpoint
    from bigseer.trainer import checkpoint_meta

    par.sync_bn_stats()
    scaler = par.scaler_state()
    meta = checkpoint_meta(cfg, backend)
    step_dir = save_checkpoint(tmp, 7, par.state_pieces(), {"step": 7, "scaler": scaler}, meta)
    mib = sum(f.stat().st_size for f in step_dir.rglob("*") if f.is_file()) / 2**20
    return step_dir, {"scaler": scaler, "mib": mib}


def _move(par: Any, crops: list[torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """One applied step away from the checkpoint (weights and momentum); how far the weights moved."""
    for _ in range(4):
        if train_step(par, crops)[1]:
            break
    return max_change(ref, full_float_state(par))


def _load(par: Any, step_dir: Path) -> list[str]:
    """Load ``step_dir`` into ``par`` (pieces, then loss scale); the pieces the checkpoint lacked."""
    from bigseer.checkpoint import load_checkpoint

    trainer, _, missing = load_checkpoint(step_dir, par.state_pieces())
    par.after_load()
    par.load_scaler_state(trainer.get("scaler"))
    return list(missing)


def _load_under_fsdp(device: str, step_dir: Path, crops: list[torch.Tensor], ref: dict[str, torch.Tensor],
                     ref_pieces: dict[str, torch.Tensor]) -> dict[str, Any]:
    from bigseer import parallel

    fs = parallel.setup(build_model(device, meta=True), backend="fsdp", precision="fp16",
                        optimizer_factory=lars(device), device_type=device)
    missing = _load(fs, step_dir)
    pieces = pieces_as_full(fs.state_pieces())
    out = {"state": compare_states(ref, full_float_state(fs)), "missing_pieces": missing,
           "pieces": compare_states(ref_pieces, pieces), "scale": fs.loss_scale}
    out["step_loss"], out["step_applied"] = train_step(fs, crops)
    return out


def _export(step_dir: Path, out: Path, ref: dict[str, torch.Tensor]) -> dict[str, Any]:
    from bigseer.export import export_checkpoint, load_pretrained

    files = export_checkpoint(step_dir, out)
    trunk = {k: v.float() for k, v in load_pretrained(out).state_dict().items()}
    ref_trunk = {k[len("trunk."):]: v for k, v in ref.items() if k.startswith("trunk.")}
    return {"files": sorted(Path(f).name for f in files), "trunk": compare_states(ref_trunk, trunk)}


def roundtrip(par: Any, cfg: Any, backend: str, device: str, crops: list[torch.Tensor]) -> dict[str, Any]:
    """Save ``par`` (backend ``backend``), step, reload, load under fsdp, export: the numbers of each stage."""
    tmp = Path(tempfile.mkdtemp(prefix="bigseer_gpu_roundtrip_"))
    try:
        ref, ref_pieces = full_float_state(par), pieces_as_full(par.state_pieces())
        step_dir, saved = _save(par, cfg, backend, tmp)
        n: dict[str, Any] = {"backend": backend, "pieces": len(ref_pieces), "checkpoint_mib": saved["mib"],
                             "optim_pieces": sum(k.startswith("optim.") for k in ref_pieces),
                             "scale_saved": (saved["scaler"] or {}).get("scale")}
        n["moved"] = _move(par, crops, ref)
        n["reload_missing_pieces"] = _load(par, step_dir)
        n["reload"] = compare_states(ref, full_float_state(par))
        n["reload_pieces"] = compare_states(ref_pieces, pieces_as_full(par.state_pieces()))
        n["fsdp"] = _load_under_fsdp(device, step_dir, crops, ref, ref_pieces)
        n["export"] = _export(step_dir, tmp / "export", ref)
        return n
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
