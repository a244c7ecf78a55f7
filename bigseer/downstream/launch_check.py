"""Detect ``accelerate launch --cpu --num_processes N``, which silently starts ONE process."""

from __future__ import annotations

import os
from typing import Mapping


def single_process_cpu_launch(num_processes: int, env: Mapping[str, str] | None = None) -> str | None:
    """A one-line warning when the launcher asked for several CPU processes but only one runs, else None.

    ``accelerate launch --cpu --num_processes 2`` sets ``ACCELERATE_USE_CPU`` and ``MASTER_ADDR/PORT`` (it
    prepared for several processes) but uses its single-process launcher, so no ``WORLD_SIZE`` is set.
    """
    env = os.environ if env is None else env
    use_cpu = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    multi_requested = "MASTER_PORT" in env and "WORLD_SIZE" not in env
    if num_processes == 1 and use_cpu and multi_requested:
        return ("warning: `accelerate launch --cpu --num_processes N` runs ONE process; for N CPU processes use "
                "`accelerate launch --multi_gpu --num_processes N ... examples/finetune.py --cpu ...`")
    return None
