"""Export time and peak RSS: `bigseer export` (streaming) vs the plain hub way, on a large trunk.

    .venv/bin/python benchmarks/bench_export.py [--preset regnety_256gf] [--workdir /tmp/bench_export]

Builds a "torch"-format training checkpoint (trunk.* + head.*, about 5 GB for regnety_256gf) in a
subprocess, then runs, each in its own fresh subprocess so peak RSS (getrusage ru_maxrss and
/proc VmHWM) covers the export only:
  ours:     bigseer.export.export_checkpoint(ckpt, out)          (mmap reader, streaming writer)
  baseline: torch.load(state.pt, mmap=True, weights_only=True)["model"] -> strip "trunk." ->
            huggingface_hub.save_torch_state_dict(sd, out)      (same 5GB shard limit)
Both outputs are checked against the checkpoint on a few tensors. Needs ~3x the model size on disk
and ~2x in free memory (for the baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _peak() -> dict[str, float]:
    hwm = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return {"ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "vmhwm_mib": hwm}


def child_create(preset: str, ckpt: Path) -> dict:
    import torch

    from bigseer.models import build_regnet

    t0 = time.perf_counter()
    meta_model = build_regnet(preset, device="meta")
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in meta_model.state_dict().items():
        t = torch.empty(v.shape, dtype=v.dtype)
        if t.is_floating_point():
            t.normal_(0, 0.02, generator=g)
        else:
            t.fill_(3)
        sd["trunk." + k] = t
    sd["head.weight"] = torch.randn(256, meta_model.num_features, generator=g)
    step = ckpt / "checkpoints" / "step_00000001"
    step.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd, "step": 1}, step / "state.pt")
    (step / "meta.json").write_text(json.dumps({"format": "torch", "step": 1, "backend": "ddp", "world_size": 1,
                                                "model": preset, "head": {}, "config": {},
                                                "bigseer_version": "0.1.0"}))
    (ckpt / "checkpoints" / "latest").write_text(step.name)
    return {"seconds": time.perf_counter() - t0, "bytes": (step / "state.pt").stat().st_size}


def child_ours(ckpt: Path, out: Path) -> dict:
    from bigseer.export import export_checkpoint

    t0 = time.perf_counter()
    files = export_checkpoint(ckpt, out, max_shard_size="5GB")
    return {"seconds": time.perf_counter() - t0, "files": [f.name for f in files], **_peak()}


def child_baseline(ckpt: Path, out: Path) -> dict:
    import torch
    from huggingface_hub import save_torch_state_dict

    t0 = time.perf_counter()
    state = torch.load(ckpt / "checkpoints" / "step_00000001" / "state.pt", mmap=True, weights_only=True)
    sd = {k[len("trunk."):]: v for k, v in state["model"].items() if k.startswith("trunk.")}
    out.mkdir(parents=True, exist_ok=True)
    save_torch_state_dict(sd, out, max_shard_size="5GB")
    return {"seconds": time.perf_counter() - t0, "files": sorted(p.name for p in out.iterdir()), **_peak()}


def child_verify(ckpt: Path, out: Path) -> dict:
    import torch
    from safetensors import safe_open

    state = torch.load(ckpt / "checkpoints" / "step_00000001" / "state.pt", mmap=True, weights_only=True)["model"]
    index = out / "model.safetensors.index.json"
    where = (json.loads(index.read_text())["weight_map"] if index.exists()
             else {k[len("trunk."):]: "model.safetensors" for k in state if k.startswith("trunk.")})
    names = ["s4.b1.conv3.conv.weight", "stem.conv.weight", "s3.b2.conv2.bn.running_var",
             "s2.b1.downsample.bn.num_batches_tracked"]
    ok = True
    for n in names:
        with safe_open(str(out / where[n]), framework="pt") as f:
            ok &= bool(torch.equal(f.get_tensor(n), state["trunk." + n]))
    return {"checked": names, "equal": ok, "n_tensors": len(where)}


def _run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--_child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="regnety_256gf")
    parser.add_argument("--workdir", default="/tmp/bench_export")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and outputs")
    parser.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        kind, *rest = args._child
        fn = {"create": lambda: child_create(rest[0], Path(rest[1])),
              "ours": lambda: child_ours(Path(rest[0]), Path(rest[1])),
              "baseline": lambda: child_baseline(Path(rest[0]), Path(rest[1])),
              "verify": lambda: child_verify(Path(rest[0]), Path(rest[1]))}[kind]
        print(json.dumps(fn()))
        return

    from bigseer.models import build_regnet

    sd = build_regnet(args.preset, device="meta").state_dict()
    largest_name, largest = max(sd.items(), key=lambda kv: kv[1].numel())
    largest_mib = largest.numel() * largest.element_size() / 2**20
    total_mib = sum(v.numel() * v.element_size() for v in sd.values()) / 2**20
    goal_mib = 2 * largest_mib + 1024
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"preset {args.preset}: trunk {total_mib:.0f} MiB fp32, {len(sd)} tensors, largest {largest_name} "
          f"{largest_mib:.0f} MiB; load average {os.getloadavg()}")
    created = _run_child("create", args.preset, str(work / "ckpt"))
    print(f"created checkpoint: {created['bytes'] / 2**30:.2f} GiB in {created['seconds']:.0f} s")
    ours = _run_child("ours", str(work / "ckpt"), str(work / "ours"))
    ours_ok = _run_child("verify", str(work / "ckpt"), str(work / "ours"))
    shutil.rmtree(work / "ours")
    base = _run_child("baseline", str(work / "ckpt"), str(work / "baseline"))
    base_ok = _run_child("verify", str(work / "ckpt"), str(work / "baseline"))
    print(f"ours files: {ours['files']}; baseline files: {base['files']}")
    print(f"spot-check equal: ours {ours_ok['equal']}, baseline {base_ok['equal']} ({ours_ok['n_tensors']} tensors)")
    rows = [("export time (s)", ours["seconds"], base["seconds"]),
            ("peak RSS, VmHWM (MiB)", ours["vmhwm_mib"], base["vmhwm_mib"]),
            ("peak RSS, ru_maxrss (MiB)", ours["ru_maxrss_mib"], base["ru_maxrss_mib"])]
    print("\n| metric | bigseer export | hub save_torch_state_dict | ours / baseline |")
    print("|---|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    print(f"\ngoal: peak RSS < 2 x largest tensor + 1 GiB = {goal_mib:.0f} MiB -> "
          f"{'MET' if ours['vmhwm_mib'] < goal_mib else 'NOT MET'} ({ours['vmhwm_mib']:.0f} MiB); "
          f"load average after: {os.getloadavg()}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
