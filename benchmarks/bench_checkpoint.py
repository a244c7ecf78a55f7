"""Checkpoint cost in a real run (issue 11): the training stall per checkpoint, sync vs async, and the time to
resume a checkpoint on another number of ranks (N -> M).

Everything runs ``bigseer.engine.pretrain`` itself (``PretrainConfig``), each run in a fresh ``torchrun``
(gloo); the benchmark only wraps three library functions with timers (no library code is changed):
``TrainLogger.step`` (wall time at the end of every step, every rank), ``bigseer.checkpoint.load_checkpoint``
(load start / end) and ``CheckpointWriter._write`` (the DCP write + commit, in the background thread when async).

Stall (2 ranks, ``--backend``, ``--model``): per repeat three runs of ``--steps`` steps, order rotated per repeat:

  none   ``checkpoint_every=0`` (the engine still saves once after the last step, outside the measured window)
  sync   ``checkpoint_every=--every``, ``async_checkpoint=False``
  async  ``checkpoint_every=--every``, ``async_checkpoint=True``

Reported per variant: ``checkpoint_stall_s`` as the engine logs it in metrics.jsonl (the time ``save`` blocks the
training loop: staging copies, plus the whole write when sync, plus waiting for a previous background save), the
background write time (async), and the *effective* cost per checkpoint: (training wall time of steps 1..N minus
the same for ``none`` in the same repeat) / checkpoints written, which also counts the background writer slowing
the steps it overlaps (on 2 shared cores it competes with training for CPU and the GIL).

Resume (same model and global batch): a checkpoint is written once by a 2-rank and once by a 1-rank run; then each
scenario (2->1, 1->2, 2->2, 1->1, and fresh starts on 1 and 2 ranks without a checkpoint) runs ``pretrain`` with
``resume="latest"`` on a fresh copy of that output directory for one step, repeated and interleaved. Time from
the launch of ``torchrun`` to the end of the first resumed step (rank 0, wall clock), split into: launch + Python
start, imports, set-up before the load (process group, config, model on meta, FSDP sharding, optimizer),
``load_checkpoint`` (DCP read of the logical tensors into this run's pieces, RNG, trainer state), after the load
(after_load, scaler, queue), opening the data stream up to the first step's start, and the first step as the engine
times it (first batch + forward/backward/step).
Checkpoint files are read from the page cache (just written / copied): a cold-storage read would add its I/O time.

    .venv/bin/python benchmarks/bench_checkpoint.py --out benchmarks/results/checkpoint.md
"""

from __future__ import annotations

import time

T_SCRIPT = time.time()  # before any heavy import: the worker's "Python is up" mark

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from report import emit, uptime  # noqa: E402  (benchmarks/report.py)

STALL_VARIANTS = ("none", "sync", "async")
RESUMES = (("2->1", 2, 1), ("1->2", 1, 2), ("2->2", 2, 2), ("1->1", 1, 1), ("fresh 1", 0, 1), ("fresh 2", 0, 2))


# ------------------------------------------------------------------------------------------------ worker
def worker(args: argparse.Namespace) -> None:
    ev: dict[str, float] = {"script": T_SCRIPT}
    import torch

    from bigseer import checkpoint as ckpt_pkg
    from bigseer.checkpoint import store
    from bigseer.config import PretrainConfig
    from bigseer.engine import pretrain
    from bigseer.train_log import TrainLogger

    ev["imported"] = time.time()
    step_ends: list[tuple[int, float, float]] = []
    writes: list[tuple[float, float, float]] = []
    orig_step, orig_load, orig_write = TrainLogger.step, ckpt_pkg.load_checkpoint, store.CheckpointWriter._write
    orig_close = store.CheckpointWriter.close

    def step(self, s, metrics):
        step_ends.append((s, time.time(), time.process_time()))
        return orig_step(self, s, metrics)

    def load(*a, **k):
        ev["load_start"] = time.time()
        try:
            return orig_load(*a, **k)
        finally:
            ev["load_end"] = time.time()

    def write(self, *a, **k):
        t, c = time.time(), time.thread_time()  # thread_time: CPU seconds of the thread that writes
        try:
            return orig_write(self, *a, **k)
        finally:
            writes.append((t, time.time(), time.thread_time() - c))

    def close(self):
        try:
            return orig_close(self)
        finally:
            ev["writer_closed"], ev["writer_closed_cpu"] = time.time(), time.process_time()

    from bigseer.data.stream import MultiCropStream

    orig_stream_init = MultiCropStream.__init__

    def stream_init(self, *a, **k):
        ev["stream_init"] = time.time()
        return orig_stream_init(self, *a, **k)

    MultiCropStream.__init__ = stream_init
    TrainLogger.step, ckpt_pkg.load_checkpoint, store.CheckpointWriter._write = step, load, write
    store.CheckpointWriter.close = close
    nproc = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(args.threads)
    cfg = PretrainConfig(model=args.model, data="builtin", crops=args.crops, batch_size=args.global_batch // nproc,
                         backend=args.backend if nproc > 1 else "auto", max_steps=args.max_steps,
                         warmup_steps=0, checkpoint_every=args.every, async_checkpoint=args.async_save,
                         output_dir=args.run_dir, resume=args.resume, export=False, keep_last=2, num_workers=0,
                         head_dims=tuple(args.head[:-1]), embed_dim=args.head[-1], num_prototypes=args.prototypes)
    ev["pretrain"] = time.time()
    pretrain(cfg)
    ev["returned"] = time.time()
    rank = int(os.environ.get("RANK", "0"))
    rows = []
    metrics = os.path.join(args.run_dir, "metrics.jsonl")
    if rank == 0 and os.path.exists(metrics):
        with open(metrics) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(args.result_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"events": ev, "step_ends": step_ends, "writes": writes, "metrics": rows, "threads":
                   torch.get_num_threads()}, f)


# ---------------------------------------------------------------------------------------------- launcher
def launch(args: argparse.Namespace, nproc: int, run_dir: str, *, max_steps: int, every: int = 0,
           async_save: bool = False, resume: str = "no") -> list[dict]:
    """One fresh torchrun of ``nproc`` ranks running pretrain; returns per-rank timing records."""
    with tempfile.TemporaryDirectory(prefix="bench_ckpt_res_") as res:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               os.path.abspath(__file__), "--worker", "--run_dir", run_dir, "--result_dir", res,
               "--model", args.model, "--crops", args.crops, "--global_batch", str(args.global_batch),
               "--backend", args.backend, "--max_steps", str(max_steps), "--every", str(every),
               "--resume", resume, "--threads", str(args.threads), "--prototypes", str(args.prototypes),
               "--head", *map(str, args.head)] + (["--async_save"] if async_save else [])
        env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(args.threads))
        t_launch = time.time()
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
            raise SystemExit(f"torchrun failed ({proc.returncode}): {' '.join(cmd)}")
        out = []
        for r in range(nproc):
            with open(os.path.join(res, f"rank{r}.json")) as f:
                rec = json.load(f)
            rec["events"]["launch"] = t_launch
            out.append(rec)
        return out


def dir_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 2 ** 20


def stall_part(args: argparse.Namespace, work: str) -> dict:
    runs = []
    for rep in range(args.repeats):
        order = STALL_VARIANTS[rep % 3:] + STALL_VARIANTS[:rep % 3]
        for v in order:
            run_dir = os.path.join(work, f"stall_{v}_{rep}")
            recs = launch(args, 2, run_dir, max_steps=args.steps, every=0 if v == "none" else args.every,
                          async_save=v == "async")
            r0 = recs[0]
            ends = {s: t for s, t, _ in r0["step_ends"]}
            cpu = {s: c for s, _, c in r0["step_ends"]}
            rows = {row["step"]: row for row in r0["metrics"]}
            saves = [s for s in range(1, args.steps) if v != "none" and s % args.every == 0]
            stalls = [rows[s + 1]["checkpoint_stall_s"] for s in saves]  # logged with the step after the save
            step_s = {s: args.global_batch / rows[s]["img_per_s"] for s in rows}
            ckpts = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
            size = dir_mb(os.path.join(run_dir, "checkpoints", [c for c in ckpts if c.startswith("step_")][-1]))
            writes = [b - a for a, b, _ in r0["writes"]][:len(saves)]
            write_cpu = [c for _, _, c in r0["writes"]][:len(saves)]
            runs.append({"repeat": rep, "variant": v, "wall": ends[args.steps] - ends[1],
                         "wall_commit": r0["events"]["writer_closed"] - ends[1], "saves": saves,
                         "cpu_commit": r0["events"]["writer_closed_cpu"] - cpu[1], "write_cpu": write_cpu,
                         "stalls": stalls, "writes": writes, "step_s": step_s, "ckpt_mb": size,
                         "load1": os.getloadavg()[0]})
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"  stall repeat {rep} {v:5s}: wall(steps 1..{args.steps}) {runs[-1]['wall']:.2f} s, to the final "
                  f"commit {runs[-1]['wall_commit']:.2f} s, stalls "
                  + ", ".join(f"{s:.2f}" for s in stalls) + (" s, writes " + ", ".join(f"{w:.2f}" for w in writes)
                                                            if writes else "")
                  + f", process CPU {runs[-1]['cpu_commit']:.1f} s, ckpt {size:.0f} MiB, load {runs[-1]['load1']:.2f}",
                  flush=True)
    return {"runs": runs}


def resume_part(args: argparse.Namespace, work: str) -> dict:
    sources = {}
    for n in (1, 2):  # the checkpoints to resume: written once by N ranks after --resume_at steps (sync save)
        src = os.path.join(work, f"source_{n}")
        launch(args, n, src, max_steps=args.resume_at)
        sources[n] = src
        print(f"  wrote a {n}-rank checkpoint at step {args.resume_at} ({dir_mb(os.path.join(src, 'checkpoints')):.0f}"
              f" MiB on disk incl. keep_last)", flush=True)
    runs = []
    for rep in range(args.resume_repeats):
        order = RESUMES[rep % len(RESUMES):] + RESUMES[:rep % len(RESUMES)]
        for label, n, m in order:
            run_dir = os.path.join(work, f"resume_{rep}_{label.replace(' ', '_').replace('>', '')}")
            if n:
                shutil.copytree(sources[n], run_dir)
                recs = launch(args, m, run_dir, max_steps=args.resume_at + 1, resume="latest")
            else:
                recs = launch(args, m, run_dir, max_steps=1)
            ev = recs[0]["events"]
            first_step, first, _ = recs[0]["step_ends"][0]
            row = next(r for r in recs[0]["metrics"][::-1] if r["step"] == first_step)  # the copied run's rows precede
            step_compute = args.global_batch / row["img_per_s"]
            seg = {"launch -> Python up": ev["script"] - ev["launch"], "imports": ev["imported"] - ev["script"],
                   "set-up (process group, config, model, parallel.setup, writer)":
                       (ev["load_start"] if n else ev["stream_init"]) - ev["pretrain"],
                   "load_checkpoint": (ev["load_end"] - ev["load_start"]) if n else None,
                   "after load (after_load, scaler, queue)": (ev["stream_init"] - ev["load_end"]) if n else None,
                   "data stream open, logger (to the first step's start)": first - ev["stream_init"] - step_compute,
                   "first step (its logged time: first batch + compute)": step_compute,
                   "total: launch -> first step end": first - ev["launch"]}
            runs.append({"repeat": rep, "label": label, "seg": seg, "resumed_step": recs[0]["step_ends"][0][0],
                         "load1": os.getloadavg()[0], "pretrain_call": ev["pretrain"] - ev["launch"]})
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"  resume repeat {rep} {label:7s}: total {seg['total: launch -> first step end']:.2f} s"
                  + (f", load_checkpoint {seg['load_checkpoint']:.2f} s" if n else "")
                  + f" (first step {recs[0]['step_ends'][0][0]}), load {runs[-1]['load1']:.2f}", flush=True)
    for src in sources.values():
        shutil.rmtree(src, ignore_errors=True)
    return {"runs": runs}


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(args: argparse.Namespace, stall: dict | None, resume: dict | None, before: str, after: str) -> str:
    lines = ["## Checkpoint stall and resume time (issue 11)", "",
             "Command (repo root, 2-core CPU machine shared with other engineers):", "",
             "    .venv/bin/python benchmarks/bench_checkpoint.py " + " ".join(sys.argv[1:]), "",
             (f"Run: `bigseer.engine.pretrain`, model {args.model}, backend {args.backend} on 2 ranks (1 rank: the plain "
              f"model), gloo, fp32, LARS, head {'-'.join(map(str, args.head))}, {args.prototypes} prototypes, crops "
              f"{args.crops}, global batch {args.global_batch} (kept on resume), builtin data, {args.threads} torch "
              f"thread(s) per rank; checkpoints under a temp dir on the local disk "
              f"(`{args.workdir or tempfile.gettempdir()}`), fsync'ed by the commit."),
             f"`uptime` before: `{before}`", f"`uptime` after: `{after}`", ""]
    if stall:
        runs = stall["runs"]
        by = {(r["repeat"], r["variant"]): r for r in runs}
        reps = sorted({r["repeat"] for r in runs})
        size = med([r["ckpt_mb"] for r in runs])
        nsave = len(by[(reps[0], "sync")]["saves"])
        lines += [(f"### Stall per checkpoint, 2 ranks ({args.steps} steps, checkpoint every {args.every}: {nsave} "
                  f"checkpoints in the measured window; one checkpoint = {size:.0f} MiB on disk)"), "",
                  (f"{len(reps)} repeats, each running none / sync / async (order rotated). `checkpoint_stall_s` is the "
                   "engine's metric (median over all checkpoints of all repeats, range). The write is "
                   "`CheckpointWriter._write` (DCP + small files + commit with fsync; inside the stall when sync, in the "
                   "background thread when async): wall seconds and CPU seconds of the thread running it. *Effective* "
                   "costs per checkpoint compare a run with the `none` run of the same repeat over the same window (end "
                   "of step 1 to the commit of the final checkpoint, which every variant writes; async's includes "
                   "waiting for a background save still in flight): wall = (wall_V - wall_none) / checkpoints, CPU = "
                   "(rank 0 process CPU_V - CPU_none) / checkpoints; medians over repeats (range). Wall differences are "
                   "at the mercy of the other jobs on the machine; CPU seconds much less so."), "",
                  ("| variant | checkpoint_stall_s | write wall s | write thread CPU s | effective wall s per checkpoint | "
                   "effective CPU s per checkpoint (rank 0) | median step s (steps 2..N) |"),
                  "|---|---:|---:|---:|---:|---:|---:|"]
        eff = {v: [] for v in STALL_VARIANTS}
        eff_cpu = {v: [] for v in STALL_VARIANTS}
        for rep in reps:
            for v in ("sync", "async"):
                n = max(1, len(by[(rep, v)]["saves"]))
                eff[v].append((by[(rep, v)]["wall_commit"] - by[(rep, "none")]["wall_commit"]) / n)
                eff_cpu[v].append((by[(rep, v)]["cpu_commit"] - by[(rep, "none")]["cpu_commit"]) / n)

        def rng(xs: list[float], f: str = ".2f") -> str:
            return f"{med(xs):{f}} ({min(xs):{f}} to {max(xs):{f}})" if xs else "-"

        for v in STALL_VARIANTS:
            rs = [by[(rep, v)] for rep in reps]
            steps = [t for r in rs for s, t in r["step_s"].items() if int(s) > 1]
            if v == "none":
                lines.append(f"| none | - | - | - | (reference) | (reference) | {med(steps):.2f} |")
                continue
            stalls = [s for r in rs for s in r["stalls"]]
            writes = [w for r in rs for w in r["writes"]]
            wcpu = [w for r in rs for w in r["write_cpu"]]
            lines.append(f"| {v} | {rng(stalls, '.3f')} | {med(writes):.2f} | {med(wcpu):.2f} | {rng(eff[v])} | "
                         f"{rng(eff_cpu[v])} | {med(steps):.2f} |")
        lines += ["", ("Per run (wall time of steps 1..N; to the final commit; rank 0 process CPU over the latter; "
                       "stalls and writes of its checkpoints):"), "",
                  "| repeat | variant | wall steps 1..N s | to final commit s | CPU s | stalls s | writes s | load (1 min) |",
                  "|---|---|---:|---:|---:|---|---|---:|"]
        for r in runs:
            lines.append(f"| {r['repeat']} | {r['variant']} | {r['wall']:.2f} | {r['wall_commit']:.2f} | "
                         f"{r['cpu_commit']:.1f} | " + ", ".join(f"{s:.3f}" for s in r["stalls"]) + " | "
                         + ", ".join(f"{w:.2f}" for w in r["writes"]) + f" | {r['load1']:.2f} |")
        lines.append("")
    if resume:
        runs = resume["runs"]
        labels = [lab for lab, _, _ in RESUMES]
        segs = list(runs[0]["seg"])
        lines += [(f"### Time to the first resumed step (rank 0 wall clock, median of {args.resume_repeats} repeats, "
                  f"seconds; the checkpoint was written at step {args.resume_at})"), "",
                  "| part | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
        for sname in segs:
            cells = []
            for lab in labels:
                vals = [r["seg"][sname] for r in runs if r["label"] == lab and r["seg"][sname] is not None]
                cells.append(f"{med(vals):.2f}" if vals else "-")
            lines.append(f"| {sname} | " + " | ".join(cells) + " |")
        lines += ["", "Per run (total launch -> first step end, load_checkpoint):", "",
                  "| repeat | scenario | total s | load_checkpoint s | first step | load (1 min) |",
                  "|---|---|---:|---:|---:|---:|"]
        for r in runs:
            lc = r["seg"]["load_checkpoint"]
            lines.append(f"| {r['repeat']} | {r['label']} | {r['seg']['total: launch -> first step end']:.2f} | "
                         f"{'-' if lc is None else f'{lc:.2f}'} | {r['resumed_step']} | {r['load1']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="regnety_8gf")
    ap.add_argument("--backend", default="fsdp", choices=("fsdp", "ddp"))
    ap.add_argument("--crops", default="2x64+2x32")
    ap.add_argument("--global_batch", type=int, default=4)
    ap.add_argument("--head", type=int, nargs="+", default=[2048, 128], help="hidden widths..., embedding width")
    ap.add_argument("--prototypes", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=10, help="steps per stall run")
    ap.add_argument("--every", type=int, default=3, help="checkpoint_every in the sync/async runs")
    ap.add_argument("--repeats", type=int, default=3, help="stall repeats (each: none, sync, async)")
    ap.add_argument("--resume_at", type=int, default=2, help="step of the checkpoint that is resumed")
    ap.add_argument("--resume_repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per rank (2 threads in one process "
                    "on this shared 2-core machine made steps 5-60x slower than 1: spinning under oversubscription)")
    ap.add_argument("--part", default="all", choices=("all", "stall", "resume"))
    ap.add_argument("--workdir", default=None, help="where run directories go (default: a temp dir)")
    ap.add_argument("--out", default=None)
    # worker-only
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run_dir", help=argparse.SUPPRESS)
    ap.add_argument("--result_dir", help=argparse.SUPPRESS)
    ap.add_argument("--max_steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--resume", default="no", help=argparse.SUPPRESS)
    ap.add_argument("--async_save", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    before = uptime()
    print(before, flush=True)
    work = tempfile.mkdtemp(prefix="bench_ckpt_", dir=args.workdir)
    try:
        stall = stall_part(args, work) if args.part in ("all", "stall") else None
        resume = resume_part(args, work) if args.part in ("all", "resume") else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    after = uptime()
    text = report(args, stall, resume, before, after)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
