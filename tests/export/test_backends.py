"""Export from "torch" (ddp), "dcp" (FSDP2, 2 ranks) and "deepspeed" (ZeRO-3, 2 ranks) checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from bigseer.errors import CheckpointError
from bigseer.export import export_checkpoint, load_pretrained
from tests.distributed_utils import run_distributed
from tests.export.builders import TinySwAV, distributed_checkpoints, randomize, write_meta, write_torch_checkpoint

pytestmark = pytest.mark.slow  # exports are bit copies (torch.equal): nothing to re-run under another kernel dispatch


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """The reference state dict and one checkpoint root per backend (one 2-rank spawn for dcp + deepspeed)."""
    root = tmp_path_factory.mktemp("ckpts")
    model = randomize(TinySwAV())
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(ref, root / "ref.pt")
    write_torch_checkpoint(root / "ddp", model)
    run_distributed(distributed_checkpoints, 2, args=(str(root / "ref.pt"), str(root)),
                    env={"DS_ACCELERATOR": "cpu"})
    write_meta(root / "fsdp" / "checkpoints" / "step_00000005", "dcp", "regnety_test", 2, "fsdp")
    write_meta(root / "deepspeed" / "checkpoints" / "step_00000005", "deepspeed", "regnety_test", 2, "deepspeed")
    return ref, {"ddp": root / "ddp", "fsdp": root / "fsdp", "deepspeed": root / "deepspeed"}


def _read_all(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_every_backend_exports_identical_tensors(checkpoints, tmp_path: Path) -> None:
    ref, roots = checkpoints
    exported = {}
    for backend, root in roots.items():
        export_checkpoint(root, tmp_path / backend, include_head=True)
        exported[backend], meta = _read_all(tmp_path / backend / "model.safetensors")
        assert meta["format"] == "pt" and "bigseer.regnet" in meta
    expected_names = {k[len("trunk."):] if k.startswith("trunk.") else k for k in ref}  # head stays head.*
    for tensors in exported.values():
        assert set(tensors) == expected_names
    for backend, tensors in exported.items():
        for key, value in ref.items():
            name = key[len("trunk."):] if key.startswith("trunk.") else key
            assert torch.equal(tensors[name], value), (backend, key)


def test_bn_buffers_survive_zero3_and_fsdp(checkpoints, tmp_path: Path) -> None:
    ref, roots = checkpoints
    for backend in ("fsdp", "deepspeed"):
        trunk = load_pretrained(roots[backend])
        sd = trunk.state_dict()
        for name in ("s1.b1.conv1.bn.running_mean", "s4.b1.downsample.bn.running_var",
                     "stem.bn.num_batches_tracked"):
            assert torch.equal(sd[name], ref["trunk." + name]), (backend, name)
        assert int(sd["stem.bn.num_batches_tracked"]) == 7


def test_step_dir_and_run_dir_both_resolve(checkpoints) -> None:
    ref, roots = checkpoints
    step = roots["ddp"] / "checkpoints" / "step_00000005"
    for path in (roots["ddp"], roots["ddp"] / "checkpoints", step):
        assert torch.equal(load_pretrained(path).state_dict()["stem.conv.weight"], ref["trunk.stem.conv.weight"])


def test_truncated_torch_checkpoint_is_one_clear_error(checkpoints, tmp_path: Path) -> None:
    _, roots = checkpoints
    step = tmp_path / "checkpoints" / "step_00000005"
    write_meta(step, "torch", "regnety_test", 1, "ddp")
    data = (roots["ddp"] / "checkpoints" / "step_00000005" / "state.pt").read_bytes()
    (step / "state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or foreign"):
        export_checkpoint(tmp_path, tmp_path / "out")


def test_truncated_dcp_shard_is_one_clear_error(checkpoints, tmp_path: Path) -> None:
    import shutil

    _, roots = checkpoints
    shutil.copytree(roots["fsdp"], tmp_path / "fsdp")
    shard = sorted((tmp_path / "fsdp" / "checkpoints" / "step_00000005" / "dcp").glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read"):
        export_checkpoint(tmp_path / "fsdp", tmp_path / "out")


def test_foreign_checkpoints_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no model.safetensors|no meta.json|training checkpoint"):
        export_checkpoint(tmp_path / "empty", tmp_path / "out")
    step = tmp_path / "foreign" / "checkpoints" / "step_00000001"
    write_meta(step, "torch", "regnety_test", 1, "ddp")
    torch.save({"weights": {"a": torch.zeros(2)}}, step / "state.pt")
    with pytest.raises(CheckpointError, match="no 'model' state dict"):
        export_checkpoint(tmp_path / "foreign", tmp_path / "out")
    (step / "meta.json").write_text('{"format": "tensorflow", "model": "regnety_test"}')
    with pytest.raises(CheckpointError, match="format 'tensorflow'"):
        export_checkpoint(tmp_path / "foreign", tmp_path / "out")


def test_checkpoint_for_another_architecture_names_first_differing_key(tmp_path: Path) -> None:
    write_torch_checkpoint(tmp_path / "ckpt", TinySwAV("regnety_tiny"))  # meta.json says regnety_test
    with pytest.raises(CheckpointError, match=r"first differing key 'stem.conv.weight': file has shape "
                                              r"\[16, 3, 3, 3\], model expects \[8, 3, 3, 3\]"):
        export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
