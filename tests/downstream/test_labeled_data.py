"""ImageFolder scanning, transforms and rank sharding for downstream evaluation."""

import os
import shutil

import pytest
import torch
from PIL import Image

from bigseer.downstream.labeled_data import (LabeledImages, batch_ranges, eval_transform, scan_image_folder, shard_indices,
                                             train_transform)
from bigseer.downstream.synthetic import write_colour_folder
from bigseer.errors import DataError


@pytest.fixture
def folder(tmp_path):
    return write_colour_folder(str(tmp_path / "data"), num_classes=3, train_per_class=4, val_per_class=2, size=24)


def test_scan_finds_sorted_classes_and_all_images(folder):
    train, val = scan_image_folder(folder)
    assert train.classes == ["class_0", "class_1", "class_2"] == val.classes
    assert len(train) == 12 and len(val) == 6
    assert train.targets == [0] * 4 + [1] * 4 + [2] * 4
    assert all(os.path.basename(os.path.dirname(p)) == train.classes[t] for p, t in zip(train.paths, train.targets))


def test_class_folder_missing_in_val_is_one_clear_error(folder):
    shutil.rmtree(os.path.join(folder, "val", "class_1"))
    with pytest.raises(DataError, match=r"missing class folder\(s\) \['class_1'\]"):
        scan_image_folder(folder)


def test_extra_val_class_and_missing_split_are_errors(folder):
    os.makedirs(os.path.join(folder, "val", "zebra"))
    with pytest.raises(DataError, match="zebra"):
        scan_image_folder(folder)
    with pytest.raises(DataError, match="does not exist"):
        scan_image_folder(os.path.join(folder, "train"))


def test_empty_class_folder_is_an_error(folder):
    for f in os.listdir(os.path.join(folder, "train", "class_2")):
        os.remove(os.path.join(folder, "train", "class_2", f))
    with pytest.raises(DataError, match="class_2.*holds no images"):
        scan_image_folder(folder)


def test_transforms_give_normalised_crops(folder):
    train, val = scan_image_folder(folder)
    x, y = LabeledImages(train, train_transform(16, (0.2, 1.0)))[5]
    assert x.shape == (3, 16, 16) and y == 1
    xe, _ = LabeledImages(val, eval_transform(20, 16))[0]
    xe2, _ = LabeledImages(val, eval_transform(20, 16))[0]
    assert xe.shape == (3, 16, 16) and torch.equal(xe, xe2)  # evaluation is deterministic
    assert xe.mean().abs() < 5  # normalised, not raw 0..255


def test_undecodable_image_is_a_data_error(folder):
    train, _ = scan_image_folder(folder)
    with open(train.paths[0], "wb") as f:
        f.write(b"not a png")
    with pytest.raises(DataError, match="cannot decode"):
        LabeledImages(train, eval_transform(24, 24))[0]
    Image.open(train.paths[1]).verify()  # the others are intact


@pytest.mark.parametrize("n,ws", [(10, 2), (7, 2), (5, 3), (1, 4)])
def test_shard_indices(n, ws):
    eval_shards = [shard_indices(n, r, ws, shuffle=False, pad=False) for r in range(ws)]
    assert sorted(i for s in eval_shards for i in s) == list(range(n))  # disjoint cover
    train_shards = [shard_indices(n, r, ws, shuffle=True, seed=3, epoch=1) for r in range(ws)]
    assert len({len(s) for s in train_shards}) == 1  # equal step counts under DDP
    assert set(i for s in train_shards for i in s) == set(range(n))
    assert train_shards == [shard_indices(n, r, ws, shuffle=True, seed=3, epoch=1) for r in range(ws)]
    if n > 2:
        assert train_shards != [shard_indices(n, r, ws, shuffle=True, seed=3, epoch=2) for r in range(ws)]


def test_batch_ranges_never_leave_a_single_sample_batch():
    assert batch_ranges(5, 2) == [[0, 1], [2, 3, 4]]
    assert batch_ranges(6, 4) == [[0, 1, 2, 3], [4, 5]]
    assert batch_ranges(1, 4) == [[0]]
    assert sorted(i for b in batch_ranges(17, 4) for i in b) == list(range(17))
