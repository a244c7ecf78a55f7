"""Export training checkpoints to other libraries' layouts, convert published weights in, load trunks.

Imports are lazy: ``from bigseer.export import export_checkpoint, convert_weights, load_pretrained``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_checkpoint", "convert_weights", "load_pretrained", "EXPORT_LAYOUTS"]


def __getattr__(name: str) -> Any:
    if name == "export_checkpoint":
        from bigseer.export.exporter import export_checkpoint

        return export_checkpoint
    if name == "convert_weights":
        from bigseer.export.convert import convert_weights

        return convert_weights
    if name == "load_pretrained":
        from bigseer.export.load import load_pretrained

        return load_pretrained
    if name == "EXPORT_LAYOUTS":
        from bigseer.export.layouts import EXPORT_LAYOUTS

        return EXPORT_LAYOUTS
    raise AttributeError(f"module 'bigseer.export' has no attribute {name!r}")
