"""Warm start (bigseer.warm_start): a pretrained trunk (and a SwAV head) from every kind of weights bigseer reads,
loaded bitwise into a wrapped SwAV model under ddp, FSDP2 (meta-built, sharded prototypes) and DeepSpeed ZeRO-2/3;
one-line errors for another architecture, a missing head and a head of another shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bigseer import parallel
from bigseer.checkpoint import save_checkpoint
from bigseer.errors import CheckpointError
from bigseer.export import convert_weights, export_checkpoint
from bigseer.models import build_regnet
from bigseer.ssl import SwAVHead, SwAVModel
from bigseer.warm_start import load_trunk_into, open_init_weights
from tests.distributed_utils import run_distributed
from tests.export.builders import randomize
from tests.export.test_convert import _in_layout
from tests.export.test_seer_weights import _save_vissl

PRESET = "regnety_test"
HEAD_DIMS = ([32], 16, 24)  # hidden dims, embed dim, num_prototypes (even: 2 ranks can shard them)


def _swav(preset: str = PRESET, prototypes: int = HEAD_DIMS[2], shard: bool = False, meta: bool = False) -> SwAVModel:
    with torch.device("meta" if meta else "cpu"):
        trunk = build_regnet(preset, device="meta" if meta else None)
        head = SwAVHead(trunk.num_features, HEAD_DIMS[0], HEAD_DIMS[1], prototypes, shard_prototypes=shard)
        model = SwAVModel(trunk, head)
    return model if meta else model.init_weights(seed=3)


def _sgd(groups):
    return torch.optim.SGD(groups, lr=0.1, momentum=0.9)


def _ddp(model: SwAVModel):
    return parallel.setup(model, backend="ddp", optimizer_factory=_sgd)


def _part(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8)


def _bitwise(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> list[str]:
    """Keys whose tensors differ in dtype, shape or any byte (or that one side lacks)."""
    bad = sorted(set(got) ^ set(want))
    for k in set(got) & set(want):
        a, b = got[k], want[k]
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(_bytes(a), _bytes(b)):
            bad.append(k)
    return bad


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """A randomized SwAV model (BN affine, running stats and num_batches_tracked too) saved as a bigseer training
    checkpoint, and its trunk in every kind of weights bigseer reads. Returns (its full state, kind -> path)."""
    root = tmp_path_factory.mktemp("warm")
    model = _swav()
    randomize(model.trunk, seed=1)
    randomize(model.head.projection, seed=2)
    randomize(model.head.prototypes, seed=3)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_checkpoint(root / "run", 5, _ddp(model).state_pieces(), {"step": 5}, {"model": PRESET})
    trunk = _part(state, "trunk.")
    paths = {"checkpoint": root / "run"}
    export_checkpoint(root / "run", root / "export_timm")
    export_checkpoint(root / "run", root / "export_hf", layout="hf", max_shard_size="20KB")  # sharded on purpose
    assert (root / "export_hf" / "model.safetensors.index.json").is_file()
    paths |= {"export_timm": root / "export_timm", "export_hf": root / "export_hf"}
    save_file(trunk | {"head.fc.weight": torch.randn(10, 4), "head.fc.bias": torch.randn(10)},
              str(root / "timm.safetensors"))  # a timm file with its classifier
    torch.save(_in_layout(trunk, "torchvision") | {"fc.weight": torch.randn(10, 4)}, root / "tv.pth")
    _save_vissl(root / "seer.torch", trunk, None)
    convert_weights(root / "seer.torch", root / "converted")
    torch.save({"model_state": _in_layout(trunk, "detectron2"), "epoch": 1}, root / "pycls.pyth")
    paths |= {"timm": root / "timm.safetensors", "torchvision": root / "tv.pth", "vissl": root / "seer.torch",
              "vissl_converted": root / "converted", "pycls": root / "pycls.pyth"}
    return state, paths


KINDS = ["checkpoint", "export_timm", "export_hf", "timm", "torchvision", "vissl", "vissl_converted", "pycls"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_weights_loads_bitwise_under_ddp(sources, kind: str) -> None:
    state, paths = sources
    par = _ddp(_swav())
    head_before = _part(par.full_state_dict(), "head.")
    opened = open_init_weights(paths[kind], PRESET)
    try:
        counts = load_trunk_into(par, opened)
    finally:
        opened.close()
    got = par.full_state_dict()
    trunk = _part(state, "trunk.")
    assert counts == {"trunk": len(trunk), "head": 0}
    assert any(k.endswith("running_var") for k in trunk) and any(k.endswith("num_batches_tracked") for k in trunk)
    assert _bitwise(_part(got, "trunk."), trunk) == []
    assert _bitwise(_part(got, "head."), head_before) == []  # the head is not touched without with_head


def test_head_from_a_training_checkpoint_and_fresh_optimizer(sources) -> None:
    state, paths = sources
    par = _ddp(_swav())
    momentum = [p for p in par.state_pieces() if p.name.startswith("optim.")]
    assert momentum and all(float(p.local.abs().sum()) == 0 for p in momentum)
    opened = open_init_weights(paths["checkpoint"], PRESET)
    try:
        counts = load_trunk_into(par, opened, with_head=True)
    finally:
        opened.close()
    assert counts == {"trunk": len(_part(state, "trunk.")), "head": len(_part(state, "head."))}
    assert _bitwise(par.full_state_dict(), state) == []
    # optimizer state left alone (fresh)
    assert all(float(p.local.abs().sum()) == 0 for p in par.state_pieces() if p.name.startswith("optim."))


@pytest.mark.parametrize("kind", ["timm", "export_timm", "torchvision"])
def test_head_from_a_trunk_only_source_is_one_line(sources, kind: str) -> None:
    _, paths = sources
    par = _ddp(_swav())
    opened = open_init_weights(paths[kind], PRESET)
    try:
        with pytest.raises(CheckpointError) as err:
            load_trunk_into(par, opened, with_head=True)
    finally:
        opened.close()
    assert str(err.value) == (f"--init_head needs a bigseer training checkpoint with a SwAV head; {paths[kind]} "
                              "holds a trunk only")


def test_head_of_another_shape_is_one_line_and_nothing_is_written(sources) -> None:
    _, paths = sources
    par = _ddp(_swav(prototypes=30))
    before = par.full_state_dict()
    opened = open_init_weights(paths["checkpoint"], PRESET)
    try:
        with pytest.raises(CheckpointError) as err:
            load_trunk_into(par, opened, with_head=True)
    finally:
        opened.close()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("--init_head: head.prototypes.0.weight is [24, 16] in ")
    assert "but [30, 16] in this run" in msg
    assert _bitwise(par.full_state_dict(), before) == []  # checked before any write


@pytest.mark.parametrize("kind", ["timm", "checkpoint", "export_hf"])
def test_weights_of_another_architecture_are_refused_in_one_line(sources, kind: str) -> None:
    _, paths = sources
    with pytest.raises(CheckpointError) as err:
        open_init_weights(paths[kind], "regnety_tiny")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"--init_from {paths[kind]} holds RegNetY {PRESET} ")
    assert "but this run trains regnety_tiny (--model): " in msg and "stem.conv.weight" in msg
    assert ("(training checkpoint)" in msg) == (kind == "checkpoint")


def test_unreadable_weights_keep_their_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"^--init_from \S+nothing.pth: no such file or directory$"):
        open_init_weights(tmp_path / "nothing.pth", PRESET)
    odd = dict(build_regnet("regnety_tiny").state_dict())
    odd["s4.b1.conv1.conv.weight"] = torch.zeros(1, 1, 1, 1)  # matches no preset
    save_file(odd, str(tmp_path / "odd.safetensors"))
    with pytest.raises(CheckpointError) as err:
        open_init_weights(tmp_path / "odd.safetensors", PRESET)
    assert "\n" not in str(err.value) and str(err.value).startswith("--init_from ")
    assert f"does not match RegNetY {PRESET}" in str(err.value)


def test_a_trunk_of_another_shape_is_one_line(sources) -> None:
    """Without open_init_weights' check (e.g. a caller opening the weights itself), the pieces still refuse."""
    from bigseer.export.sources import open_weights

    _, paths = sources
    par = _ddp(_swav("regnety_tiny"))
    opened = open_weights(paths["timm"])
    try:
        with pytest.raises(CheckpointError) as err:
            load_trunk_into(par, opened)
    finally:
        opened.close()
    assert "\n" not in str(err.value) and "trunk.stem.conv.weight is [8, 3, 3, 3] in " in str(err.value)
    assert "but [16, 3, 3, 3] in this run" in str(err.value)


def test_ddp_with_channels_last_loads_the_conv_weights(sources) -> None:
    state, paths = sources
    par = parallel.setup(_swav(), backend="ddp", optimizer_factory=_sgd, channels_last=True)
    assert par.unwrapped.trunk.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    opened = open_init_weights(paths["timm"], PRESET)
    try:
        load_trunk_into(par, opened)
    finally:
        opened.close()
    assert _bitwise(_part(par.full_state_dict(), "trunk."), _part(state, "trunk.")) == []


# ---- multi-rank: FSDP2 (meta-built as the engine does, sharded prototypes) and DeepSpeed ZeRO-2 / ZeRO-3 ----


def _trunk_out(par, x: torch.Tensor) -> torch.Tensor:
    trunk = par.unwrapped.trunk.eval()  # eval: the BN running stats are used
    with torch.no_grad():
        out = trunk(x)
    trunk.train()
    return out


def _rank_fn(rank: int, world: int, path: str) -> dict:
    from bigseer.export import load_pretrained

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out: dict = {"ref": load_pretrained(path)(x)}
    for name in ("fsdp", "zero2", "zero3"):
        if name == "fsdp":
            par = parallel.setup(_swav(shard=True, meta=True), backend="fsdp", optimizer_factory=_sgd, init_seed=3)
        else:
            par = parallel.setup(_swav(), backend="deepspeed", ds_config=f"{name}_fp32", optimizer_factory=_sgd)
            _trunk_out(par, x)  # a forward first: DeepSpeed's gathered / bit16 copies exist and must follow the load
        opened = open_init_weights(path, PRESET)
        try:
            out[f"{name}_counts"] = load_trunk_into(par, opened, with_head=True)
        finally:
            opened.close()
        if name != "fsdp":
            out[f"{name}_out"] = _trunk_out(par, x)
        out[name] = par.full_state_dict()
        par.close()
    return out


@pytest.mark.slow
def test_fsdp_and_zero_load_bitwise_on_two_ranks(sources) -> None:
    state, paths = sources
    results = run_distributed(_rank_fn, world_size=2, args=(str(paths["checkpoint"]),), timeout_s=240)
    counts = {"trunk": len(_part(state, "trunk.")), "head": len(_part(state, "head."))}
    names = ("fsdp", "zero2", "zero3")
    assert {n: [r[f"{n}_counts"] for r in results] for n in names} == {n: [counts, counts] for n in names}
    assert {n: _bitwise(results[0][n], state)[:3] for n in names} == {n: [] for n in names}
    for r in results:  # the weights DeepSpeed computes with (its bit16 / gathered copies), not only its fp32 master
        for n in ("zero2", "zero3"):
            torch.testing.assert_close(r[f"{n}_out"], r["ref"], rtol=1e-5, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


def test_every_trunk_tensor_needs_a_source_and_every_buffer_a_piece(sources, monkeypatch: pytest.MonkeyPatch) -> None:
    """BN buffers are covered both ways: a source without a running_var, and a backend whose pieces omit one."""
    from bigseer.export.readers import DictSource
    from bigseer.export.sources import OpenedWeights
    from bigseer.models import PRESETS

    state, _ = sources
    trunk = _part(state, "trunk.")
    gone = "s1.b1.conv1.bn.running_var"
    partial = OpenedWeights(DictSource({k: v for k, v in trunk.items() if k != gone}, "partial.pt"),
                            PRESETS[PRESET], "timm")
    par = _ddp(_swav())
    with pytest.raises(CheckpointError, match=rf"^partial.pt has no tensor for this run's trunk.{gone} \("):
        load_trunk_into(par, partial)
    whole = OpenedWeights(DictSource(trunk, "whole.pt"), PRESETS[PRESET], "timm")
    pieces = par.state_pieces()
    monkeypatch.setattr(par, "state_pieces", lambda: [p for p in pieces if p.name != f"model.trunk.{gone}"])
    with pytest.raises(CheckpointError, match=rf"^this rank has no checkpoint piece of the buffer trunk.{gone},"):
        load_trunk_into(par, whole)
    extra = OpenedWeights(DictSource(trunk | {"s9.extra": torch.zeros(2)}, "extra.pt"), PRESETS[PRESET], "timm")
    with pytest.raises(CheckpointError, match=r"^extra.pt has trunk.s9.extra, which this run's model does not"):
        load_trunk_into(_ddp(_swav()), extra)
