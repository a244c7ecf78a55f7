"""Downstream evaluation and transfer of pretrained trunks (one module per task)."""

from bigseer.downstream.maskrcnn import maskrcnn

__all__ = ["maskrcnn"]
