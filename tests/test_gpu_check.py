"""CPU dry run of the one-call GPU check (benchmarks/gpu_check.sh: ``pytest -m gpu tests/gpu`` then the
throughput benchmark benchmarks/gpu_check.py) and unit tests of the benchmark's mechanisms.

Nothing here depends on this machine's speed: the dry run's sizes have no time-based stops (the probe doubles
to its max batch, a fixed number of steps is timed, ``--profile`` forces the profile row), and the time- or
MFU-driven decisions (probe stops, timed-step stops, profile or not) are tested with injected clocks and MFUs.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from tests.gpu.devices import NOT_ON_DEVICE

pytestmark = pytest.mark.slow  # an end-to-end job: not in the fast tier (-m 'not slow')

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
SCRIPT = BENCH / "gpu_check.py"
SH = BENCH / "gpu_check.sh"
TP = ["throughput test eager+cl", "throughput test eager", "throughput test compile+cl", "throughput tiny eager+cl"]
ROWS = [TP[0], "profile", *TP[1:]]
DryRun = tuple[subprocess.CompletedProcess, Path, dict[str, Any]]


def _mod(name: str) -> ModuleType:
    """A benchmarks/gpu_*.py module (they import each other by their plain names)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def _env(**extra: str) -> dict[str, str]:
    drop = ("OUT", "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> DryRun:
    """The device command itself, on CPU: its pytest part skips every GPU test, its benchmark runs tiny."""
    out = tmp_path_factory.mktemp("gpu_check")
    env = _env(OUT=str(out), WHEELS=str(out / "no_wheels"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["bash", str(SH), "--device", "cpu", "--tiny", "--profile"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    data = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").exists() else {}
    return proc, out, data


def test_dry_run_prints_and_writes_every_row(dry_run: DryRun) -> None:
    proc, out, data = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    md = (out / "gpu_check.md").read_text()
    for name in ROWS:
        assert f"| {name} |" in md and f"ROW | {name} |" in proc.stdout, name
    assert [r["name"] for r in data["rows"]] == ROWS
    assert all(r["status"] == "ok" for r in data["rows"]), data["rows"]
    assert md.splitlines()[0] in proc.stdout and md.strip().splitlines()[-1] in proc.stdout  # same report printed
    assert "CPU dry run, torch" in data["header"] and "total" in data["header"]
    assert not set(NOT_ON_DEVICE) & set(data["top_level_modules"])  # the device image lacks them
    assert (out / "log").read_text().count("ROW |") >= len(ROWS)
    assert "gpu_check.sh: tests rc 0, benchmark rc 0" in proc.stdout


def test_dry_run_lists_the_gpu_tests_skipped_with_the_reason(dry_run: DryRun) -> None:
    proc, out, data = dry_run
    tests = data["tests"]
    assert len(tests) >= 10 and all(t["test"].endswith("[cuda]") or "[cuda-" in t["test"] for t in tests), tests
    assert all(t["status"].startswith("skipped: needs CUDA") for t in tests), tests
    assert "SKIPPED" in proc.stdout and "needs CUDA: torch.cuda.is_available() is False" in proc.stdout
    md = (out / "gpu_check.md").read_text()
    assert f"### Tests (pytest -m gpu tests/gpu): {len(tests)} skipped" in md


def test_dry_run_throughput_and_profile(dry_run: DryRun) -> None:
    _, out, data = dry_run
    assert [t["variant"] for t in data["throughput"]] == TP
    for t in data["throughput"]:
        nums = [t[k] for k in ("images_per_s", "flops_per_step", "fwd_flops", "step_s", "loss", "mfu", "mfu_model")]
        assert all(isinstance(x, (int, float)) and math.isfinite(x) for x in nums), t
        assert t["flops_per_step"] > t["fwd_flops"] > 0 and t["timed_steps"] == 2  # TINY: min = max = 2 steps
        assert t["mfu_spec"] is None and t["non_torch_gib"] is None and t["plan_gib"] > 0  # no GPU readings on CPU
    first, plain, compiled, large = data["throughput"]
    assert [p["batch"] for p in first["probe"]] == [4, 8] and first["batch"] == 8  # doubled up to the max
    assert plain["batch"] == compiled["batch"] == 8 and not plain["probe"] and large["probe"]
    assert first["channels_last"] and not plain["channels_last"]
    assert compiled["dynamo"]["backend"] == "eager" and "recompile_limit_hits" in compiled["dynamo"]
    prof = data["profile"]
    assert len(prof["top_ops"]) == 10 and prof["variant"] == TP[0] and prof["time"] == "self CPU"
    assert (out / "profile_trace.json.gz").stat().st_size > 0
    md = (out / "gpu_check.md").read_text()
    assert "### Throughput" in md and "### Profile" in md and "MFU spec peak" in md


def test_profile_runs_below_the_mfu_threshold_and_is_skipped_above() -> None:
    tp, prof, harness = _mod("gpu_throughput"), _mod("gpu_profile"), _mod("gpu_harness")
    calls: list[int] = []
    live = {"mfu": 0.5, "step": lambda: calls.append(1), "variant": "v", "batch": 2}
    ctx = tp.Ctx("cpu", tp.TINY, shared={"live": live}, profile_below=0.35)
    with pytest.raises(harness.Skip, match=r"MFU 50.0% >= 35%"):
        prof.check_profile(ctx)
    assert calls == [] and ctx.profile is None
    live["mfu"] = 0.2
    row = prof.check_profile(ctx)
    assert row.status == "ok" and calls == [1] * tp.TINY.profile_steps and ctx.profile["mfu"] == 0.2
    live["mfu"], ctx.force_profile = 0.9, True
    assert prof.check_profile(ctx).status == "ok"
    ctx.shared.clear()
    with pytest.raises(harness.Skip, match="no model to profile"):
        prof.check_profile(ctx)


def test_cuda_branches_of_the_profile_and_the_header() -> None:
    """The CUDA-only ranking and header code, with stand-in profiler events and environment (no GPU here)."""
    prof, rep = _mod("gpu_profile"), _mod("gpu_report")

    def ev(key: str, dev_us: float, kernel: bool, count: int = 2) -> SimpleNamespace:
        return SimpleNamespace(key=key, self_device_time_total=dev_us, count=count,
                               device_type="DeviceType.CUDA" if kernel else "DeviceType.CPU")

    events = [ev("aten::conv", 3000, False), ev("aten::mm", 1000, False), ev("aten::view", 0, False),
              ev("sm90_xmma_conv", 2500, True), ev("gemm", 1500, True)]
    top, kernels, busy = prof.rank_ops(events, cuda=True, steps=2)
    assert [t["op"] for t in top] == ["aten::conv", "aten::mm"] and top[0]["share"] == 0.75
    assert top[0]["ms_per_step"] == 1.5 and top[0]["calls_per_step"] == 1
    assert [k["kernel"] for k in kernels] == ["sm90_xmma_conv", "gemm"] and busy == 4000 / 1e6
    top, _, _ = prof.rank_ops([events[3]], cuda=True, steps=1)  # device time booked on kernels only
    assert [t["op"] for t in top] == ["sm90_xmma_conv"]
    env = {"bigseer": "0.1", "python": "3.12", "torch": "2.11", "gpu": "NVIDIA H100", "capability": "9.0", "sms": 132,
           "memory_gib": 79.2, "cuda": "13.0", "cudnn": 91000, "nccl": "2.27.3",
           **{k: "1" for k in rep.VERSIONS}}
    line = rep.header_line(env, "cuda")
    assert line.startswith("bigseer 0.1 gpu_check on NVIDIA H100 (cc 9.0, 132 SMs") and "NCCL 2.27.3" in line


def test_out_of_budget_rows_are_skipped_with_the_reason() -> None:
    gc, tp = _mod("gpu_check"), _mod("gpu_throughput")
    ctx = tp.Ctx("cpu", tp.TINY)
    written: list[int] = []
    # a budget spent before the first row (t_begin in the past): every row is skipped, none runs
    rows = gc.run_rows(ctx, ["throughput"], 1.0, time.perf_counter() - 10, lambda done: written.append(len(done)))
    assert [r.name for r in rows] == TP and written == [1, 2, 3, 4]  # the report is written after each row
    assert all(r.status.startswith("skipped: out of time (0s of the 1s budget left") for r in rows), rows
    assert ctx.throughput == [] and "live" not in ctx.shared


def test_sigterm_still_writes_the_report(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(tmp_path)],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # stop it inside the first row, as `timeout` would
            if line.startswith("--- throughput"):
                break
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 124, rest[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "TERMINATED" in data["header"] and "TERMINATED" in (tmp_path / "gpu_check.md").read_text()


def test_helpers() -> None:
    tp, harness = _mod("gpu_throughput"), _mod("gpu_harness")
    assert tp.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and tp.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert tp.peak_tflops("NVIDIA H200") == 989.0 and tp.peak_tflops("NVIDIA H200 NVL") == 835.0
    assert tp.peak_tflops("Some Unknown GPU") is None
    crops = tp.make_crops("2x8+1x4", 3, "cpu")
    assert [tuple(c.shape) for c in crops] == [(2, 3, 3, 8, 8), (1, 3, 3, 4, 4)]
    assert harness.wanted_check("throughput 128gf eager+cl", ["throughput"])
    assert not harness.wanted_check("throughput 128gf eager", ["throughput 256gf"]) and harness.wanted_check("x", None)
    assert [v.name for v in tp.FULL.variants] == ["throughput 128gf eager+cl", "throughput 128gf eager",
                                                  "throughput 128gf compile+cl", "throughput 256gf eager+cl"]
    assert tp.FULL.crops == "2x224+4x96" and tp.FULL.head_dims == (8192, 8192) and tp.FULL.prototypes == 16384


class FakeClock:
    """A clock that moves only when told: time-based decisions without real time."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_probe_batch_doubles_and_stops_at_oom_memory_time_or_budget() -> None:
    import torch

    tp = _mod("gpu_throughput")
    calls: list[int] = []
    clock = FakeClock()

    def step_at(b: int, oom_at: int = 64, per: float = 1.0, fixed: float = 10.0) -> tuple[float, float]:
        calls.append(b)
        if b >= oom_at:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        clock.t += 0.01 * b
        return 0.01 * b, (fixed + per * b) * 2**30

    def probe(fn, start=8, max_batch=256, mem=None, max_step_s=10.0, budget_s=60.0):
        return tp.probe_batch(fn, start, max_batch, mem, max_step_s, budget_s, clock=clock)

    batch, trials, why, oom = probe(step_at)
    assert (batch, why, oom) == (32, "OOM at 64", True) and [t["batch"] for t in trials] == [8, 16, 32, 64]
    assert calls == [8, 8, 16, 16, 32, 32, 64]  # two steps per batch (the first one autotunes)

    def big(b: int) -> tuple[float, float]:  # never out of memory
        return step_at(b, oom_at=10**6)

    batch, _, why, oom = probe(big, mem=60 * 2**30)  # 64 would need 74 GiB > 90% of 60
    assert batch == 32 and "GiB" in why and not oom
    assert probe(big, max_step_s=0.5)[::2] == (32, "a step at 64 would take ~0.6s > 0.5s")
    assert probe(big, max_batch=64)[::2] == (64, "max batch 64")
    # the budget by the clock: steps at 8 and 16 took 0.48 s, and 0.48 + 3 x 2 x 0.16 > 1.0 s
    assert probe(big, budget_s=1.0)[::2] == (16, "probe time 1s")
    batch, trials, _, oom = probe(lambda b: step_at(b, oom_at=4), start=16)
    assert batch == 2 and oom and [t["batch"] for t in trials] == [16, 8, 4, 2]  # an OOM at the start halves
    with pytest.raises(torch.cuda.OutOfMemoryError):
        probe(lambda b: step_at(b, oom_at=1), start=2)


def test_time_steps_stops_by_count_time_or_deadline() -> None:
    tp = _mod("gpu_throughput")
    clock = FakeClock()

    def timed(secs: float = 1.0) -> float:
        clock.t += secs
        return secs

    assert tp.time_steps(timed, 2, 20, 3.5, deadline=100.0, clock=clock) == ([1.0] * 4, False)  # 4 s >= 3.5 s
    assert tp.time_steps(timed, 2, 3, 100.0, deadline=1e6, clock=clock) == ([1.0] * 3, False)  # max steps
    clock.t = 0.0
    # deadline 10: after the 6th step (t = 6) another (1.5 x 1 s) would pass deadline - 3 = 7
    assert tp.time_steps(timed, 2, 20, 100.0, deadline=10.0, clock=clock) == ([1.0] * 6, True)


def test_run_check_isolates_failures_skips_and_timeouts(capsys: pytest.CaptureFixture[str]) -> None:
    h = _mod("gpu_harness")

    def boom():
        raise RuntimeError("bad\nthing")

    def skip():
        raise h.Skip("no CUDA")

    def slow():  # ends by itself (ok) unless the 1 s time limit interrupts it
        for _ in range(600):
            time.sleep(0.05)
        return h.Row("c")

    assert h.run_check("a", boom, 5).status == "FAIL: RuntimeError: bad thing"
    assert h.run_check("b", skip, 5).status == "skipped: no CUDA"
    assert h.run_check("c", slow, 1).status.startswith("FAIL: CheckTimeout: time limit 1s")
    assert h.run_check("d", lambda: h.Row("d", details="x"), 5).status == "ok"
    out = capsys.readouterr().out
    assert "ROW | a | FAIL" in out and "ROW | d | ok | x |" in out
    with pytest.raises(h.Terminated):
        h.run_check("e", lambda: (_ for _ in ()).throw(h.Terminated()), 5)


def test_junit_outcomes_in_the_report(tmp_path: Path) -> None:
    rep = _mod("gpu_report")
    xml = tmp_path / "t.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="tests.gpu.test_a" name="t1[cuda]" time="1.5"/>'
                   '<testcase classname="tests.gpu.test_a" name="t2[cuda]" time="0"><skipped message="needs CUDA: x"/>'
                   '</testcase><testcase classname="tests.gpu.test_b" name="t3[cuda]" time="2">'
                   '<failure message="assert 1 == 2&#10;more"/></testcase></testsuite></testsuites>')
    cases = rep.read_junit(str(xml))
    assert [(c["test"], c["status"]) for c in cases] == [("test_a::t1[cuda]", "passed"),
                                                         ("test_a::t2[cuda]", "skipped: needs CUDA: x"),
                                                         ("test_b::t3[cuda]", "FAIL: assert 1 == 2")]
    md = rep.tests_section(cases, str(xml))
    assert "1 FAIL, 1 passed, 1 skipped" in md and "| test_b::t3[cuda] | FAIL: assert 1 == 2 | 2.0 |" in md
    assert rep.read_junit(str(tmp_path / "none.xml")) is None
    assert "no JUnit XML" in rep.tests_section(None, "x.xml") and rep.tests_section(None, None) == ""


def test_device_command_fits_the_run_tool() -> None:
    sh = SH.read_text()
    assert len(sh) <= 2000  # the device tool's command limit, should the file itself be passed
    assert '--target /tmp/site "$WHEELS"/*.whl' in sh and 'PYTHONPATH="$PWD:/tmp/site' in sh
    assert "python3 -m pytest -m gpu tests/gpu -q -rs" in sh and "benchmarks/gpu_check.py --out" in sh
    # hard stops: the tests, then the benchmark with what is left of LIMIT_S (kill grace 5 s): under 6 minutes
    # in all, and under the run's timeout_s (400, RESULTS.md) with time for the install and the start
    limit = int(re.search(r'LIMIT_S="\$\{LIMIT_S:-(\d+)\}"', sh).group(1))
    assert limit + 5 < 6 * 60 and limit + 5 + 30 < 400
    assert "timeout -k 5 170 python3 -m pytest" in sh and 'timeout -k 5 "$left" python3 benchmarks/gpu_check.py' in sh
    assert subprocess.run(["bash", "-n", str(SH)], check=False).returncode == 0
    fetch = (ROOT / "scripts" / "fetch_device_wheels.sh").read_text()
    for pkg in ("deepspeed", "fairscale", "hjson", "pydantic", "simplejpeg"):
        assert pkg in fetch
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    gpu = results[results.index("## GPU"):]
    assert "bash scripts/fetch_device_wheels.sh" in gpu and "bash benchmarks/gpu_check.sh" in gpu
    assert 'carry: [".whl"]' in gpu and "timeout_s: 400" in gpu
