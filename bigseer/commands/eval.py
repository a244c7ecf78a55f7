"""``bigseer eval MODE --data DIR [--weights W] ...``: downstream evaluation of a trunk (MODE: finetune, linear,
lowshot, knn, probe). The flags and their defaults are those of ``examples/finetune.py`` (SEER paper settings
per mode; augmentation flags named as in ``bigseer pretrain``). Prints the results as one JSON line on stdout.

    bigseer eval probe --weights runs/demo/export --data DIR --cpu      # k-shot and 1% / 10% logistic probes
    accelerate launch -m bigseer eval linear --weights EXPORT --data DIR --layer res4
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bigseer.downstream.config import MODES
    from bigseer.downstream.config import add_arguments as downstream_arguments

    parser.add_argument("mode", choices=MODES, help="what to evaluate")
    downstream_arguments(parser, with_mode=False)


def run(args: argparse.Namespace) -> int:
    from bigseer.downstream.config import config_from_args
    from bigseer.downstream.train import run_downstream

    results = run_downstream(config_from_args(args))
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(results))
    return 0
