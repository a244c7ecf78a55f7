"""Backends on one device in a 1-rank group (gloo on cpu, NCCL on cuda), SwAV steps with LARS:

- FSDP2 bf16 and fp16 (meta-built); fp16 (GradScaler) gets an injected overflow: skipped, weights kept,
  scale halved;
- DeepSpeed ZeRO-2 from ``ds_configs/zero2.json`` (fp16, dynamic loss scale, hysteresis 2): two injected
  overflows skipped, the loss scale moves down, the next step applies; on CPU bigseer falls back to bf16;
- FairScale FSDP fp16 + ShardedGradScaler with an injected overflow (cuda; on cpu a ddp fp16 stand-in), then
  its checkpoint round trip (``tests/gpu/roundtrip.py``): reloaded, loaded under FSDP2 and exported bitwise.

All of it runs in one spawned process per device (``run_one_rank``); each test asserts one check's numbers.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.gpu.devices import DEVICES, Missing, collect, result, run_one_rank
from tests.gpu.roundtrip import roundtrip
from tests.gpu.steps import SMALL, assert_steps_ok, build_model, lars, run_steps, small_crops, swav_config

pytestmark = pytest.mark.slow  # an end-to-end job: not in the fast tier (-m 'not slow')

ROOT = Path(__file__).resolve().parents[2]
CARRY = "carry .whl/ (bash scripts/fetch_device_wheels.sh)"


def _fsdp(device: str, precision: str) -> dict[str, Any]:
    from bigseer import parallel

    par = parallel.setup(build_model(device, meta=True), backend="fsdp", precision=precision,
                         optimizer_factory=lars(device), device_type=device)
    res = run_steps(par, small_crops(device), SMALL[device].steps, inject=1 if precision == "fp16" else 0)
    return {**res, "precision": par.precision}


def _deepspeed(device: str) -> dict[str, Any]:
    from bigseer import parallel
    from bigseer.parallel.deepspeed import load_ds_config

    try:
        import deepspeed
    except ImportError as exc:
        raise Missing(f"deepspeed is not importable ({exc}); {CARRY}") from None
    cfg = load_ds_config(str(ROOT / "ds_configs" / "zero2.json"))
    cfg["train_micro_batch_size_per_gpu"] = SMALL[device].batch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        par = parallel.setup(build_model(device), backend="deepspeed", precision="fp16", ds_config=cfg,
                             optimizer_factory=lars(device), device_type=device)
    res = run_steps(par, small_crops(device), SMALL[device].steps, inject=2)
    return {**res, "precision": par.precision, "version": deepspeed.__version__,
            "fallback": any("falling back" in str(w.message) for w in caught)}


def _fairscale(device: str) -> dict[str, Any]:
    """FairScale FSDP fp16 (cuda) or its ddp stand-in (cpu: fairscale is CUDA-only), steps, then the round trip."""
    from bigseer import parallel

    backend = "fairscale" if device == "cuda" else "ddp"
    if backend == "fairscale":
        try:
            import fairscale  # noqa: F401
        except ImportError as exc:
            raise Missing(f"fairscale is not installed ({exc}); {CARRY}") from None
    crops = small_crops(device)
    par = parallel.setup(build_model(device), backend=backend, precision="fp16", optimizer_factory=lars(device),
                         device_type=device)
    scaler = type(par.scaler) if par.scaler is not None else None
    res = run_steps(par, crops, SMALL[device].steps, inject=1)
    res.update(backend=backend, scaler=f"{scaler.__module__}.{scaler.__name__}" if scaler else None)
    res["roundtrip"] = roundtrip(par, swav_config(device), backend, device, crops)
    return res


def _rank_fn(device: str) -> dict[str, Any]:
    return collect({"fsdp bf16": lambda: _fsdp(device, "bf16"), "fsdp fp16": lambda: _fsdp(device, "fp16"),
                    "deepspeed": lambda: _deepspeed(device), "fairscale": lambda: _fairscale(device)})


@pytest.fixture(scope="module", params=DEVICES)
def results(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {"device": request.param, **run_one_rank(_rank_fn, request.param)}


def test_imports_only_what_the_device_has(results: dict[str, Any]) -> None:
    assert results["imported_not_on_device"] == []


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_fsdp2_steps(results: dict[str, Any], precision: str) -> None:
    res = result(results, f"fsdp {precision}")
    assert_steps_ok(res)
    assert res["precision"] == precision
    if precision == "fp16":  # GradScaler: the injected overflow is skipped and the scale halved
        assert "inject" in res, "no fp16 loss scaler (GradScaler) reported"
        assert res["inject"]["scale_after"] == res["inject"]["scale_before"] / 2


def test_deepspeed_zero2_fp16_lars(results: dict[str, Any]) -> None:
    res = result(results, "deepspeed")
    assert_steps_ok(res)
    if results["device"] == "cuda":
        assert res["precision"] == "fp16" and not res["fallback"]
        assert res["inject"]["count"] == 2  # hysteresis 2: the second overflow lowers the scale
    else:  # no fp16 on CPU: bigseer warns and runs bf16, without a loss scaler (nothing to inject into)
        assert res["precision"] == "bf16" and res["fallback"] and "inject" not in res


def test_fairscale_fp16_steps(results: dict[str, Any]) -> None:
    res = result(results, "fairscale")
    assert_steps_ok(res)
    assert "inject" in res and res["inject"]["scale_after"] == res["inject"]["scale_before"] / 2
    if results["device"] == "cuda":
        assert res["backend"] == "fairscale" and str(res["scaler"]).startswith("fairscale."), res["scaler"]
    else:
        assert res["backend"] == "ddp"


def test_fairscale_checkpoint_reloads_loads_under_fsdp_and_exports(results: dict[str, Any]) -> None:
    n = result(results, "fairscale")["roundtrip"]
    assert n["moved"] > 0, "no applied step after saving: the reload would prove nothing"
    assert n["optim_pieces"] > 0
    for stage in ("reload", "reload_pieces"):
        assert n[stage] == {"diff": 0.0, "missing": [], "extra": []}, (stage, n[stage])
    assert n["reload_missing_pieces"] == []
    fs = n["fsdp"]
    assert fs["state"] == {"diff": 0.0, "missing": [], "extra": []}, fs["state"]
    assert fs["pieces"] == {"diff": 0.0, "missing": [], "extra": []}, fs["pieces"]  # same tensor names too
    assert fs["missing_pieces"] == [] and fs["scale"] == n["scale_saved"]
    assert math.isfinite(fs["step_loss"]), fs
    assert "model.safetensors" in n["export"]["files"]
    assert n["export"]["trunk"] == {"diff": 0.0, "missing": [], "extra": []}, n["export"]["trunk"]
