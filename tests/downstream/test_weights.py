"""--weights goes through bigseer.load_pretrained: any export layout, no --model needed; mismatches fail."""

import pytest
import torch
from safetensors.torch import save_file

from bigseer.downstream.config import EvalConfig
from bigseer.downstream.synthetic import write_colour_folder
from bigseer.downstream.train import run_downstream
from bigseer.downstream.weights import load_trunk
from bigseer.errors import CheckpointError
from bigseer.models import build_regnet


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(1)
    trunk = build_regnet("regnety_test", zero_init_last=False)
    path = str(tmp_path / "trunk.safetensors")
    save_file(trunk.state_dict(), path)
    return trunk, path


def test_export_in_another_layout_loads_without_model(saved, tmp_path):
    from bigseer.export.exporter import export_checkpoint

    trunk, path = saved
    out = tmp_path / "tv_export"
    export_checkpoint(path, out, layout="torchvision", model="regnety_test", max_shard_size="20KB")
    loaded = load_trunk(str(out), None)
    assert loaded.params == trunk.params
    ref = trunk.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k
    data = write_colour_folder(str(tmp_path / "data"), num_classes=3, train_per_class=3, val_per_class=2, size=16)
    res = run_downstream(EvalConfig(mode="knn", data=data, weights=str(out), batch_size=4, eval_resize=16,
                                    eval_crop=16, cpu=True, progress=False))
    assert res["params"] == str(trunk.params) and res["model"] is None


def test_weights_for_another_model_fail_naming_the_key(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="first differing key 'stem.conv.weight'"):
        load_trunk(path, "regnety_tiny")
    with pytest.raises(CheckpointError, match="do not exist"):
        load_trunk(path + ".missing", "regnety_test")


def test_random_init_is_seeded():
    a = load_trunk(None, "regnety_test", seed=3).state_dict()
    b = load_trunk(None, "regnety_test", seed=3).state_dict()
    c = load_trunk(None, "regnety_test", seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["stem.conv.weight"], c["stem.conv.weight"])
