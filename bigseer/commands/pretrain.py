"""``bigseer pretrain`` / ``examples/pretrain.py``: flags -> PretrainConfig -> bigseer.engine.pretrain.

With no flags it trains the tiny CPU demo on built-in images and exports the trunk. Every
``PretrainConfig`` field is a flag of the same name; ``--seer`` applies the SEER paper's settings first.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from bigseer.config import PretrainConfig
from bigseer.config_files import SECTIONS
from bigseer.flags import add_flags, chosen_values
from bigseer.recipe import SEER_FILE

# The SEER RG256 recipe ships as bigseer/recipes/seer_rg256.yaml (``--seer`` = ``--config seer_rg256``).
SEER = SEER_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per PretrainConfig field (``bigseer.flags``), grouped by config section, plus the launchers'
    --local_rank / --deepspeed_config."""
    add_flags(parser, PretrainConfig, skip=("extra",), sections=SECTIONS)
    parser.add_argument("--deepspeed_config", dest="ds_config", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deepspeed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the deepspeed / torch.distributed launchers")
    parser.add_argument("--seer", action="store_true", help="start from the SEER RG256 recipe (paper settings; "
                        "= --config seer_rg256)")
    parser.add_argument("--config", default=None, metavar="YAML",
                        help="a run config file (sections model, data, augment, swav, optim, parallel, run) or a "
                             "shipped recipe name (seer_rg256, seer_10b, small_images); flags override it. Every "
                             "run writes its resolved config to OUTPUT_DIR/config.yaml")


def values_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user chose, as PretrainConfig fields: --seer, then --config, then explicit flags."""
    from bigseer.config_files import load_config_file

    values: dict[str, Any] = load_config_file(SEER) if getattr(args, "seer", False) else {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    if getattr(args, "ds_config", None):
        values.pop("precision", None)  # a DeepSpeed JSON decides the precision unless --precision is given
    values.update(chosen_values(args, PretrainConfig))
    if getattr(args, "local_rank", None) is not None and "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return values


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """Namespace -> PretrainConfig: defaults, then --seer, then --config, then explicit flags."""
    return PretrainConfig(**values_from_args(args))


def run(args: argparse.Namespace) -> int:
    from bigseer.engine import pretrain

    values = values_from_args(args)
    # what the user chose (a recipe file, --config or a flag): the data-driven recipe leaves it alone
    result = pretrain(PretrainConfig(**values), explicit=sorted(values))
    if result.losses and (result.export_path is not None or os.environ.get("RANK", "0") == "0"):
        log = logging.getLogger("bigseer")
        log.info("done: %d steps, loss %.4f -> %.4f", result.steps, result.losses[0], result.losses[-1])
        if result.skipped:
            log.info("skipped images by reason: %s", result.skipped)
        log.info("checkpoint: %s", result.checkpoint)
        log.info("curves: %s", result.curves)
        if result.export_path is not None:
            log.info("exported trunk (timm layout safetensors): %s", result.export_path)
    return 0
