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


def test_eval_speedups_as_in_pretraining(saved, tmp_path, monkeypatch):
    """``--channels_last`` / ``--compile`` (bigseer.parallel, the pretraining owner): ``on`` makes the trunk NHWC
    with the same float64 features; ``auto`` follows the run's device (``--cpu``: off); bad values fail first. The
    NHWC k-NN run's features are the saved trunk's (within fp32 error) and its top-1 is exactly that of a float64
    k-NN on them (tests/downstream/knn_reference.py)."""
    import copy

    from bigseer.downstream.weights import fast_trunk
    from bigseer.errors import ConfigError
    from tests.downstream.knn_reference import (
        assert_knn_saw_trunk_features,
        capture_knn_inputs,
        reference_topk_correct,
    )
    from tests.numerics import assert_close_f64

    trunk, path = saved
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain = copy.deepcopy(trunk).double().eval()
    fast = fast_trunk(load_trunk(path, "regnety_test").double().eval(), "on", "off", cpu=True)
    assert fast.memory_format == torch.channels_last
    assert fast.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert_close_f64(fast(x), plain(x), "channels_last trunk features")
    auto = fast_trunk(load_trunk(path, "regnety_test"), "auto", "auto", cpu=True)
    assert auto.memory_format == torch.contiguous_format
    data = write_colour_folder(str(tmp_path / "data"), num_classes=3, train_per_class=3, val_per_class=2, size=16)
    with pytest.raises(ConfigError, match="channels_last='nhwc' is invalid"):
        run_downstream(EvalConfig(mode="knn", data=data, weights=path, batch_size=4, cpu=True, channels_last="nhwc"))
    import bigseer.parallel

    seen = []
    real = bigseer.parallel.apply_speedups
    monkeypatch.setattr(bigseer.parallel, "apply_speedups", lambda *a, **k: seen.append(k) or real(*a, **k))
    knn_inputs = capture_knn_inputs(monkeypatch)
    res = run_downstream(EvalConfig(mode="knn", data=data, weights=path, batch_size=4, eval_resize=16, eval_crop=16,
                                    cpu=True, progress=False, channels_last="on"))
    assert seen == [dict(channels_last=True, compile=False, sharded=False)]  # the run's trunk got the switch
    assert res["config"]["channels_last"] == "on"
    # the NHWC run's k-NN saw the saved trunk's features (fp32 rounding of a float64 forward) and scored them right
    ys = assert_knn_saw_trunk_features(knn_inputs, trunk, data, 16, "res5", "NHWC ")
    c1, _ = reference_topk_correct(knn_inputs["train_f"], knn_inputs["train_y"], knn_inputs["val_f"], ys, 3, k=20,
                                   temperature=0.07)
    assert res["final"]["top1"] == 100.0 * c1 / 6, c1
