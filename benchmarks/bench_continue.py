"""Continue SwAV pretraining from an exported trunk (``--init_from``): does the trunk keep its features?

The issue's acceptance criterion: pretrain, export, then continue on the same data with ``--init_from`` and
default flags; the 1-shot and 5-shot probe accuracy of the trunk never drops more than 1 point below the
starting trunk at any checkpoint of the continued run, beside a naive continuation (fresh head, no warm-up:
``head_warmup_steps=0``).

Steps (all through the library):

1. data: scikit-learn's digits upsampled to ``--size`` px, stratified train / val split
   (``bench_pretraining_helps.write_digits_folder``);
2. pretrain ``--model`` on train with the ``auto`` recipe (``bench_pretraining_helps.pretrain_trunk``:
   ``bigseer.engine.pretrain``), exported by the engine (``result.export_path``);
3. for each variant (``--variant NAME[:FIELD=VALUE,...]``; ``default`` = only the run's bookkeeping set, the
   recipe and ``--init_from`` defaults applied by the engine), ``bigseer.engine.pretrain`` with
   ``PretrainConfig(init_from=<export dir>, data=train, output_dir, max_steps, batch_size, seed,
   checkpoint_every, backend="none", num_workers, keep_last)`` plus the variant's fields (``keep_last`` only keeps
   every checkpoint for the probes; it changes no training maths);
4. every checkpoint of every run: ``bigseer.export.export_checkpoint`` (timm layout) and the probe of
   ``bench_pretraining_helps.evaluate`` (frozen res5 features, ``bigseer.downstream.probe`` logistic probes, val
   split) at 1 and 5 shots, the same ``--draws`` draws (seed ``--seed``) for every trunk, so that differences are
   paired; the starting trunk is step 0 of every run.

Everything is kept under ``--workdir``: a finished run or a probed export is reused (delete it to redo).

    .venv/bin/python benchmarks/bench_continue.py --workdir /tmp/bench_continue4k --pretrain_steps 4000 \
        --markdown benchmarks/results/continue.md        # the variants of results/continue.md: --variant ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

# benchmarks/bench_pretraining_helps.py: data, pretraining, the probe pattern, CPU seconds
from bench_pretraining_helps import cpu_seconds, evaluate, parse_sets, pretrain_trunk, write_digits_folder  # noqa: E402
from report import uptime  # noqa: E402  (benchmarks/report.py)

BUDGETS = ("1-shot", "5-shot")
CRITERION = 1.0  # points below the starting trunk allowed at any checkpoint


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:field=value,field=value`` -> (name, PretrainConfig overrides)."""
    name, _, rest = text.partition(":")
    return name, parse_sets([kv for kv in rest.split(",") if kv]) if rest else {}


def probe_args(args: argparse.Namespace, baselines: bool) -> argparse.Namespace:
    """The namespace ``bench_pretraining_helps.evaluate`` reads."""
    return argparse.Namespace(model=args.model, size=args.size, split="judge", shots=[1, 5], fractions=[],
                              draws=args.draws, seed=args.seed, no_baselines=not baselines)


def probe(args: argparse.Namespace, data: str, weights: str, cache: Path, baselines: bool = False
          ) -> dict[str, dict[str, Any]]:
    """Probe results of ``weights`` (and the baselines), cached in ``cache`` (keyed by draws and seed)."""
    key = {"draws": args.draws, "seed": args.seed, "size": args.size, "baselines": baselines}
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["results"]
    results = evaluate(probe_args(args, baselines), data, weights)
    cache.write_text(json.dumps({"key": key, "results": results}))
    return results


def continue_run(args: argparse.Namespace, train_dir: str, start: str, name: str, sets: dict[str, Any]
                 ) -> dict[str, Any]:
    """One continued run (reused when its final checkpoint exists): facts and its step directories."""
    from bigseer.checkpoint.directory import checkpoints_root, committed_steps
    from bigseer.config import PretrainConfig
    from bigseer.engine import pretrain

    out = Path(args.workdir) / "runs" / name
    facts_file = out / "bench_facts.json"
    if facts_file.exists():
        facts = json.loads(facts_file.read_text())
        if facts.get("sets") == {k: (list(v) if isinstance(v, tuple) else v) for k, v in sets.items()} and \
                facts.get("max_steps") == args.steps:
            return facts
    if out.exists():  # an unfinished or different earlier run: start afresh (resume is off anyway)
        shutil.rmtree(out)
    kwargs: dict[str, Any] = dict(init_from=start, data=train_dir, output_dir=str(out), max_steps=args.steps,
                                  batch_size=args.batch, seed=args.seed, checkpoint_every=args.checkpoint_every,
                                  backend="none", num_workers=args.workers, keep_last=10**6)
    kwargs.update(sets)  # a variant may name other weights (e.g. the pretraining checkpoint for init_head)
    cfg = PretrainConfig(**kwargs)
    print(f"[{name}] continuing {args.steps} steps from {kwargs['init_from']} with {sets or 'default flags'}",
          file=sys.stderr, flush=True)
    t0, c0 = time.time(), cpu_seconds()
    # explicit: the fields this benchmark set, as the CLI passes its flags; without it a field set to its
    # PretrainConfig default (e.g. base_lr=0.3) counts as unset and the auto recipe replaces it
    result = pretrain(cfg, explicit=set(kwargs))
    wall, cpu = time.time() - t0, cpu_seconds() - c0
    used = json.loads(json.dumps(_config_used(out)))
    losses = list(result.losses)
    facts = {"name": name, "sets": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sets.items()},
             "max_steps": args.steps, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "losses": losses,
             "steps": [int(p.name.split("_")[1]) for p in committed_steps(checkpoints_root(out))],
             "used": {k: used.get(k) for k in ("base_lr", "warmup_steps", "head_warmup_steps", "init_head", "crops",
                                                "num_prototypes", "head_dims", "embed_dim", "start_lr",
                                                "freeze_prototypes_iters", "zero_init_last")}}
    facts_file.write_text(json.dumps(facts))
    return facts


def _config_used(out: Path) -> dict[str, Any]:
    """The resolved config the engine wrote (``OUTPUT_DIR/config.yaml``)."""
    import yaml

    sections = yaml.safe_load((out / "config.yaml").read_text()) or {}
    return {k: v for part in sections.values() if isinstance(part, dict) for k, v in part.items()}


def probe_run(args: argparse.Namespace, data: str, facts: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Export (``bigseer.export.export_checkpoint``) and probe every checkpoint of a run: {step: results}."""
    from bigseer.checkpoint.directory import checkpoints_root, step_dirname
    from bigseer.export import export_checkpoint

    out = Path(args.workdir) / "runs" / facts["name"]
    rows = {}
    for step in facts["steps"]:
        exp = out / "exports" / step_dirname(step)
        if not (exp / "model.safetensors").exists():
            export_checkpoint(str(checkpoints_root(out) / step_dirname(step)), str(exp), layout="timm")
        t0 = time.time()
        rows[step] = probe(args, data, str(exp), exp / "probe.json")["SwAV-pretrained"]
        print(f"[{facts['name']}] step {step}: " + ", ".join(
            f"{b} {rows[step][b]['mean']:.1f}" for b in BUDGETS) + f" ({time.time() - t0:.1f} s)", file=sys.stderr,
              flush=True)
    return rows


def drop_stats(start: dict[str, Any], row: dict[str, Any], budget: str) -> tuple[float, float]:
    """(mean of the paired per-draw differences row - start, its standard error)."""
    d = np.asarray(row[budget]["top1"]) - np.asarray(start[budget]["top1"])
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0


def verdict_of(start: dict[str, Any], rows: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Worst mean change below the start per budget over all checkpoints (step > 0) and whether it meets the
    criterion."""
    out: dict[str, Any] = {"met": True}
    for b in BUDGETS:
        worst = min(((drop_stats(start, r, b)[0], s) for s, r in rows.items() if s > 0), default=(0.0, 0))
        final = drop_stats(start, rows[max(rows)], b)[0]
        out[b] = {"worst_change": worst[0], "at_step": worst[1], "final_change": final}
        out["met"] = out["met"] and worst[0] >= -CRITERION
    return out


def plot(path: Path, start: dict[str, Any], runs: dict[str, dict[int, dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, b in zip(axes, BUDGETS):
        s0 = start[b]["mean"]
        ax.axhspan(s0 - CRITERION, s0 + 100, color="0.92")
        ax.axhline(s0, color="k", lw=1, ls="--", label=f"starting trunk {s0:.1f}")
        ax.axhline(s0 - CRITERION, color="r", lw=0.8, ls=":", label="start - 1 point")
        for name, rows in runs.items():
            steps = sorted(rows)
            means = [rows[s][b]["mean"] for s in steps]
            se = [rows[s][b]["std"] / math.sqrt(len(rows[s][b]["top1"])) for s in steps]
            ax.errorbar(steps, means, yerr=se, marker="o", ms=3, capsize=2, label=name)
        lo = min(min(r[b]["mean"] for r in rows.values()) for rows in runs.values())
        ax.set_ylim(min(lo, s0 - CRITERION) - 2, max(s0 + 4, max(max(r[b]["mean"] for r in rows.values())
                                                                    for rows in runs.values()) + 1))
        ax.set_xlabel("step of the continued run")
        ax.set_ylabel(f"{b} val top-1 % (mean over draws, ± s.e.)")
        ax.set_title(b)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="data, runs, exports and probe caches (reused)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--model", default="regnety_tiny")
    p.add_argument("--pretrain_steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=200, help="steps of each continued run")
    p.add_argument("--checkpoint_every", type=int, default=25)
    p.add_argument("--variant", action="append", default=None, metavar="NAME[:FIELD=VALUE,...]",
                   help="continued runs (default: 'default' and 'naive:head_warmup_steps=0')")
    p.add_argument("--draws", type=int, default=100,
                   help="paired probe draws per budget (20 left a standard error of ~0.35 points, the size of "
                        "the 1-point criterion)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", default=None, help="write the report here (and, unless --append, the plot next to "
                   "it: the same name, .png)")
    p.add_argument("--title", default=None, help="heading of the report's section")
    p.add_argument("--append", action="store_true", help="append to --markdown instead of overwriting it")
    args = p.parse_args()
    variants = [parse_variant(v) for v in (args.variant or ["default", "naive:head_warmup_steps=0"])]

    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    before = uptime()
    print(before, file=sys.stderr, flush=True)
    t_start, c_start = time.time(), cpu_seconds()
    data = str(work / f"digits{args.size}")
    if not os.path.isdir(os.path.join(data, "val")):
        write_digits_folder(data, args.size, seed=args.seed)
    train_dir = os.path.join(data, "train")

    # 1. pretrain + export (reused)
    pre_dir = work / "pretrain"
    pre_facts_file = work / "pretrain_facts.json"
    if pre_facts_file.exists() and json.loads(pre_facts_file.read_text()).get("steps") == args.pretrain_steps:
        pre_facts = json.loads(pre_facts_file.read_text())
    else:
        ns = argparse.Namespace(model=args.model, pretrain_steps=args.pretrain_steps, pretrain_batch=args.batch,
                                seed=args.seed, workers=args.workers, size=args.size, recipe="auto", set=[])
        export_path, pre_facts = pretrain_trunk(ns, train_dir, str(pre_dir))
        pre_facts["export_dir"] = str(Path(export_path).parent)
        pre_facts_file.write_text(json.dumps(pre_facts))
    start_weights = pre_facts["export_dir"]
    start_all = probe(args, data, start_weights, Path(start_weights) / "probe.json", baselines=True)
    start = start_all["SwAV-pretrained"]

    # 2. continued runs + probes of every checkpoint
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    facts: dict[str, dict[str, Any]] = {}
    for name, sets in variants:
        facts[name] = continue_run(args, train_dir, start_weights, name, sets)
        rows = probe_run(args, data, facts[name])
        rows[0] = start
        runs[name] = dict(sorted(rows.items()))
    after = uptime()
    cpu_total, wall_total = cpu_seconds() - c_start, time.time() - t_start

    # 3. report
    verdicts = {name: verdict_of(start, rows) for name, rows in runs.items()}
    text = report(args, pre_facts, start_all, runs, facts, verdicts, before, after, cpu_total, wall_total)
    print(text)
    if args.markdown:
        md = Path(args.markdown)
        if args.append:  # one plot per report: the first section's
            text = text.replace("![probe accuracy along the continued runs](PLOT_FILE)\n", "")
        else:
            png = md.with_suffix(".png")
            plot(png, start, runs)
            text = text.replace("PLOT_FILE", png.name)
        with open(md, "a" if args.append else "w") as f:
            f.write(text if not args.append else "\n" + text)
    print(json.dumps({"verdicts": verdicts, "cpu_s": round(cpu_total, 1), "wall_s": round(wall_total, 1)}))
    return 0


def report(args: argparse.Namespace, pre: dict[str, Any], start_all: dict[str, Any],
           runs: dict[str, dict[int, dict[str, Any]]], facts: dict[str, dict[str, Any]],
           verdicts: dict[str, dict[str, Any]], before: str, after: str, cpu_total: float, wall_total: float) -> str:
    start = start_all["SwAV-pretrained"]
    names = list(runs)
    cmd = ".venv/bin/python benchmarks/bench_continue.py " + shlex.join(sys.argv[1:])
    lines = [f"## {args.title or 'Continue from an exported trunk (--init_from): probe accuracy along the run'}", ""]
    lines += ["Verdicts (criterion: 1-shot and 5-shot never more than 1 point below the starting trunk at any "
              "checkpoint; change = mean over the paired draws):", ""]
    for name in names:
        v = verdicts[name]
        parts = [f"{b} worst {v[b]['worst_change']:+.1f} at step {v[b]['at_step']}, final {v[b]['final_change']:+.1f}"
                 for b in BUDGETS]
        lines.append(f"- **{name}** ({_flags(facts[name]['sets'])}): **{'met' if v['met'] else 'NOT met'}** — "
                     + "; ".join(parts))
    lines += ["", "Command (repo root; 2-core CPU machine shared with other engineers' jobs):", "", f"    {cmd}", "",
              f"`uptime` before: `{before}`  ", f"`uptime` after: `{after}`  ",
              f"Total {cpu_total:.0f} CPU s / {wall_total:.0f} s wall in this invocation (reused runs and probes "
              "cost nothing here).", ""]
    lines += [
        (f"Data: scikit-learn digits at {args.size} px, stratified split (seed {args.seed}): train for pretraining, "
         f"continuation and the probes' labeled draws, val for accuracy. Starting trunk: {args.model} pretrained "
         f"{pre['steps']} steps x batch {pre['batch']} ({pre['recipe']}; {pre['cpu_s']} CPU s; SwAV loss "
         f"{pre['first_loss']:.3f} -> {pre['last_loss']:.3f}, ln K = {pre['log_K']:.3f}), exported by the engine."),
        (f"Continued runs: `bigseer.engine.pretrain(PretrainConfig(init_from=<export dir>, data=train, "
         f"max_steps={args.steps}, batch_size={args.batch}, seed={args.seed}, checkpoint_every="
         f"{args.checkpoint_every}, backend='none', num_workers={args.workers}, keep_last=10**6, ...))` plus each "
         "variant's fields; the engine applies the auto recipe and the warm-start defaults. Each checkpoint is "
         "exported (`bigseer.export.export_checkpoint`, timm layout) and probed: logistic probe on frozen res5 "
         f"features (`bigseer.downstream.probe`), {args.draws} draws per budget, the same draws for every trunk "
         "(paired). Step 0 = the starting trunk."), "",
        "Resolved settings of each run (the engine's `config.yaml`):", "",
        "| run | flags set | base_lr | warmup_steps | head_warmup_steps | crops | K | CPU s "
        "| SwAV loss first 5 -> last 5 steps |",
        "|---|---|---:|---:|---:|---|---:|---:|---|"]
    for name in names:
        f = facts[name]
        u = f["used"]
        ls = f["losses"]
        loss = f"{statistics.mean(ls[:5]):.3f} -> {statistics.mean(ls[-5:]):.3f}" if len(ls) >= 5 else "-"
        lines.append(f"| {name} | {_flags(f['sets'])} | {u['base_lr']} | {u['warmup_steps']} | "
                     f"{u['head_warmup_steps']} | {u['crops']} | {u['num_prototypes']} | {f['cpu_s']} | {loss} |")
    lines += ["", "Starting trunk and its context (val top-1 %, mean ± std over draws):", "",
              "| budget | " + " | ".join(start_all) + " |", "|---" * (len(start_all) + 1) + "|"]
    for b in BUDGETS:
        lines.append(f"| {b} | " + " | ".join(f"{start_all[s][b]['mean']:.1f} ± {start_all[s][b]['std']:.1f}"
                                              for s in start_all) + " |")
    lines += ["", "Along the continued runs: val top-1 % (mean ± std over draws) and, in brackets, the change vs the "
              "starting trunk (mean of the paired per-draw differences ± its standard error):", ""]
    header = "| step | " + " | ".join(f"{n} {b}" for n in names for b in BUDGETS) + " |"
    lines += [header, "|---:" + "|---" * (len(names) * len(BUDGETS)) + "|"]
    steps = sorted(set().union(*[set(r) for r in runs.values()]))
    for s in steps:
        cells = []
        for n in names:
            for b in BUDGETS:
                row = runs[n].get(s)
                if row is None:
                    cells.append("")
                elif s == 0:
                    cells.append(f"{row[b]['mean']:.1f} ± {row[b]['std']:.1f} (start)")
                else:
                    d, se = drop_stats(start, row, b)
                    cells.append(f"{row[b]['mean']:.1f} ± {row[b]['std']:.1f} ({d:+.1f} ± {se:.1f})")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "| run | max drop below start, 1-shot (step) | 5-shot (step) | criterion |", "|---|---:|---:|---|"]
    for n in names:
        v = verdicts[n]
        cells = [f"{max(-v[b]['worst_change'], 0.0):.1f} ({v[b]['at_step']})" for b in BUDGETS]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {'met' if v['met'] else 'NOT met'} |")
    lines += ["", "![probe accuracy along the continued runs](PLOT_FILE)", ""]
    return "\n".join(lines) + "\n"


def _flags(sets: dict[str, Any]) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in sets.items()) or "defaults"


if __name__ == "__main__":
    sys.exit(main())
