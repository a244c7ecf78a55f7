"""Device parameters of the ``tests/gpu`` checks and a 1-rank process group for them in a spawned process.

Every check runs on ``cpu`` (a normal test: the CPU stand-in of what the GPU run does) and on ``cuda``
(marker ``gpu``; skipped with the reason where CUDA is missing). The device machine runs the cuda ones with
``python3 -m pytest -m gpu tests/gpu -q -rs`` (``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import contextlib
import glob
import multiprocessing as mp
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist

from tests.distributed_utils import free_port

HAS_CUDA = torch.cuda.is_available()
NEEDS_CUDA = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA: torch.cuda.is_available() is False "
                                                     "(the device run: bash benchmarks/gpu_check.sh)")
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, NEEDS_CUDA], id="cuda")
DEVICES = ["cpu", CUDA]
# packages bigseer can import that the device image lacks and .whl/ does not carry: the checks must not need them
NOT_ON_DEVICE = ("omegaconf", "antlr4", "submitit", "webdataset", "lightly", "s3fs", "gcsfs")
TIMEOUT_S = float(os.environ.get("BIGSEER_GPU_TEST_TIMEOUT_S", "300"))


class Missing(Exception):
    """An optional package the check needs is not installed: the test skips with this reason."""


def collect(checks: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Each check's result, ``{"error": traceback}`` or ``{"skip": reason}``: one failing check hides no other."""
    out: dict[str, Any] = {}
    for name, fn in checks.items():
        try:
            out[name] = fn()
        except Missing as exc:
            out[name] = {"skip": str(exc)}
        except Exception:  # noqa: BLE001 - reported by the check's own test
            out[name] = {"error": traceback.format_exc()}
    out["imported_not_on_device"] = sorted(m for m in NOT_ON_DEVICE if m in sys.modules)
    return out


def result(results: dict[str, Any], name: str) -> Any:
    """One check's result from ``collect``; fails with its traceback or skips with its reason."""
    got = results[name]
    if isinstance(got, dict) and "error" in got:
        pytest.fail(f"{name} raised:\n{got['error']}", pytrace=False)
    if isinstance(got, dict) and "skip" in got:
        pytest.skip(got["skip"])
    return got


def _child(fn: Callable[[str], Any], device: str, init_file: str, out_file: str, env: dict[str, str]) -> None:
    os.environ.update(env, DS_ACCELERATOR=device)  # before deepspeed is imported
    torch.set_num_threads(int(os.environ.get("BIGSEER_TEST_THREADS", "1")))
    try:
        if device == "cuda":
            torch.cuda.set_device(0)
            dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=0, world_size=1,
                                    device_id=torch.device("cuda", 0))
        else:
            dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=0, world_size=1)
        res: Any = fn(device)
    except BaseException:  # noqa: BLE001 - handed to the parent
        res = {"__error__": traceback.format_exc()}
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    torch.save(res, out_file)


def run_one_rank(fn: Callable[[str], Any], device: str, timeout_s: float = TIMEOUT_S) -> Any:
    """``fn(device)`` in a spawned process with a 1-rank default group (gloo on cpu, nccl on cuda); its result."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1"}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out_file = os.path.join(tmp, "result.pt")
            proc = mp.get_context("spawn").Process(target=_child, args=(fn, device, os.path.join(tmp, "store"),
                                                                         out_file, env))
            proc.start()
            proc.join(timeout_s)
            if proc.is_alive():
                proc.kill()
                proc.join()
                raise TimeoutError(f"{fn.__name__} on {device} ran past {timeout_s:.0f}s")
            if not os.path.exists(out_file):
                raise RuntimeError(f"{fn.__name__} on {device} died with exit code {proc.exitcode}")
            res = torch.load(out_file, weights_only=False)
    finally:  # DeepSpeed's CPU comm names its shared memory after MASTER_ADDR / MASTER_PORT
        for seg in glob.glob(f"/dev/shm/deepspeed_*_{env['MASTER_ADDR']}_{env['MASTER_PORT']}_*"):
            with contextlib.suppress(OSError):
                os.unlink(seg)
    if isinstance(res, dict) and "__error__" in res:
        raise RuntimeError(f"{fn.__name__} on {device} failed:\n{res['__error__']}")
    return res
