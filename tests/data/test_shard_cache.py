"""``--shard_cache DIR`` reaches the loader workers with the catalog (no environment variable): remote shards
are fetched into that directory, by the parent (opening the catalog) and by the workers (reading members)."""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path

import pytest

from bigseer.data import MultiCropStream
from tests.data.test_remote import _serve, shards  # noqa: F401 (the fixture)


@pytest.mark.parametrize("missing", ["", "index.json"])  # with the index beside the shards; without: the header walk
def test_a_streams_shard_cache_is_used_by_its_workers(shards: Path, tmp_path: Path, monkeypatch,  # noqa: F811
                                                      missing: str) -> None:
    monkeypatch.delenv("BIGSEER_SHARD_CACHE", raising=False)
    cache = tmp_path / "node_cache"
    server, state = _serve(shards, drop_once="", missing=missing)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/shard-{{0000..0003}}.tar"
        stream = MultiCropStream(url, "1x16", 4, num_workers=1, shard_cache=str(cache))
        batches = list(islice(iter(stream), 6))
        stream.close()
    finally:
        server.shutdown()
    assert "BIGSEER_SHARD_CACHE" not in os.environ
    assert sorted({int(i) for b in batches for i in b.samples}) == list(range(24))
    fetched = sorted(p.name.split("-", 1)[1] for p in cache.iterdir() if p.name.endswith(".tar"))
    assert fetched == [f"shard-{k:04d}.tar" for k in range(4)], fetched
