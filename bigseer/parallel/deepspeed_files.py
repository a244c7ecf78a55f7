"""Reading DeepSpeed's own checkpoint files without a DeepSpeed engine (for export): the one place outside
the backend itself (:mod:`bigseer.parallel.deepspeed`) that imports deepspeed."""

from __future__ import annotations

import contextlib
import io
from typing import Any


def zero_fp32_state_dict(path: str, tag: str) -> dict[str, Any]:
    """The fp32 model state of the ZeRO 1-3 checkpoint ``path``/``tag``, consolidated lazily by
    ``deepspeed.utils.zero_to_fp32`` (its optimizer partitions are mmap-ed; a value is gathered by its
    ``contiguous()``). zero_to_fp32 unpickles DeepSpeed's own files with ``weights_only=False``: only read
    checkpoints you wrote. ImportError when deepspeed does not import; whatever zero_to_fp32 raises on a bad
    checkpoint."""
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except Exception as exc:  # deepspeed's import can fail with other errors than ImportError (accelerators)
        raise ImportError(f"{type(exc).__name__}: {exc}") from exc

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return get_fp32_state_dict_from_zero_checkpoint(path, tag=tag, lazy_mode=True)
