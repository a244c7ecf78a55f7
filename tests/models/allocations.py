"""How many elements of real (non-meta) tensors an operation creates, seen by a ``TorchDispatchMode``.

"Fast / allocates nothing because the model is on the meta device" is then checked as that mechanism (a
count of elements, the same on every machine) instead of as a wall-clock threshold."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class RealTensorElements(TorchDispatchMode):
    """``with RealTensorElements() as seen: ...``; then ``seen.elements`` (summed over every op's non-meta
    tensor outputs) and ``seen.largest`` (the largest such output)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = self.largest = self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_meta:
                self.elements += t.numel()
                self.largest = max(self.largest, t.numel())
        return out
