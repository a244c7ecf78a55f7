"""SwAV pretraining entry point for launchers.

    deepspeed examples/pretrain.py --deepspeed_config ds_configs/zero2.json
    torchrun --nproc_per_node 2 examples/pretrain.py --backend fsdp
    python examples/pretrain.py                      # tiny CPU demo on built-in images

Flags are those of ``bigseer pretrain --help``; this file holds no logic of its own.
"""

import sys

from bigseer.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
