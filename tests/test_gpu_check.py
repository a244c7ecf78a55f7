"""CPU dry run of benchmarks/gpu_check.py (project issue 16's one-call GPU check) and its helpers.

The dry run (``--device cpu --tiny``) runs every check either for real on the CPU, in a CPU stand-in mode
(fairscale -> ddp, the GPU decode path -> the tensor path on CPU, compile -> the eager dynamo backend), or
reports ``skipped: no CUDA``; the report (markdown + JSON) is written either way.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
TP = ["throughput test eager+cl", "throughput test eager", "throughput test compile+cl", "throughput tiny eager+cl"]
ROWS = ["syncbn bigseer", "syncbn torch", "fsdp bf16", "fsdp fp16", "deepspeed zero2 fp16", "fairscale fp16",
        "fairscale checkpoint", "jpeg decode", TP[0], "profile", *TP[1:]]


def _load():
    name = "_bigseer_gpu_check_script"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up while the file executes
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _env() -> dict[str, str]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("OUT", None)
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(k, None)
    return env


def _finite(xs) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def _run(out: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out), *args],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = _run(out, timeout=180)
    return proc, out, json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").exists() else {}


def test_dry_run_prints_and_writes_every_row(dry_run):
    proc, out, data = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    md = (out / "gpu_check.md").read_text()
    for name in ROWS:
        assert f"| {name} |" in md, name
        assert f"ROW | {name} |" in proc.stdout, name
    assert [r["name"] for r in data["rows"]] == ROWS
    assert md == proc.stdout[proc.stdout.index(md.splitlines()[0]):].strip() + "\n"  # same report on stdout
    assert "CPU dry run, torch" in data["header"] and "total" in data["header"]
    assert data["env"]["torch"] and data["env"]["deepspeed"] != "missing"
    assert data["imported_not_on_device"] == []  # nothing the device image lacks and .whl/ does not carry
    assert not any(r["status"].startswith("FAIL") for r in data["rows"])


def test_dry_run_backend_checks(dry_run):
    rows = {r["name"]: r for r in dry_run[2]["rows"]}
    bn = rows["syncbn bigseer"]
    assert bn["status"] == "ok" and bn["numbers"]["all_reduce_calls"] >= 2
    assert max(bn["numbers"]["shipped"].values()) < 1e-4 and max(bn["numbers"]["forced_all_reduce"].values()) < 1e-4
    assert "world size 1" in bn["details"]
    for name in ("fsdp bf16", "fsdp fp16", "deepspeed zero2 fp16", "fairscale fp16"):
        n = rows[name]["numbers"]
        assert rows[name]["status"].startswith("ok"), rows[name]
        assert sum(n["applied"]) >= 1 and n["weight_change"] > 0
    for name in ("fsdp fp16", "fairscale fp16"):  # GradScaler: the injected overflow is skipped, scale halved
        inj = rows[name]["numbers"]["inject"]
        assert inj["applied"] == [False] and inj["weight_change"] == 0 and inj["recovered"]
        assert inj["scale_after"] == inj["scale_before"] / 2
    ds = rows["deepspeed zero2 fp16"]
    assert ds["numbers"]["optimizer"] == "LARS" and "CPU fallback" in ds["details"] and "inject" not in ds["numbers"]
    assert rows["fairscale fp16"]["status"] == "ok (CPU stand-in: ddp)"
    assert rows["syncbn torch"]["status"].startswith("skipped: no CUDA")


def test_dry_run_checkpoint_and_decode(dry_run):
    rows = {r["name"]: r for r in dry_run[2]["rows"]}
    ck = rows["fairscale checkpoint"]
    assert ck["status"] == "ok (CPU stand-in: ddp)", ck
    n = ck["numbers"]
    assert n["moved"] > 0 and n["optim_pieces"] > 0
    assert n["reload_diff"] == n["reload_pieces_diff"] == n["fsdp_diff"] == n["fsdp_pieces_diff"] == n["export_diff"] == 0
    assert "model.safetensors" in n["export_files"] and n["scale_fsdp"] == n["scale_saved"]
    jp = rows["jpeg decode"]
    assert jp["status"] == "ok (CPU stand-in: tensor path on CPU)", jp
    assert _finite(jp["numbers"]["images_per_s"].values()) and jp["numbers"]["mean_abs_diff"] <= 2


def test_dry_run_throughput_and_profile(dry_run):
    _, out, data = dry_run
    rows = {r["name"]: r for r in data["rows"]}
    assert [t["variant"] for t in data["throughput"]] == TP
    for t in data["throughput"]:
        assert rows[t["variant"]]["status"] == "ok"
        assert _finite([t["images_per_s"], t["flops_per_step"], t["fwd_flops"], t["step_s"], t["loss"], t["mfu"],
                        t["mfu_model"]])
        assert t["images_per_s"] > 0 and t["flops_per_step"] > t["fwd_flops"] > 0 and t["timed_steps"] >= 1
        assert t["mfu_spec"] is None  # no spec peak for a CPU
        assert t["plan_gib"] > 0 and t["non_torch_gib"] is None  # the run's own plan; CUDA-only reading
    first, plain, compiled, large = data["throughput"]
    assert first["batch"] == 8 and [p["batch"] for p in first["probe"]] == [4, 8]  # doubled up to the max
    assert plain["batch"] == compiled["batch"] == 8 and not plain["probe"] and large["probe"]
    assert first["channels_last"] and not plain["channels_last"]
    assert compiled["dynamo"]["backend"] == "eager" and "recompile_limit_hits" in compiled["dynamo"]
    prof = data["profile"]
    assert rows["profile"]["status"] == "ok" and len(prof["top_ops"]) == 10 and prof["variant"] == TP[0]
    assert (out / "profile_trace.json.gz").stat().st_size > 0
    md = (out / "gpu_check.md").read_text()
    assert "### Throughput" in md and "### Profile" in md and "MFU spec peak" in md


def test_deepspeed_falls_back_to_sgd_when_lars_refused(tmp_path):
    code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import bigseer.parallel.deepspeed as ds
from bigseer.errors import ConfigError
from bigseer.optim import LARS
real = ds.check_optimizer
def refuse(opt, stage):
    if isinstance(opt, LARS):
        raise ConfigError("LARS under DeepSpeed ZeRO is refused (test)")
    return real(opt, stage)
ds.check_optimizer = refuse
sys.argv = ["gpu_check.py", "--device", "cpu", "--tiny", "--only", "deepspeed zero2 fp16", "--out", {str(tmp_path)!r}]
sys.path.insert(0, {str(SCRIPT.parent)!r})
import gpu_check
sys.exit(gpu_check.main())
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert row["status"] == "ok"
    assert row["numbers"]["optimizer"].startswith("SGD (LARS refused under ZeRO-2")
    assert "note: SGD" in proc.stdout


def test_out_of_budget_checks_are_skipped_with_the_reason(tmp_path):
    proc = _run(tmp_path, "--budget-s", "1", "--only", "fsdp,throughput")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["fsdp bf16", "fsdp fp16", *TP]
    assert all(r["status"].startswith("skipped: out of time") for r in rows), rows


def test_sigterm_still_writes_the_report(tmp_path):
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(tmp_path),
                             "--only", "syncbn,throughput"], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # wait until the syncbn rows are done, then stop it as `timeout` would
            if line.startswith("--- throughput"):
                break
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 124, rest[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "TERMINATED" in data["header"] and [r["name"] for r in data["rows"]][:2] == ["syncbn bigseer", "syncbn torch"]
    assert "TERMINATED" in (tmp_path / "gpu_check.md").read_text()


def test_helpers():
    gc = _load()
    assert gc.parse_crops("2x224+4x96") == [(2, 224), (4, 96)]
    assert gc.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gc.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gc.peak_tflops("NVIDIA H200") == 989.0
    assert gc.peak_tflops("NVIDIA H200 NVL") == 835.0
    assert gc.peak_tflops("Some Unknown GPU") is None
    crops = gc.make_crops("2x8+1x4", 3, "cpu")
    assert [tuple(c.shape) for c in crops] == [(2, 3, 3, 8, 8), (1, 3, 3, 4, 4)]
    assert gc.wanted_check("throughput 128gf eager+cl", ["throughput"]) and gc.wanted_check("fsdp fp16", ["fsdp"])
    assert not gc.wanted_check("fsdp fp16", ["fsdp bf16"]) and gc.wanted_check("x", None)
    assert [v.name for v in gc.FULL.variants] == ["throughput 128gf eager+cl", "throughput 128gf eager",
                                                  "throughput 128gf compile+cl", "throughput 256gf eager+cl"]
    assert gc.FULL.tp_crops == "2x224+4x96" and gc.FULL.tp_head_dims == (8192, 8192) and gc.FULL.tp_prototypes == 16384
    # the full run's limits fit its default budget: backend checks leave tp_reserve to the throughput section
    assert gc.FULL.tp_reserve >= gc.FULL.variants[0].min_s + gc.FULL.variants[1].min_s + gc.FULL.variants[2].min_s


def test_probe_batch_doubles_and_stops_at_oom_memory_or_time():
    import torch

    gc = _load()
    calls = []

    def step_at(b, oom_at=64, per=1.0, fixed=10.0):
        calls.append(b)
        if b >= oom_at:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return 0.01 * b, (fixed + per * b) * 2**30

    batch, trials, why, oom = gc.probe_batch(step_at, 8, 256, None, 10.0, 60.0)
    assert (batch, why, oom) == (32, "OOM at 64", True) and [t["batch"] for t in trials] == [8, 16, 32, 64]
    assert calls == [8, 8, 16, 16, 32, 32, 64]  # two steps per batch (the first one autotunes)
    # memory: peak(2b) extrapolated from the last two peaks must stay under 90% of the device
    batch, _, why, oom = gc.probe_batch(lambda b: step_at(b, oom_at=10**6), 8, 256, 60 * 2**30, 10.0, 60.0)
    assert batch == 32 and "GiB" in why and not oom  # 64 would need 74 GiB > 54
    batch, _, why, _ = gc.probe_batch(lambda b: step_at(b, oom_at=10**6), 8, 256, None, 0.5, 60.0)
    assert batch == 32 and "would take" in why  # a step at 64 would take 2 x 0.32 > 0.5 s
    batch, _, why, _ = gc.probe_batch(lambda b: step_at(b, oom_at=10**6), 8, 64, None, 10.0, 60.0)
    assert (batch, why) == (64, "max batch 64")
    batch, trials, _, oom = gc.probe_batch(lambda b: step_at(b, oom_at=4), 16, 256, None, 10.0, 60.0)
    assert batch == 2 and oom and [t["batch"] for t in trials] == [16, 8, 4, 2]  # an OOM at the start halves
    with pytest.raises(torch.cuda.OutOfMemoryError):
        gc.probe_batch(lambda b: step_at(b, oom_at=1), 2, 256, None, 10.0, 60.0)


def test_run_check_isolates_failures_skips_and_timeouts(capsys):
    gc = _load()

    def boom():
        raise RuntimeError("bad\nthing")

    def skip():
        raise gc.Skip("no CUDA")

    def slow():
        while True:
            time.sleep(0.05)

    assert gc.run_check("a", boom, 5).status == "FAIL: RuntimeError: bad thing"
    assert gc.run_check("b", skip, 5).status == "skipped: no CUDA"
    t0 = time.perf_counter()
    row = gc.run_check("c", slow, 1)
    assert row.status.startswith("FAIL: CheckTimeout") and time.perf_counter() - t0 < 3
    assert gc.run_check("d", lambda: gc.Row("d", details="x"), 5).status == "ok"
    out = capsys.readouterr().out
    assert "ROW | a | FAIL" in out and "ROW | d | ok | x |" in out
    with pytest.raises(gc.Terminated):
        gc.run_check("e", lambda: (_ for _ in ()).throw(gc.Terminated()), 5)


def test_device_command_fits_the_run_tool():
    sh = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert len(sh) <= 2000  # the device tool's command limit, should the file itself be passed
    assert "--target /tmp/site .whl/*.whl" in sh and 'PYTHONPATH="$PWD:/tmp/site' in sh
    assert 'benchmarks/gpu_check.py --out "$OUT"' in sh and 'tee -a "$OUT/log"' in sh
    assert "timeout -k 10 350 python3" in sh  # under the run's timeout_s (400), itself < 8 minutes
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=False).returncode == 0
    fetch = (ROOT / "scripts" / "fetch_device_wheels.sh").read_text()
    for pkg in ("deepspeed", "fairscale", "hjson", "pydantic", "simplejpeg"):
        assert pkg in fetch
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "fetch_device_wheels.sh")], check=False).returncode == 0
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    gpu = results[results.index("## GPU"):]
    assert "bash scripts/fetch_device_wheels.sh" in gpu and "bash benchmarks/gpu_check.sh" in gpu
    assert 'carry: [".whl"]' in gpu and "timeout_s: 400" in gpu
