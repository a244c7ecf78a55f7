"""Remote tar shards over HTTP from a server on 127.0.0.1 that drops one connection mid-shard and answers one
shard with 404: the stream finishes, the lost samples are counted by reason, and the images seen are the
local run's minus the lost shard. No address other than 127.0.0.1 is contacted."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from pathlib import Path

import pytest

from bigseer.data import MultiCropStream, open_source
from bigseer.data.shard_writer import write_shards
from tests.data.zoo import jpeg_bytes, noise_image


def _serve(root: Path, drop_once: str, missing: str):
    state = {"dropped": 0, "requests": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _target(self):
            name = self.path.lstrip("/")
            path = root / name
            if name == missing or not path.is_file():
                self.send_error(404)
                return None
            return path.read_bytes()

        def do_HEAD(self):
            data = self._target()
            if data is not None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

        def do_GET(self):
            state["requests"].append(self.path)
            data = self._target()
            if data is None:
                return
            start, end = 0, len(data) - 1
            rng = self.headers.get("Range")
            if rng:
                a, _, b = rng.removeprefix("bytes=").partition("-")
                start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
            body = data[start:end + 1]
            self.send_response(206 if rng else 200)
            self.send_header("Content-Length", str(len(body)))
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.end_headers()
            if self.path.lstrip("/") == drop_once and not state["dropped"]:
                state["dropped"] += 1
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.close()  # the connection drops mid-shard
                return
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


@pytest.fixture()
def shards(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(24):
        (src / f"{i:03d}.jpg").write_bytes(jpeg_bytes(noise_image(40, 36, seed=i)))
    result = write_shards(str(src), str(tmp_path / "out" / "shard-%04d.tar"), max_count=6)
    assert len(result.shards) == 4
    return tmp_path / "out"


def _seen(spec: str, steps: int):
    stream = MultiCropStream(spec, "1x16", 4, seed=0)
    batches = list(islice(iter(stream), steps))
    stream.close()
    skipped = {}
    for b in batches:
        for k, v in b.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    return {int(i) for b in batches for i in b.samples}, skipped


def test_http_shards_survive_a_dropped_connection_and_a_404(shards: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BIGSEER_SHARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BIGSEER_REMOTE_RETRIES", "2")
    server, state = _serve(shards, drop_once="shard-0001.tar", missing="shard-0002.tar")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/shard-{{0000..0003}}.tar"
        catalog = open_source(url)
        assert ", index http://127.0.0.1" in catalog.describe() and len(catalog) == 24
        local, local_skips = _seen(str(shards / "shard-*.tar"), 12)  # 2 passes
        remote, remote_skips = _seen(url, 12)
    finally:
        server.shutdown()
    lost = set(range(12, 18))  # shard-0002 holds items 12..17
    assert local == set(range(24)) and not local_skips
    assert remote == local - lost
    assert set(remote_skips) == {"unreachable"} and remote_skips["unreachable"] >= 6
    assert state["dropped"] == 1  # the dropped transfer was retried and recovered
    assert all(r.startswith("/shard-") or r == "/index.json" for r in state["requests"])


def test_scan_measures_remote_shards(shards: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """``bigseer scan URL``: one pass over HTTP shards, the 404 shard counted as unreachable, images/s printed."""
    import re

    from bigseer.cli import main

    monkeypatch.setenv("BIGSEER_SHARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BIGSEER_REMOTE_RETRIES", "1")
    server, _ = _serve(shards, drop_once="", missing="shard-0003.tar")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/shard-{{0000..0003}}.tar"
        assert main(["scan", url, "--crops", "1x16", "--workers", "1"]) == 0
    finally:
        server.shutdown()
    out = capsys.readouterr().out
    assert "decoded: 18\n" in out and "skipped: 6\n" in out and "  unreachable: 6\n" in out
    assert float(re.search(r"images/s: ([0-9.]+)", out).group(1)) > 0
