"""bigseer: SEER-style SwAV pretraining of RegNetY trunks at any scale.

Importing ``bigseer`` is light: it pulls in torch and the model code only. Parallel backends
(DeepSpeed, FairScale, FSDP) are imported lazily by :mod:`bigseer.parallel`.
"""

from __future__ import annotations

from typing import Any

from bigseer.version import __version__

__all__ = ["__version__", "build_regnet", "RegNet", "RegNetParams", "load_pretrained"]


def __getattr__(name: str) -> Any:
    if name in ("build_regnet", "RegNet", "RegNetParams"):
        from bigseer import models

        return getattr(models, name)
    if name == "load_pretrained":
        from bigseer.export.load import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'bigseer' has no attribute {name!r}")
