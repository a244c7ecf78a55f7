"""CPU dry run of benchmarks/gpu_check.py (issue 5's one-call GPU check) and its helpers."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
ROWS = ["syncbn bigseer", "syncbn torch", "fsdp bf16", "fsdp fp16", "deepspeed zero2 fp16", "fairscale fp16",
        "throughput"]


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


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180)
    return proc, out


def test_dry_run_prints_and_writes_every_row(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (out / "gpu_check.md").read_text()
    for name in ROWS:
        assert f"| {name} |" in md
        assert f"ROW | {name} |" in proc.stdout
    assert md == proc.stdout[proc.stdout.index(md.splitlines()[0]):].strip() + "\n"  # same table on stdout


def test_dry_run_cpu_checks_ok_with_finite_numbers(dry_run):
    _, out = dry_run
    rows = {r["name"]: r for r in json.loads((out / "gpu_check.json").read_text())}
    assert rows["syncbn bigseer"]["status"] == "ok" and max(rows["syncbn bigseer"]["numbers"].values()) < 1e-4
    for name in ("fsdp bf16", "fsdp fp16", "deepspeed zero2 fp16"):
        r = rows[name]
        assert r["status"] == "ok", r
        n = r["numbers"]
        assert _finite(n["losses"]) and sum(n["applied"]) >= 1 and n["weight_change"] > 0
    assert rows["fsdp fp16"]["numbers"]["scales"][-1] is not None  # fp16 runs with a dynamic loss scale
    assert rows["deepspeed zero2 fp16"]["numbers"]["optimizer"] == "LARS"
    assert "CPU fallback" in rows["deepspeed zero2 fp16"]["details"]
    tp = rows["throughput"]
    assert tp["status"] == "ok", tp
    n = tp["numbers"]
    assert _finite([n["images_per_s"], n["flops_per_step"], n["step_s"], n["loss"]])
    assert n["images_per_s"] > 0 and n["flops_per_step"] > 0 and n["timed_steps"] >= 1
    assert n["mfu"] is None  # no peak for a CPU
    for name in ("syncbn torch", "fairscale fp16"):
        assert rows[name]["status"].startswith("skipped: needs CUDA"), rows[name]


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
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "gpu_check.json").read_text())
    assert row["status"] == "ok"
    assert row["numbers"]["optimizer"].startswith("SGD (LARS refused under ZeRO-2")
    assert "note: SGD" in proc.stdout


def test_helpers():
    gc = _load()
    assert gc.parse_crops("2x224+4x96") == [(2, 224), (4, 96)]
    assert gc.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gc.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gc.peak_tflops("NVIDIA H200") == 989.0
    assert gc.peak_tflops("Some Unknown GPU") is None
    crops = gc.make_crops("2x8+1x4", 3, "cpu")
    assert [tuple(c.shape) for c in crops] == [(2, 3, 3, 8, 8), (1, 3, 3, 4, 4)]


def test_run_check_isolates_failures_skips_and_timeouts(capsys):
    gc = _load()

    def boom():
        raise RuntimeError("bad\nthing")

    def skip():
        raise gc.Skip("needs CUDA")

    def slow():
        while True:
            time.sleep(0.05)

    assert gc.run_check("a", boom, 5).status == "FAIL: RuntimeError: bad thing"
    assert gc.run_check("b", skip, 5).status == "skipped: needs CUDA"
    t0 = time.perf_counter()
    row = gc.run_check("c", slow, 1)
    assert row.status.startswith("FAIL: CheckTimeout") and time.perf_counter() - t0 < 3
    assert gc.run_check("d", lambda: gc.Row("d", details="x"), 5).status == "ok"
    out = capsys.readouterr().out
    assert "ROW | a | FAIL" in out and "ROW | d | ok | x |" in out


def test_device_command_fits_the_run_tool():
    sh = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert len(sh) <= 2000  # the device tool's command limit, should the file itself be passed
    assert "--target /tmp/site .whl/*.whl" in sh and 'PYTHONPATH="$PWD:/tmp/site"' in sh
    assert 'benchmarks/gpu_check.py --out "$OUT"' in sh and 'tee -a "$OUT/log"' in sh
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0
