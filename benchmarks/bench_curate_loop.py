"""The curation loop at an equal step budget: pretrain on the raw pile for S steps, versus pretrain on it for S/2,
curate the pile with that trunk (embed -> dedup -> curate) and continue S/2 steps on the curated list with
``--init_from`` the half run's checkpoint and ``--init_head`` (its trained SwAV head, so no warm-up).

Pile: ``bench_curate.make_pile`` (sklearn digits made wild: long-tailed classes, near-duplicate bursts, byte
copies, noise and flat junk, non-image files). Every run: regnety_tiny, the ``auto`` recipe of the raw pile (the
same settings in every phase, so the head carries over), batch 64, one process, 1 torch thread. Probe: frozen res5
features, logistic regression on the balanced held-out digits split, the same draws for every trunk
(``bench_pretraining_helps.evaluate``). All pretraining, embedding, dedup and curation are bigseer's own calls.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_curate_loop.py --dir /tmp/loop --steps 1000 \\
        --markdown benchmarks/results/curate_loop.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import emit, uptime  # noqa: E402


def pretrain_run(data: str, out: Path, steps: int, over: dict[str, Any], seed: int, **init: Any) -> dict[str, Any]:
    """``bigseer.engine.pretrain`` with the recipe overrides ``over`` (and ``init_from`` / ``init_head``)."""
    from benchmarks.bench_pretraining_helps import cpu_seconds
    from bigseer.config import PretrainConfig
    from bigseer.engine import pretrain

    cfg = PretrainConfig(model="regnety_tiny", data=data, output_dir=str(out), max_steps=steps, batch_size=64,
                         seed=seed, backend="none", num_workers=1, recipe="none", log_every=max(steps // 10, 1),
                         **over, **init)
    t0, c0 = time.time(), cpu_seconds()
    result = pretrain(cfg)
    return {"export": str(result.export_path), "steps": result.steps, "wall_s": round(time.time() - t0, 1),
            "cpu_s": round(cpu_seconds() - c0, 1), "loss": (result.losses[0], result.losses[-1])}


def curate_with(root: Path, trunk: str, size: int, fraction: float, threshold: float, verify: float,
                seed: int) -> tuple[str, dict[str, Any]]:
    """Embed the pile with ``trunk``, drop near/exact copies, curate ``fraction`` of the rest: the list file."""
    from bigseer.curate.dedup import DedupConfig, find_duplicates, write_dedup
    from bigseer.curate.embed import EmbedConfig, embed_source
    from bigseer.curate.pipeline import CurateConfig, curate_embeddings
    from bigseer.curate.store import EmbeddingStore

    emb = root / "emb"
    embed_source(EmbedConfig(str(root / "pile"), trunk, str(emb), part_size=256, resize=size, crop=size))
    store = EmbeddingStore(emb)
    dedup = find_duplicates(store, DedupConfig(str(emb), str(root / "dedup"), threshold=threshold, verify=verify))
    write_dedup(store, dedup, root / "dedup")
    cur = curate_embeddings(CurateConfig(str(emb), str(root / "curated"), keep=str(root / "dedup"),
                                         fraction=fraction, seed=seed))
    names = [Path(store.paths[i]).name for i in range(store.n)]
    return str(cur.data), {"embedded": names, "removed": sum(len(g) - 1 for g in dedup.groups)}


def run(args: argparse.Namespace) -> str:
    from benchmarks.bench_curate import composition, make_pile
    from benchmarks.bench_pretraining_helps import choose_recipe, evaluate, table

    torch.set_num_threads(1)
    root = Path(args.dir)
    t0 = time.time()
    facts = make_pile(root, args.size, args.seed)
    pile = str(root / "pile")
    ns = argparse.Namespace(recipe="auto", set=[], model="regnety_tiny", seed=args.seed, size=args.size,
                            no_baselines=True, split="judge", shots=[1, 5, 10], fractions=[0.1], draws=args.draws)
    over, desc = choose_recipe(ns, pile)
    half = args.steps // 2
    runs = {"raw pile, all steps": pretrain_run(pile, root / "run-raw", args.steps, over, args.seed),
            "raw pile, first half": pretrain_run(pile, root / "run-half", half, over, args.seed)}
    curated, cur = curate_with(root, runs["raw pile, first half"]["export"], args.size, args.fraction,
                               args.threshold, args.verify, args.seed)
    runs["raw half, then curated half (the loop)"] = pretrain_run(
        curated, root / "run-loop", args.steps - half, over, args.seed, init_from=str(root / "run-half"),
        init_head=True)
    results = {name: evaluate(ns, str(root / "labeled"), r["export"])["SwAV-pretrained"] for name, r in runs.items()}
    before = composition(cur["embedded"], facts)
    after = composition([Path(p).name for p in Path(curated).read_text().splitlines()], facts)
    lines = ["## The curation loop at an equal step budget (digits pile)", "", f"`{' '.join(sys.argv)}`", "",
             f"Machine: {uptime()}; {time.time() - t0:.0f} s wall in all.", "",
             f"Recipe of the raw pile for every phase: {desc}. Budget: {args.steps} optimizer steps of batch 64 for "
             f"both arms. Curation with the half run's trunk: dedup (threshold {args.threshold}, verify "
             f"{args.verify}) removed {cur['removed']}; curate kept {args.fraction:g} of the rest.", "",
             "| pretraining set | images | per class 0..9 | junk | copies | class entropy / ln 10 |",
             "|---|---|---|---|---|---|"]
    for name, c in (("raw pile (embedded)", before), ("curated list", after)):
        lines.append(f"| {name} | {c['images']} | {c['per_class']} | {c['junk']} | {c['copies']} | "
                     f"{c['class_entropy_ratio']} |")
    lines += ["", "Probe on the balanced held-out split (logistic, frozen res5, mean ± std over "
              f"{args.draws} draws, the same draws for every trunk):", "", table(results), ""]
    for name, r in runs.items():
        lines.append(f"- {name}: {r['steps']} steps, {r['cpu_s']} CPU s, loss {r['loss'][0]:.3f} -> {r['loss'][1]:.3f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=1000, help="the step budget of each arm")
    p.add_argument("--threshold", type=float, default=0.99)
    p.add_argument("--verify", type=float, default=0.95)
    p.add_argument("--fraction", type=float, default=0.6)
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)
    emit(run(args), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
