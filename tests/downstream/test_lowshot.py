"""Low-shot subsets: class-balanced, deterministic, clear errors; the rest of the data is never read."""

import os

import pytest

from bigseer.downstream.config import EvalConfig
from bigseer.downstream.labeled_data import scan_image_folder
from bigseer.downstream.lowshot import balanced_subset
from bigseer.downstream.synthetic import write_colour_folder
from bigseer.downstream.train import run_downstream
from bigseer.errors import ConfigError, DataError


def test_subset_is_class_balanced_and_deterministic():
    targets = [0] * 100 + [1] * 200 + [2] * 50
    sub = balanced_subset(targets, 0.1, seed=0)
    counts = [sum(targets[i] == c for i in sub) for c in range(3)]
    assert counts == [10, 20, 5]
    assert sub == sorted(set(sub))
    assert sub == balanced_subset(targets, 0.1, seed=0)
    assert sub != balanced_subset(targets, 0.1, seed=1)
    one = balanced_subset(targets[:300], 0.01, seed=0)
    assert [sum(targets[i] == c for i in one) for c in range(2)] == [1, 2]
    # 0.1 * 30 is 2.9999999999999996 in floating point: still 3
    assert len(balanced_subset([0] * 30, 0.1)) == 3


def test_fraction_that_empties_a_class_is_one_clear_error():
    targets = [0] * 100 + [1] * 50
    with pytest.raises(DataError, match=r"leaves class 'cat' empty \(50 training images"):
        balanced_subset(targets, 0.01, class_names=["dog", "cat"])
    with pytest.raises(ConfigError, match="fraction"):
        balanced_subset(targets, 0.0)
    with pytest.raises(ConfigError, match="fraction"):
        balanced_subset(targets, 1.5)


def test_lowshot_run_never_touches_the_other_images(tmp_path):
    data = write_colour_folder(str(tmp_path / "data"), num_classes=3, train_per_class=10, val_per_class=3, size=24)
    train, _ = scan_image_folder(data)
    keep = set(balanced_subset(train.targets, 0.2, seed=0))
    for i, p in enumerate(train.paths):
        if i not in keep:  # any read of these would raise DataError
            with open(p, "wb") as f:
                f.write(b"corrupt")
    cfg = EvalConfig(mode="lowshot", fraction=0.2, data=data, model="regnety_test", epochs=1, batch_size=6,
                     train_crop=24, eval_resize=24, eval_crop=24, cpu=True, progress=False)
    res = run_downstream(cfg)
    assert res["num_train_images"] == 6 and res["num_train_images_available"] == 30
    assert res["protocol"] == "finetune" and len(res["history"]) == 1


def test_lowshot_run_refuses_a_fraction_that_empties_a_class(tmp_path):
    data = write_colour_folder(str(tmp_path / "data"), num_classes=3, train_per_class=10, val_per_class=2, size=16)
    cfg = EvalConfig(mode="lowshot", fraction=0.05, data=data, model="regnety_test", output_dir=str(tmp_path / "o"),
                     cpu=True, progress=False)
    with pytest.raises(DataError, match="leaves class 'class_0' empty"):
        run_downstream(cfg)
    assert not os.path.exists(tmp_path / "o")  # failed before any work


def test_lowshot_linear_protocol_keeps_the_trunk_frozen(tmp_path):
    import torch

    from bigseer.downstream.run_state import checkpoint_path
    from bigseer.downstream.weights import load_trunk

    data = write_colour_folder(str(tmp_path / "data"), num_classes=3, train_per_class=10, val_per_class=2, size=24)
    out = str(tmp_path / "out")
    cfg = EvalConfig(mode="lowshot", fraction=0.3, lowshot_protocol="linear", layer="res4", data=data,
                     model="regnety_test", epochs=2, batch_size=6, lr=0.1, train_crop=24, eval_resize=24,
                     eval_crop=24, output_dir=out, cpu=True, progress=False)
    res = run_downstream(cfg)
    assert res["protocol"] == "linear" and res["layer"] == "res4" and res["num_train_images"] == 9
    state = torch.load(checkpoint_path(out), weights_only=True)
    assert state["subset"] == balanced_subset(scan_image_folder(data)[0].targets, 0.3, seed=0)
    fresh = load_trunk(None, "regnety_test", seed=0).state_dict()
    for k, v in fresh.items():
        assert torch.equal(state["model"][f"trunk.{k}"], v), k
