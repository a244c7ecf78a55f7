"""The ``bigseer`` command: parse, validate, call the library. One module per subcommand.

Each subcommand lives in ``bigseer.commands.<name>`` and defines ``add_arguments(parser)`` and
``run(args) -> int``. Only the chosen subcommand's module is imported.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from bigseer.errors import BigseerError
from bigseer.version import __version__

# name -> one-line help. The module bigseer.commands.<name> implements it.
COMMANDS: dict[str, str] = {
    "pretrain": "SwAV pretraining (ddp / fsdp / deepspeed / fairscale); runs a tiny CPU demo by default",
    "export": "export a training checkpoint as safetensors in timm / torchvision / hf / detectron2 layout",
    "convert": "convert timm / torchvision / VISSL-SEER weights into a bigseer trunk",
    "eval": "evaluate a trunk: finetune | linear | lowshot | knn | probe (k-shot logistic probes)",
    "plan": "per-rank memory plan for a model, backend, precision and world size (nothing allocated)",
    "scan": "stream a data source through decode + multi-crop once; counts, skips and images/s",
    "index": "write the shard index (wids format) so start-up reads it instead of every tar header",
    "shard": "turn a folder or path list into WebDataset tar shards plus their index (resumable)",
    "submit": "submit pretraining as a SLURM job through submitit (requeue on preemption, resume by itself)",
    "bench": "forward+backward throughput of a RegNetY trunk vs timm's on this machine",
    "models": "list the RegNetY presets with widths, depths and parameter counts",
    "sample-data": "write the built-in images as files (a folder, or labeled train/val) to try the commands",
    "embed": "pooled L2-normalised embeddings of every image of a pile (resumable parts, 1..N ranks)",
    "dedup": "exact (content hash) and near (cosine >= threshold) duplicates of embedded images; keeps one per group",
    "curate": "hierarchical k-means + balanced sampling of embeddings to a target size (or SRC --weights: all steps)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bigseer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bigseer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module = importlib.import_module(f"bigseer.commands.{name.replace('-', '_')}")
    sub = argparse.ArgumentParser(prog=f"bigseer {name}", description=COMMANDS[name])
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except BigseerError as exc:
        print(f"bigseer {name}: error: {exc}", file=sys.stderr)
        return 3 if type(exc).__name__ == "CollapseError" else 2  # 3: stopped by the collapse detector


if __name__ == "__main__":
    sys.exit(main())
