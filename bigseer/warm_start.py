"""Warm start: load a pretrained trunk (and optionally a SwAV head) into an already-wrapped model.

``open_init_weights(path, model)`` opens any weights bigseer reads (:func:`bigseer.export.sources.open_weights`)
and refuses, in one line, weights of another architecture than the run's ``--model``.
``load_trunk_into(par, opened, with_head)`` writes them into this rank's share of every trunk (and head)
tensor through the backend's checkpoint pieces (:mod:`bigseer.checkpoint.pieces`), so it works the same for
DDP, FSDP2, DeepSpeed ZeRO and FairScale; call it on every rank. Optimizer state is left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bigseer.checkpoint.pieces import Piece
from bigseer.errors import CheckpointError
from bigseer.export.readers import TensorInfo, TensorSource
from bigseer.export.sources import OpenedWeights, open_weights
from bigseer.export.validate import first_mismatch, params_literal
from bigseer.models.regnet import PRESETS, RegNetParams, resolve_params

if TYPE_CHECKING:
    from bigseer.parallel.base import Parallel

TRUNK = "trunk."  # the SwAV model's trunk and head, as state-dict prefixes (bigseer.ssl.SwAVModel)
HEAD = "head."
NO_HEAD = "--init_head needs a bigseer training checkpoint with a SwAV head; {path} holds a trunk only"

# logical tensor name (model key without "model.") -> (source, name in it, its info, this rank's pieces)
Plan = dict[str, tuple[TensorSource, str, TensorInfo, list[Piece]]]


def arch_name(params: RegNetParams) -> str:
    """The preset name of ``params``, or its ``RegNetParams(...)`` literal."""
    return next((name for name, p in PRESETS.items() if p == params), params_literal(params))


def open_init_weights(path: str | Path, model: str | RegNetParams | dict[str, Any]) -> OpenedWeights:
    """``open_weights(path, model)`` for ``--init_from``: CheckpointError (one line naming the file, what it
    holds and what the run trains) when the weights are of another architecture than ``model``."""
    want = resolve_params(model)
    try:
        return open_weights(path, want)
    except CheckpointError as exc:
        error = exc
    try:  # what does the file hold? (its metadata, or a preset its shapes match)
        held = open_weights(path)
    except CheckpointError:
        raise CheckpointError(f"--init_from {_flat(error)}") from error
    try:
        found = {k: info.shape for k, info in held.trunk.infos().items()}
        problem = first_mismatch(found, want) or _flat(error)
        kind = "training checkpoint" if {"format", "model"} <= set(held.meta) else f"{held.layout} layout"
        raise CheckpointError(f"--init_from {path} holds RegNetY {arch_name(held.params)} ({kind}) but this run "
                              f"trains {arch_name(want)} (--model): {problem}") from error
    finally:
        held.close()


def load_trunk_into(par: Parallel, opened: OpenedWeights, with_head: bool = False) -> dict[str, int]:
    """Copy ``opened``'s trunk (``with_head``: and its SwAV head) into this rank's share of the wrapped model's
    ``trunk.*`` (``head.*``) parameters and buffers, then ``par.after_load()``. Every tensor is checked
    (names, shapes) before anything is written; optimizer state is left alone. Call on every rank (DeepSpeed's
    ``after_load`` is collective). Returns the number of logical tensors loaded: {"trunk": n, "head": m}."""
    where = opened.trunk.description
    pieces = [p for p in par.state_pieces() if p.name.startswith("model.")]
    params = {n for n, _ in par.unwrapped.named_parameters()}
    buffers = {n for n, _ in par.unwrapped.named_buffers()}
    trunk_src = {k: (opened.trunk, k, info) for k, info in opened.trunk.infos().items()}
    plan = _plan(pieces, TRUNK, trunk_src, (params, buffers), where, "")
    counts = {"trunk": len(trunk_src), "head": 0}
    if with_head:
        head_src = swav_head(opened)
        plan |= _plan(pieces, HEAD, head_src, (params, buffers), where, "--init_head: ")
        counts["head"] = len(head_src)
    for src, key, _, targets in plan.values():
        if targets:
            full = src.get(key)
            for piece in targets:
                fill_piece(piece, full)
    par.after_load()
    return counts


def swav_head(opened: OpenedWeights) -> dict[str, tuple[TensorSource, str, TensorInfo]]:
    """The SwAV head of ``opened`` (head key without ``head.`` -> (source, name, info)); CheckpointError when it
    has none (a trunk, or a classifier such as timm's ``head.fc``)."""
    out = {}
    for k, (src, inner) in opened.head.items():
        if k.startswith(HEAD):
            out[k[len(HEAD):]] = (src, inner, src.infos()[inner])
    if not any(k.startswith("prototypes.") for k in out):
        raise CheckpointError(NO_HEAD.format(path=opened.trunk.description))
    return out


def fill_piece(piece: Piece, full: torch.Tensor) -> None:
    """Copy the piece's ranges of the full (logical-shape) tensor ``full`` into ``piece.local`` (cast to its
    dtype)."""
    flat = full.reshape(-1)
    with torch.no_grad():
        for start, local, n in piece.ranges:
            if n:
                piece.local[local:local + n].copy_(flat[start:start + n])
    piece.commit()


def _plan(pieces: list[Piece], prefix: str, source: dict[str, tuple[TensorSource, str, TensorInfo]],
          names: tuple[set[str], set[str]], where: str, flag: str) -> Plan:
    """Match the pieces named ``model.<prefix><k>`` with ``source[k]`` (one line on a missing or extra tensor, or
    a shape mismatch). ``names``: the model's (parameter, buffer) names. A source tensor may lack a piece on this
    rank only if it is a parameter (ZeRO keeps its elements on other ranks); buffers live whole on every rank."""
    params, buffers = names
    part = prefix.rstrip(".")
    plan: Plan = {}
    for piece in pieces:
        name = piece.name[len("model."):]
        if not name.startswith(prefix):
            continue
        key = name[len(prefix):]
        if key not in source:
            raise CheckpointError(f"{flag}{where} has no tensor for this run's {name} (another {part}?)")
        src, inner, info = source[key]
        if tuple(info.shape) != tuple(piece.shape):
            raise CheckpointError(f"{flag}{name} is {list(info.shape)} in {where} but {list(piece.shape)} in this run"
                                  f"{_hint(part)}")
        plan.setdefault(name, (src, inner, info, []))[3].append(piece)
    for key in source:
        name = prefix + key
        if name in buffers and name not in plan:
            raise CheckpointError(f"{flag}this rank has no checkpoint piece of the buffer {name}, so it cannot be "
                                  f"loaded from {where} (a backend's state_pieces() must list every buffer)")
        if name not in plan and name not in params:
            raise CheckpointError(f"{flag}{where} has {name}, which this run's model does not (another {part}?)")
        plan.setdefault(name, (*source[key], []))
    return plan


def _hint(part: str) -> str:
    return " (another num_prototypes, embed_dim or head dims?)" if part == "head" else " (another --model?)"


def _flat(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
