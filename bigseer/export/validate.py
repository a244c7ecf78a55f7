"""Check a set of trunk tensors against a RegNetY architecture; infer the preset from shapes; name the
published networks that share a SEER model's name but are not it (REFERENCE.md section 6, "Traps")."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import torch

from bigseer.errors import CheckpointError
from bigseer.models.regnet import PRESETS, RegNetParams, build_regnet

_BLOCK = re.compile(r"^s([1-4])\.b(\d+)\.")


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


@dataclass(frozen=True)
class ForeignNet:
    """A published RegNetY that carries a SEER model's name but is another network."""

    what: str  # who publishes it under which name
    params: RegNetParams
    preset: str  # the bigseer preset (= SEER's network) it is mistaken for
    seer_name: str


# ClassyVision / VISSL definitions (classy_vision/models/regnet.py): both build with RegNetParams.
FOREIGN_NETS: tuple[ForeignNet, ...] = (
    ForeignNet("ClassyVision's old regnet_y_64gf (before June 2021; VISSL's regnet64Gf.yaml still describes it)",
               RegNetParams(depth=20, w0=368, wa=102.79, wm=2.05, group_width=496), "regnety_64gf",
               "SEER's RG64 (VISSL regnet64Gf_3)"),
    ForeignNet("ClassyVision's regnet_y_256gf (HF's regnet-y-2560-seer config copies it)",
               RegNetParams(depth=27, w0=640, wa=124.47, wm=2.04, group_width=848), "regnety_256gf",
               "SEER's RG256"),
)


def params_literal(params: RegNetParams) -> str:
    """``RegNetParams(depth=20, w0=368, ...)`` with only the fields that differ from the defaults."""
    defaults = {f.name: f.default for f in fields(RegNetParams)}
    args = [f"{k}={v!r}" for k, v in asdict(params).items() if v != defaults[k]]
    return f"RegNetParams({', '.join(args)})"


def params_json(params: RegNetParams) -> str:
    """The ``--model`` JSON dict for ``params`` (non-default fields only)."""
    defaults = {f.name: f.default for f in fields(RegNetParams)}
    return json.dumps({k: v for k, v in asdict(params).items() if v != defaults[k]})


def file_stages(found: dict[str, tuple[int, ...]]) -> tuple[list[int | None], list[int]]:
    """(stage widths, stage depths) read from trunk shapes (timm keys); None for a missing stage."""
    depths = [0, 0, 0, 0]
    for key in found:
        m = _BLOCK.match(key)
        if m:
            depths[int(m.group(1)) - 1] = max(depths[int(m.group(1)) - 1], int(m.group(2)))
    widths = [found[k][0] if k in found else None for k in (f"s{s}.b1.conv3.conv.weight" for s in range(1, 5))]
    return widths, depths


def shape_summary(found: dict[str, tuple[int, ...]]) -> str:
    """'stem 32, stage widths [..], depths [..]': what the file's network is, from its shapes."""
    stem = found.get("stem.conv.weight")
    widths, depths = file_stages(found)
    return f"stem {stem[0] if stem else None}, stage widths {widths}, depths {depths}"


def _slashed(params: RegNetParams) -> str:
    return "/".join(map(str, params.stages()[0]))


def identify_foreign(found: dict[str, tuple[int, ...]]) -> str | None:
    """'it is <network> ...; not <SEER model>; to load it pass model=...' when the shapes are (or have
    the stage widths of) one of ``FOREIGN_NETS``; None otherwise."""
    widths = file_stages(found)[0]
    for net in FOREIGN_NETS:
        problem = first_mismatch(found, net.params)
        if problem is not None and widths != net.params.stages()[0]:
            continue
        n = sum(_numel(s) for k, (s, _) in expected_trunk(net.params).items() if not _is_buffer(k))
        kind = "it is" if problem is None else f"its stage widths are those of (but it differs: {problem})"
        return (f"{kind} {net.what}: widths {_slashed(net.params)}, {n / 1e6:.0f}M params; not {net.seer_name} "
                f"(bigseer preset {net.preset!r}, widths {_slashed(PRESETS[net.preset])}); to load it anyway "
                f"pass model={params_literal(net.params)} (CLI: --model '{params_json(net.params)}')")
    return None


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _is_buffer(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def check_trunk(found: dict[str, tuple[int, ...]], params: RegNetParams, what: str, arch: str = "") -> None:
    """CheckpointError naming the first differing key and its shapes if ``found`` is not ``params``' trunk
    (and naming the network when it is one of ``FOREIGN_NETS``)."""
    problem = first_mismatch(found, params)
    if problem:
        arch = arch or _name(params)
        foreign = identify_foreign(found)
        extra = f"; {foreign}" if foreign else ""
        raise CheckpointError(f"{what} does not match RegNetY {arch}: {problem}{extra}")


def _name(params: RegNetParams) -> str:
    for name, p in PRESETS.items():
        if p == params:
            return name
    return str(params)


def infer_preset(found: dict[str, tuple[int, ...]], what: str) -> tuple[str, RegNetParams]:
    """The preset whose trunk has exactly these shapes; CheckpointError naming the network (see
    ``FOREIGN_NETS``) or the closest preset's mismatch otherwise."""
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
    foreign = identify_foreign(found)
    if foreign:
        raise CheckpointError(f"{what} matches no RegNetY preset: {foreign}")
    raise CheckpointError(f"{what} matches no RegNetY preset (pass model=...): closest {best[1]!r}: {best[2]} "
                          f"(file: {shape_summary(found)})")
