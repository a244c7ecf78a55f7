"""Downstream evaluation of a bigseer trunk: fine-tune, linear probe, low-shot, kNN or low-shot logistic probes.

    accelerate launch examples/finetune.py --weights EXPORT --data DIR --mode linear --layer res4
    # k-shot (1, 2, 5, 10 per class) and 1% / 10% logistic probes, mean ± std over 5 draws; raw-pixel baseline:
    python examples/finetune.py --weights EXPORT --data DIR --mode probe --cpu --eval_resize 37 --eval_crop 32
    python examples/finetune.py --features pixels --data DIR --mode probe --cpu --eval_resize 37 --eval_crop 32
    # two CPU processes (plain `--cpu --num_processes 2` silently runs one):
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no examples/finetune.py --cpu --model regnety_tiny --data DIR --mode finetune

DIR holds train/<class>/ and val/<class>/ images. Prints per-epoch top-1/top-5 to stderr and the final
results as one JSON line on stdout (also OUTPUT_DIR/results.json with --output_dir).
"""

from __future__ import annotations

import argparse
import json
import sys

from bigseer.downstream.config import add_arguments, config_from_args
from bigseer.downstream.train import run_downstream
from bigseer.errors import BigseerError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        results = run_downstream(config_from_args(args))
    except BigseerError as exc:
        print(f"finetune.py: error: {exc}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
