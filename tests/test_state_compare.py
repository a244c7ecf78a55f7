"""tests/state_compare.py itself, on small checkpoints written by bigseer's own writer: it reads every item
(all DCP tensors incl. BN buffers, trainer.pt, RNG, meta.json), and each comparison fails on a one-ulp change
of a BN buffer, on a changed non-tensor item, on a missing item and on an unknown ``differ`` pattern."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bigseer.checkpoint import save_checkpoint
from bigseer.checkpoint.pieces import Piece
from tests.state_compare import assert_same_state, assert_state_within_fp32_error, load_export, load_state, step_dir


def _tensors(scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"model.conv.weight": scale * torch.randn(4, 3, generator=g),
            "model.bn.running_mean": scale * torch.randn(4, generator=g),
            "model.bn.running_var": 1 + scale * torch.rand(4, generator=g),
            "model.bn.num_batches_tracked": torch.tensor(6),
            "optim.conv.weight.momentum_buffer": scale * torch.randn(4, 3, generator=g),
            "queue.0": scale * torch.randn(8, 2, generator=g)}


def _write(out: Path, tensors: dict[str, torch.Tensor], world_size: int = 1, **trainer) -> Path:
    state = dict({"step": 6, "samples": 48, "lanes": 8, "world_size": world_size, "queue": {"ages_filled": 2},
                  "health": {"streak": 0}}, **trainer)
    meta = {"model": {"depth": 4}, "backend": "ddp", "config": {"output_dir": str(out), "seed": 5, "extra": {}}}
    save_checkpoint(out, 6, [Piece.whole(k, v.clone()) for k, v in tensors.items()], state, meta)
    return out


def test_load_state_reads_every_item(tmp_path: Path) -> None:
    state = load_state(_write(tmp_path / "a", _tensors()), 6)
    assert {k for k in state if k.startswith("state/")} == {f"state/{k}" for k in _tensors()}
    assert torch.equal(state["state/model.bn.running_var"], _tensors()["model.bn.running_var"])
    assert state["trainer/samples"] == 48 and state["trainer/queue/ages_filled"] == 2
    assert state["meta/step"] == 6 and state["meta/config/seed"] == 5 and "meta/config/extra" in state
    assert torch.equal(state["rng/rank00000/torch"], torch.get_rng_state())  # nothing drawn since the save
    assert "rng/rank00000/numpy/1" in state and "rng/rank00000/python/1/0" in state


def test_bitwise_comparison_fails_on_any_difference(tmp_path: Path) -> None:
    ref = load_state(_write(tmp_path / "ref", _tensors()), 6)
    assert_same_state(load_state(_write(tmp_path / "same", _tensors()), 6), ref)  # only output_dir differs
    t = _tensors()
    t["model.bn.running_var"][1] = torch.nextafter(t["model.bn.running_var"][1], torch.tensor(9.0))
    one_ulp = load_state(_write(tmp_path / "ulp", t), 6)
    with pytest.raises(AssertionError, match=r"1 of \d+ items differ, e.g. \['state/model.bn.running_var'\]"):
        assert_same_state(one_ulp, ref)
    with pytest.raises(AssertionError, match=r"trainer/samples"):
        assert_same_state(load_state(_write(tmp_path / "samples", _tensors(), samples=40), 6), ref)
    no_rng = {k: v for k, v in ref.items() if not k.startswith("rng/")}
    with pytest.raises(AssertionError, match=r"items in only one run: \['rng/rank00000/numpy/0'"):
        assert_same_state(no_rng, ref)
    shutil.rmtree(step_dir(tmp_path / "same", 6) / "rng")
    with pytest.raises(AssertionError, match=r"unexpected items \['meta.json', 'state', 'trainer.pt'\]"):
        load_state(tmp_path / "same", 6)  # the checkpoint layout changed: the helper must learn it first
    with pytest.raises(AssertionError, match="differ pattern 'meta/typo' matches no item"):
        assert_same_state(ref, ref, differ={"meta/typo": "-"})
    other = dict(ref, **{"rng/rank00000/python/1/0": ref["rng/rank00000/python/1/0"] + 1})
    with pytest.raises(AssertionError, match="rng/rank00000/python/1/0"):
        assert_same_state(other, ref)  # compared unless the runs come from different processes
    assert_same_state(other, ref, other_process=True)


def test_tolerance_comparison_bounds_floats_and_keeps_the_rest_exact(tmp_path: Path) -> None:
    init = {f"state/{k}": v for k, v in _tensors(0.0).items() if v.is_floating_point()}
    ref = load_state(_write(tmp_path / "ref", _tensors()), 6)
    g = torch.Generator().manual_seed(1)
    noisy = {k: v + (1e-6 * torch.randn(v.shape, generator=g) if v.is_floating_point() else 0)
             for k, v in _tensors().items()}
    other = load_state(_write(tmp_path / "other", noisy, world_size=2), 6)  # "another summation order"
    assert_state_within_fp32_error(other, ref, other, init)
    assert_state_within_fp32_error(ref, ref, other, init)
    far = dict(_tensors(), **{"model.bn.running_mean": _tensors()["model.bn.running_mean"] + 1e-3})
    with pytest.raises(AssertionError, match="model.bn.running_mean"):
        assert_state_within_fp32_error(load_state(_write(tmp_path / "far", far), 6), ref, other, init)
    count = dict(_tensors(), **{"model.bn.num_batches_tracked": torch.tensor(5)})
    with pytest.raises(AssertionError, match="num_batches_tracked"):
        assert_state_within_fp32_error(load_state(_write(tmp_path / "count", count), 6), ref, other, init)
    with pytest.raises(AssertionError, match="trainer/lanes"):
        assert_state_within_fp32_error(load_state(_write(tmp_path / "lanes", _tensors(), lanes=4), 6), ref, other,
                                       init)


def test_load_export_reads_tensors_json_and_other_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    (tmp_path / "export").mkdir()
    save_file({"w": torch.ones(2)}, str(tmp_path / "export" / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "export" / "export.json").write_text('{"source": "/a", "step": 6}')
    (tmp_path / "export" / "README.md").write_text("hi")
    got = load_export(tmp_path / "export")
    assert set(got) == {"export/model.safetensors/w", "export/model.safetensors/__metadata__/format",
                        "export/export.json/source", "export/export.json/step", "export/README.md"}
