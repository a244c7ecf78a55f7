"""``bigseer pretrain`` / ``examples/pretrain.py``: flags -> PretrainConfig -> bigseer.engine.pretrain.

With no flags it trains the tiny CPU demo on built-in images and exports the trunk. Every
``PretrainConfig`` field is a flag of the same name; ``--seer`` applies the SEER paper's settings first.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from typing import Any

from bigseer.config import PretrainConfig
from bigseer.recipe import SEER_FILE

# The SEER RG256 recipe ships as bigseer/recipes/seer_rg256.yaml (``--seer`` = ``--config seer_rg256``).
SEER = SEER_FILE

# fields whose default is None: their flag's type
_OPTIONAL_TYPES: dict[str, type] = {"start_lr": float, "batch_size": int, "accumulate": int, "warmup_steps": int,
                                    "ds_config": str, "init_from": str, "head_warmup_steps": int,
                                    "init_lr_scale": float}


def _tuple_of(kind: type) -> Any:
    """argparse type: ``"a,b"`` -> a tuple of ``kind``."""
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per PretrainConfig field, plus the launchers' --local_rank / --deepspeed_config."""
    defaults = PretrainConfig()
    for f in dataclasses.fields(PretrainConfig):
        if f.name == "extra":
            continue
        if f.name == "resume":
            parser.add_argument("--resume", nargs="?", const="latest", default=None, choices=("no", "latest", "auto"),
                                help=f.metadata["help"] + " (--resume alone: latest)")
            continue
        default = getattr(defaults, f.name)
        flag = f"--{f.name}"
        helptext = f.metadata["help"].replace("%", "%%")  # the field's one description (bigseer.config.doc)
        if isinstance(default, bool):
            if default:
                parser.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", default=None,
                                    help=f"disable {f.name}")
            else:
                parser.add_argument(flag, action="store_true", default=None, help=helptext or f"enable {f.name}")
        elif isinstance(default, tuple):
            kind = float if any(isinstance(v, float) for v in default) else int
            parser.add_argument(flag, type=_tuple_of(kind), default=None, metavar="N,N",
                                help=f"{helptext} (default {','.join(f'{v:.4g}' for v in default)})")
        else:
            typ = _OPTIONAL_TYPES.get(f.name) or (float if isinstance(default, float) else
                                                  int if isinstance(default, int) else str)
            parser.add_argument(flag, type=typ, default=None, help=f"{helptext} (default {default})")
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
    for f in dataclasses.fields(PretrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
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
