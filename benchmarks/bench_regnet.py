"""Benchmark: forward+backward images/s of bigseer's RegNetY trunk vs timm's same-config RegNetY.

Same weights, same input, same run. Each variant (eager, channels_last, torch.compile,
compile+channels_last) runs for timm's trunk and bigseer's, and every bigseer variant is compared with
timm's same variant (compiled vs compiled, ...): steps interleaved (order reversed every other step),
ratios are medians of per-step ratios. Also reports max abs diffs of outputs/grads vs bigseer eager.
Same code as ``bigseer bench`` (bigseer.commands.bench.benchmark_regnet).

    .venv/bin/python benchmarks/bench_regnet.py --model regnety_800mf --batch_size 16 \
        --image_size 224 --steps 10 --channels_last --compile
"""

from __future__ import annotations

import argparse
import sys

from bigseer.commands import bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_arguments(parser)
    return bench.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
