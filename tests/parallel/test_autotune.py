"""``--channels_last auto`` / ``--compile auto`` (bigseer.parallel.autotune): measured, broadcast, cached.

The probe runs the real switch code (``bigseer.parallel.apply_speedups``) on fresh trunks; an injected clock
makes a variant "fast" by reading what the switch code did to the trunk it is timing: a forward pre-hook on
the trunk advances the fake time by the cost of (``trunk.memory_format`` is NHWC, block 0 is compiled).
"""

from __future__ import annotations

import functools
import json
import logging

import pytest
import torch

from bigseer.errors import ConfigError
from bigseer.models import build_regnet
from bigseer.parallel import autotune
from bigseer.parallel.autotune import CACHE_NAME, choose_speedups
from tests.distributed_utils import run_distributed

CROPS = "2x32+2x16"
BATCH = 2
CALLS = 2  # trunk calls per step with CROPS
NCHW, NHWC = (False, False), (True, False)


class FakeClock:
    """Seconds that advance only when a probed trunk runs forward, by ``costs[(nhwc, compiled)]`` per trunk
    call (a step of ``CROPS`` calls the trunk twice, once per resolution)."""

    def __init__(self, costs: dict[tuple[bool, bool], float]) -> None:
        self.costs = costs
        self.now = 0.0
        self.calls = 0
        self.seen: list[tuple[bool, bool]] = []

    def __call__(self) -> float:
        self.calls += 1
        return self.now

    def hook(self):
        clock = self  # a closure (not a bound method): deepcopy of the trunk keeps pointing at this clock

        def pre_hook(trunk, args):
            state = (trunk.memory_format == torch.channels_last,
                     trunk.blocks()[0]._compiled_call_impl is not None)
            clock.seen.append(state)
            clock.now += clock.costs[state]

        return pre_hook


def factory(clock: FakeClock, preset: str = "regnety_test"):
    def build():
        trunk = build_regnet(preset, device="meta").init_weights("cpu", seed=0)
        trunk.register_forward_pre_hook(clock.hook())
        return trunk

    return build


def never():
    raise AssertionError("the clock was read: something was measured")


def choose(trunk, tmp_path, clock, **kw):
    args = dict(channels_last="auto", compile="off", model="regnety_test", cache_dir=tmp_path, clock=clock,
                measure_on_cpu=True, warmup=1, iters=3)
    args.update(kw)
    return choose_speedups(trunk, CROPS, BATCH, "fp32", "cpu", **args)


@pytest.mark.parametrize("fast, expect", [(NHWC, True), (NCHW, False)])
def test_auto_picks_the_faster_layout_and_leaves_the_run_untouched(tmp_path, caplog, fast, expect):
    costs = {NCHW: 0.010, NHWC: 0.010}
    costs[fast] = 0.004
    clock = FakeClock(costs)
    torch.manual_seed(3)
    trunk = build_regnet("regnety_test")
    trunk.register_forward_pre_hook(clock.hook())
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    rng = torch.get_rng_state()
    with caplog.at_level(logging.INFO, logger="bigseer"):
        out = choose(trunk, tmp_path, clock)
    assert (out.channels_last, out.compile) == (expect, False)
    assert out.report["source"] == "measured"
    assert set(clock.seen) == {NCHW, NHWC}  # both variants ran, switched by apply_speedups
    assert out.report["timings_ms"] == pytest.approx({"NCHW eager": CALLS * costs[NCHW] * 1e3,
                                                      "NHWC eager": CALLS * costs[NHWC] * 1e3})
    # the run's trunk and RNG are untouched by the probe
    assert torch.equal(torch.get_rng_state(), rng)
    after = trunk.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert trunk.memory_format == torch.contiguous_format
    assert not trunk.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.grad is None for p in trunk.parameters())
    # one log line names both timings and the choice
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("speedups:")]
    assert len(lines) == 1 and lines[0] == out.report["line"]
    assert f"channels_last auto -> {'on' if expect else 'off'}" in lines[0]
    assert f"NCHW eager {CALLS * costs[NCHW] * 1e3:.2f} ms" in lines[0]
    assert f"NHWC eager {CALLS * costs[NHWC] * 1e3:.2f} ms" in lines[0]
    assert str(tmp_path / CACHE_NAME) in lines[0]


def test_the_budget_caps_the_probe(tmp_path):
    # one step costs 10 s of fake time, far over budget: per variant one free warm-up, one counted warm-up
    # (nothing spent yet), one timed step; iters=5 would otherwise time 5
    clock = FakeClock({NCHW: 5.0, NHWC: 5.0})
    out = choose(factory(clock), tmp_path, clock, warmup=2, iters=5, budget_s=1.0)
    assert out.report["timings_ms"] == {"NCHW eager": 10000.0, "NHWC eager": 10000.0}
    assert len(clock.seen) == 2 * 3 * CALLS
    assert not out.channels_last  # a tie goes to off
    clock = FakeClock({NCHW: 0.001, NHWC: 0.001})
    choose(factory(clock), tmp_path / "b", clock, warmup=2, iters=5, budget_s=1.0)
    assert len(clock.seen) == 2 * (2 + 5) * CALLS  # within budget: every iteration runs


def test_restart_reuses_the_cache_and_does_not_measure(tmp_path, caplog):
    clock = FakeClock({NCHW: 0.010, NHWC: 0.004})
    first = choose(factory(clock), tmp_path, clock)
    assert first.channels_last and first.report["source"] == "measured" and clock.calls > 0
    saved = json.loads((tmp_path / CACHE_NAME).read_text())
    assert len(saved["entries"]) == 1
    key = saved["entries"][0]["key"]
    assert key["device"].startswith("cpu") and key["torch"] == torch.__version__
    assert key["inputs"] == [[2 * BATCH, 3, 32, 32], [2 * BATCH, 3, 16, 16]] and key["precision"] == "fp32"

    # a restart into the same output directory: the clock must not be read, the factory not called
    def no_build():
        raise AssertionError("the trunk was built: something was measured")

    with caplog.at_level(logging.INFO, logger="bigseer"):
        again = choose(no_build, tmp_path, never)
    assert (again.channels_last, again.compile) == (True, False)
    assert again.report["source"] == "cache"
    assert again.report["timings_ms"] == first.report["timings_ms"]
    line = caplog.records[-1].getMessage()
    assert "from the cache" in line and "NCHW eager 20.00 ms" in line and "NHWC eager 8.00 ms" in line

    # another key (per-rank batch) measures again and keeps the first entry
    clock2 = FakeClock({NCHW: 0.004, NHWC: 0.010})
    other = choose_speedups(factory(clock2), CROPS, BATCH + 1, "fp32", "cpu", channels_last="auto",
                            compile="off", model="regnety_test", cache_dir=tmp_path, clock=clock2,
                            measure_on_cpu=True, warmup=0, iters=1)
    assert other.report["source"] == "measured" and not other.channels_last and clock2.calls > 0
    assert len(json.loads((tmp_path / CACHE_NAME).read_text())["entries"]) == 2
    assert choose(no_build, tmp_path, never).channels_last  # the first entry still answers


def test_unreadable_cache_is_measured_again(tmp_path, caplog):
    (tmp_path / CACHE_NAME).write_text("{not json")
    clock = FakeClock({NCHW: 0.004, NHWC: 0.010})
    with caplog.at_level(logging.WARNING, logger="bigseer"):
        out = choose(factory(clock), tmp_path, clock, warmup=0, iters=1)
    assert out.report["source"] == "measured" and not out.channels_last
    assert "unreadable cache" in caplog.text
    assert json.loads((tmp_path / CACHE_NAME).read_text())["entries"][0]["channels_last"] is False


@pytest.mark.parametrize("cl, co", [("on", "off"), ("off", "on"), ("on", "on"), ("off", "off")])
def test_on_and_off_pass_through_unmeasured(tmp_path, cl, co):
    out = choose(factory(FakeClock({})), tmp_path, never, channels_last=cl, compile=co)
    assert (out.channels_last, out.compile) == (cl == "on", co == "on")
    assert out.report["source"] == "fixed" and not (tmp_path / CACHE_NAME).exists()


def test_auto_on_cpu_is_off_unless_asked_to_measure(tmp_path):
    out = choose(factory(FakeClock({})), tmp_path, never, compile="auto", measure_on_cpu=False)
    assert (out.channels_last, out.compile, out.report["source"]) == (False, False, "unmeasured")
    assert not (tmp_path / CACHE_NAME).exists()
    with pytest.raises(ConfigError, match="channels_last='maybe'"):
        choose(factory(FakeClock({})), tmp_path, never, channels_last="maybe")
    with pytest.raises(ConfigError, match="meta"):
        choose(build_regnet("regnety_test", device="meta"), tmp_path, never)


def test_a_failing_probe_leaves_auto_off_and_caches_nothing(tmp_path, caplog):
    def broken():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with caplog.at_level(logging.INFO, logger="bigseer"):
        out = choose(broken, tmp_path, never)
    assert (out.channels_last, out.compile, out.report["source"]) == (False, False, "failed")
    assert out.report["failed"] == ["NCHW eager", "NHWC eager"]
    assert "out of memory" in caplog.text and "auto stays off" in caplog.text
    assert not (tmp_path / CACHE_NAME).exists()


@pytest.fixture
def eager_dynamo(monkeypatch):
    """dynamo with its eager backend: the real Module.compile path without inductor's C++ build on a CPU
    runner; its cache is emptied afterwards so that later tests do not meet these graphs."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    yield
    torch._dynamo.reset()


def test_compile_auto_compiles_with_the_real_switch(tmp_path, eager_dynamo):
    def run(costs, cache_dir):
        clock = FakeClock(costs)
        out = choose_speedups(factory(clock), "2x16", BATCH, "fp32", "cpu", channels_last="off", compile="auto",
                              model="regnety_test", cache_dir=cache_dir, clock=clock, measure_on_cpu=True,
                              warmup=1, iters=1)
        return out, clock

    out, clock = run({NCHW: 0.010, (False, True): 0.006}, tmp_path / "a")
    assert (out.channels_last, out.compile) == (False, True)
    assert set(clock.seen) == {NCHW, (False, True)}  # the compiled variant really ran compiled blocks
    assert out.report["timings_ms"] == pytest.approx({"NCHW eager": 10.0, "NCHW compiled": 6.0})
    assert "compile auto -> on" in out.report["line"] and "NCHW compiled 6.00 ms" in out.report["line"]
    # the reverse (dynamo reuses the graphs compiled above)
    out, _ = run({NCHW: 0.004, (False, True): 0.006}, tmp_path / "b")
    assert (out.channels_last, out.compile) == (False, False)


def _ranks_choose(rank, world, cache_dir):
    # rank 0's clock makes NHWC faster, rank 1's NCHW: only rank 0 measures, everyone applies its choice
    costs = {NCHW: 0.010, NHWC: 0.004} if rank == 0 else {NCHW: 0.004, NHWC: 0.010}
    clock = FakeClock(costs)
    first = choose(factory(clock), cache_dir, clock, warmup=0, iters=2)
    first_calls = clock.calls
    # a restart: nobody measures, the cached choice is broadcast
    restart = choose(factory(FakeClock(costs)), cache_dir, never)
    return {"first": (first.channels_last, first.compile, first.report), "calls": first_calls,
            "restart": (restart.channels_last, restart.compile, restart.report)}


def test_two_ranks_agree_on_rank_zeros_measurement(tmp_path):
    r0, r1 = run_distributed(_ranks_choose, world_size=2, args=(str(tmp_path),), timeout_s=120)
    assert r0["first"][:2] == r1["first"][:2] == (True, False)
    assert r0["first"][2]["line"] == r1["first"][2]["line"]  # the same timings on every rank
    assert r0["calls"] > 0 and r1["calls"] == 0
    assert r0["restart"][:2] == r1["restart"][:2] == (True, False)
    assert r0["restart"][2]["source"] == r1["restart"][2]["source"] == "cache"
    assert len(json.loads((tmp_path / CACHE_NAME).read_text())["entries"]) == 1


def test_input_shapes_follow_the_trunk_calls():
    assert autotune.input_shapes("2x224+4x96", 32) == [(64, 3, 224, 224), (128, 3, 96, 96)]
    assert autotune.input_shapes("1x64+1x64+2x32", 4) == [(8, 3, 64, 64), (8, 3, 32, 32)]
