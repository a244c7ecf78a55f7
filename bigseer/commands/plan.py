"""``bigseer plan``: per-rank memory of a SwAV run from the meta-device model (nothing allocated)."""

from __future__ import annotations

import argparse
import json

from bigseer.errors import ConfigError
from bigseer.parallel.checkpointing import SPEC_HELP, parse_checkpointing
from bigseer.plan import BACKENDS, COLLECTIVES, PRECISIONS, plan_memory


def _ints(text: str) -> list[int]:
    if text.strip() in ("", "none"):
        return []
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--head_dims {text!r} is invalid: comma-separated integers, e.g. 8192,8192,256") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="regnety_256gf", help="RegNetY preset (see `bigseer models`)")
    parser.add_argument("--world_size", type=int, default=8)
    parser.add_argument("--backend", default="fsdp", choices=BACKENDS)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--batch_per_gpu", type=int, default=16, help="images per GPU per micro-batch")
    parser.add_argument("--accumulate", type=int, default=1,
                        help="micro-batches per step (pretrain --accumulate): memory of one, global batch of all")
    parser.add_argument("--crops", default="2x224+6x96", help="multi-crop spec as for pretrain, e.g. 2x160+4x96")
    parser.add_argument("--checkpointing", default="none", help=SPEC_HELP)
    parser.add_argument("--head_dims", default="8192,8192,256", help="SwAV MLP output dims ('none': no MLP)")
    parser.add_argument("--prototypes", type=int, default=16384, help="K prototypes")
    parser.add_argument("--zero_stage", type=int, default=2, help="DeepSpeed ZeRO stage (backend deepspeed)")
    parser.add_argument("--optimizer_states", type=int, default=1, help="state tensors per param (LARS 1, Adam 2)")
    parser.add_argument("--large_unit_threshold", type=float, default=1e8,
                        help="convs with at least this many params get their own FSDP unit")
    parser.add_argument("--ds_bucket", type=float, default=5e7,
                        help="DeepSpeed reduce_bucket_size in elements (its default when the config omits it: 5e8)")
    parser.add_argument("--collectives", default="nccl", choices=COLLECTIVES,
                        help="gloo: plan a CPU run (its RSS: the terms measured on gloo + per-process runtime)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args: argparse.Namespace) -> int:
    plan = plan_memory(args.model, world_size=args.world_size, backend=args.backend, precision=args.precision,
                       batch_per_gpu=args.batch_per_gpu, crops=args.crops,
                       checkpointing=parse_checkpointing(args.checkpointing), head_dims=_ints(args.head_dims),
                       prototypes=args.prototypes, zero_stage=args.zero_stage,
                       optimizer_states=args.optimizer_states, large_unit_threshold=int(args.large_unit_threshold),
                       ds_bucket=int(args.ds_bucket), collectives=args.collectives, accumulate=args.accumulate)
    print(json.dumps(plan.as_dict(), indent=2) if args.json else plan.table())
    return 0
