"""Check a set of trunk tensors against a RegNetY architecture; infer the preset from shapes."""

from __future__ import annotations

from functools import lru_cache

import torch

from bigseer.errors import CheckpointError
from bigseer.models.regnet import PRESETS, RegNetParams, build_regnet


@lru_cache(maxsize=64)
def expected_trunk(params: RegNetParams) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """timm trunk key -> (shape, dtype) for ``params`` (built on the meta device: no memory)."""
    model = build_regnet(params, device="meta")
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def first_mismatch(found: dict[str, tuple[int, ...]], params: RegNetParams) -> str | None:
    """A one-line description of the first difference between ``found`` shapes and ``params``'
    trunk (missing key, shape, unexpected key), or None when they agree."""
    expected = expected_trunk(params)
    for key, (shape, _) in expected.items():
        if key not in found:
            return f"missing key {key!r} (expected shape {list(shape)})"
        if tuple(found[key]) != shape:
            return f"first differing key {key!r}: file has shape {list(found[key])}, model expects {list(shape)}"
    for key in found:
        if key not in expected:
            return f"unexpected key {key!r} with shape {list(found[key])}"
    return None


def check_trunk(found: dict[str, tuple[int, ...]], params: RegNetParams, what: str, arch: str = "") -> None:
    """CheckpointError naming the first differing key and its shapes if ``found`` is not ``params``' trunk."""
    problem = first_mismatch(found, params)
    if problem:
        arch = arch or _name(params)
        raise CheckpointError(f"{what} does not match RegNetY {arch}: {problem}")


def _name(params: RegNetParams) -> str:
    for name, p in PRESETS.items():
        if p == params:
            return name
    return str(params)


def infer_preset(found: dict[str, tuple[int, ...]], what: str) -> tuple[str, RegNetParams]:
    """The preset whose trunk has exactly these shapes; CheckpointError naming the closest one's mismatch."""
    n_found = len(found)
    best: tuple[int, str, str] | None = None
    for name, params in PRESETS.items():
        problem = first_mismatch(found, params)
        if problem is None:
            return name, params
        score = abs(len(expected_trunk(params)) - n_found)
        if best is None or score < best[0]:
            best = (score, name, problem)
    assert best is not None
    raise CheckpointError(f"{what} matches no RegNetY preset (pass model=...): closest {best[1]!r}: {best[2]}")
