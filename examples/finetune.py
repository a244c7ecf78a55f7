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

import sys

from bigseer.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    """``examples/finetune.py [--mode MODE] FLAGS`` = ``bigseer eval MODE FLAGS`` (kept for launchers)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    mode = "finetune"
    if "--mode" in argv:
        i = argv.index("--mode")
        mode = argv[i + 1] if i + 1 < len(argv) else mode
        del argv[i:i + 2]
    else:
        for i, a in enumerate(argv):
            if a.startswith("--mode="):
                mode = a.split("=", 1)[1]
                del argv[i]
                break
    return cli_main(["eval", mode, *argv])


if __name__ == "__main__":
    sys.exit(main())
