"""Shards at scale: `bigseer shard` (resumable, skips counted), the wids-format index read in O(shards),
streams over index + shards equal the header-walk stream, stale indexes caught, our tar walk == tarfile's."""

from __future__ import annotations

import json
import os
import tarfile
from itertools import islice
from pathlib import Path

import pytest

from bigseer.data import MultiCropStream, open_source
from bigseer.data.shard_index import read_index
from bigseer.data.shard_writer import write_shards
from bigseer.data.tar_members import sample_table, walk_members
from bigseer.errors import DataError
from tests.data.zoo import jpeg_bytes, noise_image, png_bytes, write_tar


def _folder(root: Path, n: int = 23) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        img = noise_image(40 + i, 32, seed=i)
        (root / f"img_{i:03d}.{'png' if i % 5 == 0 else 'jpg'}").write_bytes(
            png_bytes(img) if i % 5 == 0 else jpeg_bytes(img))
    (root / "broken.jpg").write_bytes(b"<html>nope</html>")
    (root / "empty.jpg").write_bytes(b"")
    return root


def _ids(stream, steps):
    out = [int(i) for b in islice(iter(stream), steps) for i in b.samples]
    stream.close()
    return out


def test_shard_writes_index_resumes_and_skips(tmp_path: Path) -> None:
    src = _folder(tmp_path / "src")
    pattern = str(tmp_path / "out" / "shard-%04d.tar")
    calls = {"n": 0}

    def stop_after_18(_k):
        calls["n"] += 1
        if calls["n"] == 18:
            raise KeyboardInterrupt  # an interrupted run: shards finished so far stay, the rest resumes

    with pytest.raises(KeyboardInterrupt):
        write_shards(str(src), pattern, max_size="8KB", progress=stop_after_18)
    assert not list((tmp_path / "out").glob("shard-*.tar.tmp")) and list((tmp_path / "out").glob("shard-*.tar"))
    result = write_shards(str(src), pattern, max_size="8KB")
    ref = write_shards(str(src), str(tmp_path / "ref" / "shard-%04d.tar"), max_size="8KB")
    assert result.samples == ref.samples == 23 and result.skipped == ref.skipped == {"not_image": 1, "empty": 1}
    assert [p.name for p in result.shards] == [p.name for p in ref.shards] and len(result.shards) > 1
    for a, b in zip(result.shards, ref.shards):
        assert a.read_bytes() == b.read_bytes()
    assert all(p.stat().st_size <= 8_000 for p in result.shards)
    doc = json.loads(result.index.read_text())
    assert doc["__kind__"] == "wids-shard-index-v1" and doc["wids_version"] == 1
    assert [e["url"] for e in doc["shardlist"]] == [p.name for p in result.shards]  # relative to the index
    assert sum(e["nsamples"] for e in doc["shardlist"]) == 23


def test_index_stream_equals_header_walk_stream_and_covers_each_sample_once(tmp_path: Path) -> None:
    src = _folder(tmp_path / "src")
    result = write_shards(str(src), str(tmp_path / "out" / "shard-%04d.tar"), max_size="40KB")
    pattern = str(tmp_path / "out" / "shard-*.tar")
    os.rename(result.index, tmp_path / "elsewhere.json")  # hide it: the pattern walks the headers
    walked = open_source(pattern)
    assert ", index " not in walked.describe()
    os.rename(tmp_path / "elsewhere.json", result.index)
    indexed = open_source(str(result.index))
    beside = open_source(pattern)  # a pattern whose folder has index.json listing exactly its shards
    assert ", index " in indexed.describe() and ", index " in beside.describe()
    assert list(walked.shard_counts()) == list(indexed.shard_counts()) == list(beside.shard_counts())
    a = _ids(MultiCropStream(pattern, "1x16", 4, seed=1), 12)
    b = _ids(MultiCropStream(str(result.index), "1x16", 4, seed=1), 12)
    assert a == b and sorted(a[:23]) == list(range(23))  # the first pass holds every sample once


def test_wids_reads_the_index(tmp_path: Path) -> None:
    wids = pytest.importorskip("wids")  # the format is wids': its own reader must agree
    result = write_shards(str(_folder(tmp_path / "src", 9)), str(tmp_path / "out" / "s-%03d.tar"), "20KB")
    ds = wids.ShardListDataset(str(result.index))
    assert len(ds) == 9


def test_stale_index_is_one_clear_error(tmp_path: Path) -> None:
    result = write_shards(str(_folder(tmp_path / "src", 6)), str(tmp_path / "out" / "s-%03d.tar"), "1GB")
    shard = result.shards[0]
    write_tar(str(shard), {f"{i:03d}.jpg": jpeg_bytes(noise_image(20, 20, seed=i)) for i in range(4)})
    with pytest.raises(DataError, match=r"is stale: .*s-000.tar has \d+ bytes, the index says \d+; rebuild it "
                                        r"with `bigseer index"):
        open_source(str(result.index))


def test_index_entry_missing_file_and_foreign_json(tmp_path: Path) -> None:
    (tmp_path / "i.json").write_text(json.dumps({"__kind__": "wids-shard-index-v1", "wids_version": 1,
                                                 "shardlist": [{"url": "nothere.tar", "nsamples": 3}]}))
    with pytest.raises(DataError, match="nothere.tar, which cannot be read"):
        open_source(str(tmp_path / "i.json"))
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(DataError, match="is not a shard index"):
        read_index(str(tmp_path / "x.json"))


def test_header_walk_agrees_with_tarfile(tmp_path: Path) -> None:
    """ustar prefixes, GNU long names and pax paths: the fast walk finds what tarfile finds."""
    long_dir = "d" * 120
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = tmp_path / f"f{fmt}.tar"
        with tarfile.open(path, "w", format=fmt) as tf:
            for name in (f"{long_dir[:90]}/a/000.jpg", "b/001.jpg", "b/001.json", f"{long_dir}/002.png"):
                if fmt == tarfile.USTAR_FORMAT and len(name) > 250:
                    continue
                data = name.encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                import io
                tf.addfile(info, io.BytesIO(data))
        raw = path.read_bytes()
        ours = walk_members(lambda off, n: raw[off:off + n], len(raw))
        with tarfile.open(path) as tf:
            ref = [(m.name, m.offset_data, m.size) for m in tf if m.isfile()]
        assert ours == ref, fmt
        offsets, sizes = sample_table(ours)
        assert len(offsets) == len({os.path.join(os.path.dirname(n), os.path.basename(n).split(".")[0])
                                    for n, _, _ in ref})
