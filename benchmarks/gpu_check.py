"""GPU throughput benchmark of bigseer (project issues 5, 16, 22): images/s and MFU of a large-RegNetY SwAV step.

Rows, each ``ok`` / ``FAIL: <error>`` / ``skipped: <reason>``:

- ``throughput <model> <mode>``: one SwAV training step of regnety_128gf (then regnety_256gf if time is left),
  SEER head and crops 2x224+4x96, FSDP2 bf16, activation checkpointing, LARS; channels_last on/off and compile
  on/off; the largest batch a doubling probe fits; MFU via ``bigseer.perf`` against the measured bf16 matmul
  peak and the GPU's spec peak; peak memory beside ``bigseer.plan``'s plan (benchmarks/gpu_measure.py);
- ``profile``: when the first variant's MFU is below 35% (or ``--profile``), ``torch.profiler`` top ops and a
  trace (benchmarks/gpu_profile.py).

The correctness checks of the GPU run (SyncBN on NCCL, FSDP2 / DeepSpeed / FairScale fp16 with injected
overflows, checkpoint round trip across backends, nvjpeg decode) are tests: ``pytest -m gpu tests/gpu``; give
their JUnit XML with ``--tests-xml`` and the report lists them too. One process, one device, a 1-rank process
group; every row has a time limit inside one budget (``--budget-s``); the report is written after each row and
on SIGTERM to ``OUT/gpu_check.md`` + ``gpu_check.json``.

Device: ``bash benchmarks/gpu_check.sh`` (tests, then this). CPU dry run (tests/test_gpu_check.py):
``python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/x``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# run from the repo root, not installed: `import bigseer` and the sibling gpu_* modules from anywhere
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_harness import Row, Terminated, init_one_rank, raise_terminated, run_check, wanted_check  # noqa: E402
from gpu_measure import measure  # noqa: E402
from gpu_profile import check_profile  # noqa: E402
from gpu_report import environment, header_line, report, write  # noqa: E402
from gpu_throughput import FULL, TINY, Ctx, Sizes  # noqa: E402

PROFILE_S = (5.0, 30.0)  # min, max seconds of the profile row
# name, fn(limit), min seconds, max seconds
Check = tuple[str, Callable[[float], Row], float, float]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (CPU dry run)")
    ap.add_argument("--out", default=os.environ.get("OUT") or ".",
                    help="folder for gpu_check.md/.json (default $OUT, else the current directory)")
    ap.add_argument("--budget-s", type=float, default=200.0, help="total seconds for all rows (default 200)")
    ap.add_argument("--batch", type=int, default=None, help="throughput batch (default: found by a probe)")
    ap.add_argument("--tp-max-batch", type=int, default=None, help="largest batch the probe tries")
    ap.add_argument("--only", default=None, help="comma-separated row names or leading parts (e.g. "
                                                  "'throughput 128gf,profile'); default all")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend of the compile variant (default inductor on CUDA, eager on CPU)")
    ap.add_argument("--profile", action="store_true", help="profile even when the MFU is >= 35%%")
    ap.add_argument("--tests-xml", default=None, help="pytest --junitxml file of the GPU tests to list in the report")
    return ap.parse_args(argv)


def make_ctx(args: argparse.Namespace) -> Ctx:
    sizes = TINY if args.tiny else FULL
    if args.tp_max_batch:
        sizes = Sizes(**{**sizes.__dict__, "max_batch": args.tp_max_batch})
    backend = args.compile_backend or ("inductor" if args.device == "cuda" else "eager")
    return Ctx(args.device, sizes, args.batch, backend, args.profile, out=args.out)


def checks(ctx: Ctx) -> list[Check]:
    """The throughput variants in order, the profile row right after the first (whose model it reuses)."""
    out: list[Check] = []
    for i, v in enumerate(ctx.sizes.variants):
        out.append((v.name, lambda lim, v=v, i=i: measure(ctx, v, lim - 2, keep_live=i == 0), v.min_s, v.max_s))
        if i == 0:
            out.append(("profile", lambda lim: check_profile(ctx), *PROFILE_S))
    return out


def release_live(ctx: Ctx) -> None:
    """Free the first variant's model, kept for the profile row."""
    live = ctx.shared.pop("live", None)
    if live is not None:
        with contextlib.suppress(Exception):
            live["teardown"]()


def run_rows(ctx: Ctx, wanted: list[str] | None, budget_s: float, t_begin: float,
             on_row: Callable[[list[Row]], None]) -> list[Row]:
    """Each wanted row under its limit, skipped with the reason when the budget cannot give it its minimum."""
    rows: list[Row] = []
    for name, fn, min_s, max_s in checks(ctx):
        if not wanted_check(name, wanted):
            continue
        left = budget_s - (time.perf_counter() - t_begin)
        limit = min(max_s, left - 1)
        if limit < min_s:
            rows.append(Row(name, status=f"skipped: out of time ({max(left, 0):.0f}s of the {budget_s:.0f}s budget "
                                         f"left; needs {min_s:.0f}s)"))
            print(f"ROW | {name} | {rows[-1].status} |  | 0.0 |", flush=True)
        else:
            rows.append(run_check(name, lambda fn=fn, limit=limit: fn(limit), limit))
        if name == "profile" or (name == ctx.sizes.variants[0].name and not wanted_check("profile", wanted)):
            release_live(ctx)
        on_row(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_begin = time.perf_counter()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False (use --device cpu for a dry run)")
        return 2
    ctx = make_ctx(args)
    init_one_rank(args.device)
    env = environment(args.device)
    header = header_line(env, args.device)
    print(header, flush=True)
    signal.signal(signal.SIGTERM, raise_terminated)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()] if args.only else None
    rows: list[Row] = []

    def on_row(done: list[Row]) -> None:
        rows[:] = done
        write(args.out, rows, header, ctx, env, args.tests_xml)

    note = ""
    try:
        run_rows(ctx, wanted, args.budget_s, t_begin, on_row)
    except Terminated:
        note = "; TERMINATED (SIGTERM) before the end"
    finally:
        release_live(ctx)
    header += f"; total {time.perf_counter() - t_begin:.0f}s of a {args.budget_s:.0f}s budget{note}"
    write(args.out, rows, header, ctx, env, args.tests_xml)
    print("\n" + report(rows, header, ctx, args.tests_xml), flush=True)
    with contextlib.suppress(Exception):
        torch.distributed.destroy_process_group()
    if note:
        return 124
    return 1 if any(r.status.startswith("FAIL") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
