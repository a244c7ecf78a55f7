"""MultiCropStream: batch layout, determinism, resume, sharding, skip accounting, worker failures."""

from __future__ import annotations

import os
import signal
from collections import Counter
from itertools import islice

import pytest
import torch

from bigseer.data import MultiCropStream
from bigseer.errors import ConfigError, DataError
from tests.data.zoo import bad_kinds, jpeg_bytes, noise_image, write_tar, write_zoo

pytestmark = pytest.mark.numerics  # re-run by .ci/run under another kernel dispatch

SPEC = "2x32+2x16"


def _take(stream, n):
    out = list(islice(iter(stream), n))
    stream.close()
    return out


def _same(a, b):
    return (all(torch.equal(x, y) for x, y in zip(a.crops, b.crops)) and a.skipped == b.skipped
            and torch.equal(a.samples, b.samples))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("zoo"))
    return root, write_zoo(root)


def test_batch_layout_and_values():
    s = MultiCropStream("builtin:64", "2x32+3x16", 4, seed=0)
    b = _take(s, 1)[0]
    assert [tuple(c.shape) for c in b.crops] == [(2, 4, 3, 32, 32), (3, 4, 3, 16, 16)]
    assert all(c.dtype == torch.float32 and c.is_contiguous() for c in b.crops)
    assert b.skipped == {} and b.samples.shape == (4,)
    lo, hi = (0 - 0.485) / 0.229, (1 - 0.406) / 0.225
    assert all(lo - 1e-4 <= float(c.min()) and float(c.max()) <= hi + 1e-4 for c in b.crops)
    assert float(b.crops[0].std()) > 0.2  # real image content, not constant
    assert s.position == 4 and "builtin (64 generated images)" in s.describe()  # the next global position


def test_deterministic_under_seed_and_seed_matters():
    a = _take(MultiCropStream("builtin:32", SPEC, 3, seed=5), 3)
    b = _take(MultiCropStream("builtin:32", SPEC, 3, seed=5), 3)
    c = _take(MultiCropStream("builtin:32", SPEC, 3, seed=6), 3)
    assert all(_same(x, y) for x, y in zip(a, b))
    assert not all(_same(x, y) for x, y in zip(a, c))
    # two crops of the same image differ (independent augmentations)
    assert not torch.equal(a[0].crops[0][0], a[0].crops[0][1])


def test_resume_with_workers_and_bad_images_matches_uninterrupted(zoo):
    root, _ = zoo
    full = _take(MultiCropStream(root, SPEC, 3, seed=1, num_workers=2), 6)
    assert sum(sum(b.skipped.values()) for b in full) > 0  # the resumed part crosses bad items too
    resumed = MultiCropStream(root, SPEC, 3, seed=1, num_workers=2, start_position=9)  # 3 batches of 3
    again = _take(resumed, 3)
    assert all(_same(x, y) for x, y in zip(full[3:], again))
    assert resumed.position == 18 and resumed.state_dict()["position"] == 18
    # in-process and one worker are the same stream; restarting after close continues at position
    inproc = MultiCropStream(root, SPEC, 3, seed=1, num_workers=0)
    first = _take(inproc, 2)
    rest = _take(inproc, 2)
    one = _take(MultiCropStream(root, SPEC, 3, seed=1, num_workers=1), 4)
    assert all(_same(x, y) for x, y in zip(first + rest, one))


def test_ranks_and_workers_cover_each_sample_once_per_pass():
    n, world, workers, B = 24, 2, 2, 3  # global batch 6: one pass = 4 steps
    seen = []
    for rank in range(world):
        s = MultiCropStream(f"builtin:{n}", "1x16+1x8", B, rank=rank, world_size=world, seed=3,
                            num_workers=workers)
        seen += [int(i) for b in _take(s, 4) for i in b.samples]
    assert sorted(seen) == list(range(n))


def test_same_samples_and_pixels_on_any_world_size_and_worker_count(zoo):
    """Step by step, the union over ranks of the samples (and their augmented crops) is the same on 1, 2
    and 3 ranks with any number of workers, bad images included; the order never mentions ranks."""
    root, _ = zoo
    steps, G = 4, 6

    def run(world, workers):
        per_rank = [_take(MultiCropStream(root, SPEC, G // world, rank=r, world_size=world, seed=4,
                                          num_workers=workers, lanes=G), steps) for r in range(world)]
        return [(torch.cat([per_rank[r][s].samples for r in range(world)]),
                 [torch.cat([per_rank[r][s].crops[i] for r in range(world)], dim=1) for i in range(2)])
                for s in range(steps)]

    one = run(1, 0)
    for world, workers in ((2, 1), (3, 2)):
        other = run(world, workers)
        for (ids_a, crops_a), (ids_b, crops_b) in zip(one, other):
            assert torch.equal(ids_a, ids_b)
            assert all(torch.equal(x, y) for x, y in zip(crops_a, crops_b))


def test_bad_inputs_are_counted_by_reason_in_the_batches(zoo):
    root, expected = zoo
    n = len(expected)
    s = MultiCropStream(root, SPEC, 2, seed=0, min_side=16)
    batches = _take(s, n // 2)  # one full pass of primary positions (n is even)
    got = Counter()
    for b in batches:
        got.update(b.skipped)
        assert b.crops[0].shape[1] == 2  # bad images replaced, batch stays full
    want = Counter(r for r in expected.values() if r)
    assert set(got) == set(want) == {"truncated", "empty", "not_image", "too_large", "too_small", "unreadable"}
    assert all(got[r] >= want[r] for r in want)
    used = {int(i) for b in batches for i in b.samples}
    assert len(used) <= sum(1 for r in expected.values() if not r)  # only good items reach the model


def test_worker_exception_is_reported_with_cause(tmp_path):
    bad = bad_kinds()["truncated.jpg"][0]
    for i in range(3):
        (tmp_path / f"t{i}.jpg").write_bytes(bad)  # headers are fine, every decode fails
    s = MultiCropStream(str(tmp_path), SPEC, 2, num_workers=1, max_tries=3)
    with pytest.raises(DataError) as info:
        next(iter(s))
    msg = str(info.value)
    assert "worker" in msg and "no decodable image after 4 tries" in msg and "truncated" in msg


def test_dead_worker_is_reported_not_swallowed():
    s = MultiCropStream("builtin:16", "1x16", 2, num_workers=1)
    it = iter(s)
    next(it)
    pid = s._it._workers[0].pid
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(DataError) as info:
        for _ in range(20):
            next(it)
    msg = str(info.value)
    assert msg.startswith("data loader worker failed") and f"pid {pid}" in msg and "killed" in msg.lower(), msg


def test_tensor_decode_path_gives_the_same_samples_within_the_pixel_bound(zoo, monkeypatch):
    """``device=`` (``--decode_device cuda``; here its code on CPU): batches are filled from the tensor path on that
    device, with the same samples, skips and shapes as the CPU path, pixels within its documented bound
    (tests/data/test_render.py: < 12 LSB; mean difference ~0)."""
    root, _ = zoo
    from bigseer.data import tensor_augment

    a = _take(MultiCropStream(root, SPEC, 3, seed=2), 3)
    calls = []
    real = tensor_augment.render_crop_tensor
    monkeypatch.setattr(tensor_augment, "render_crop_tensor", lambda *a, **k: calls.append(1) or real(*a, **k))
    t = MultiCropStream(root, SPEC, 3, seed=2, device="cpu")
    assert "decoded on cpu" in t.describe()
    b = _take(t, 3)
    assert sum(sum(x.skipped.values()) for x in a) > 0  # the zoo's bad files are met on both paths
    for x, y in zip(a, b):
        assert x.skipped == y.skipped and torch.equal(x.samples, y.samples)
        assert [c.shape for c in x.crops] == [c.shape for c in y.crops]
        diff = torch.cat([(u - v).abs().flatten() for u, v in zip(x.crops, y.crops)])
        assert float(diff.max()) <= 12 / (255 * 0.224) and float(diff.mean()) <= 0.01 / (255 * 0.224)
    assert len(calls) == 3 * 3 * 4  # every crop of the 3 batches came from the tensor path


def test_bad_settings_fail_before_start(tmp_path):
    for kw, exc, words in [
        (dict(batch_size=0), ConfigError, "batch_size"),
        (dict(rank=2, world_size=2), ConfigError, "rank"),
        (dict(num_workers=-1), ConfigError, "num_workers"),
        (dict(crops="2x"), ConfigError, "crop spec"),
        (dict(worker_timeout_s=-1), ConfigError, "worker_timeout_s"),
        (dict(seed="0"), ConfigError, "seed"),
        (dict(source=str(tmp_path / "missing")), DataError, "does not exist"),
        (dict(lanes=0), ConfigError, "lanes"),
        (dict(device="cpu", num_workers=2), ConfigError, "num_workers must be 0"),
    ]:
        args = dict(source="builtin:16", crops=SPEC, batch_size=2)
        args.update(kw)
        with pytest.raises(exc, match=words):
            MultiCropStream(**args)


def test_tar_shards_stream_from_workers(tmp_path):
    for k in range(2):
        members = {f"{k}{i:02d}.jpg": jpeg_bytes(noise_image(40, 32, seed=10 * k + i)) for i in range(5)}
        members[f"{k}99.jpg"] = b"<html>not an image</html>"
        write_tar(str(tmp_path / f"part-{k}.tar"), members)
    pattern = str(tmp_path / "part-{0..1}.tar")
    a = _take(MultiCropStream(pattern, SPEC, 3, seed=2, num_workers=2), 4)
    b = _take(MultiCropStream(pattern, SPEC, 3, seed=2, num_workers=2, start_position=6), 2)
    assert all(_same(x, y) for x, y in zip(a[2:], b))
    assert sum(x.skipped.get("not_image", 0) for x in a) >= 2  # both bad members met in one pass


def test_worker_batches_are_built_in_shared_memory(monkeypatch):
    """In a DataLoader worker the normalised crops are written straight into shared memory (as torch's
    default_collate does), so handing them to the main process copies nothing; the values are the same."""
    import bigseer.data.stream as stream

    s = MultiCropStream("builtin:16", "2x32+3x16", 4, seed=0)
    here = s._dataset.make_batch(0)
    monkeypatch.setattr(stream, "get_worker_info", lambda: object())
    worker = s._dataset.make_batch(0)
    assert not any(c.is_shared() for c in here.crops)
    assert all(c.is_shared() and c.is_contiguous() for c in worker.crops)
    assert all(torch.equal(a, b) for a, b in zip(here.crops, worker.crops))
