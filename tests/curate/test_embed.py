"""``bigseer embed``: parts, skip counts, normalised rows, kill -9 then resume without recomputation, refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bigseer.cli import main
from bigseer.curate.embed import EmbedConfig, embed_source
from bigseer.curate.store import PARTS, EmbeddingStore, committed_parts
from bigseer.errors import DataError
from tests.curate.helpers import distinct_image, write_folder, write_weights
from tests.data.zoo import write_zoo

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--resize", "32", "--crop", "32", "--batch_size", "4"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return write_weights(tmp_path_factory.mktemp("w") / "tiny.safetensors")


def test_embed_counts_skips_by_reason_and_writes_unit_rows(tmp_path, weights):
    expected = write_zoo(str(tmp_path / "zoo"))
    result = embed_source(EmbedConfig(str(tmp_path / "zoo"), weights, str(tmp_path / "emb"), part_size=8,
                                      batch_size=4, resize=32, crop=32))
    bad = Counter(r for r in expected.values() if r)
    assert result.skipped == dict(bad)
    store = EmbeddingStore(tmp_path / "emb")
    good = sum(1 for r in expected.values() if not r)
    assert store.n == good == result.embedded
    rows = store.rows().read(0, store.n).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=2e-3)
    assert list(store.ids) == sorted(store.ids) and len(store.skipped_items) == sum(bad.values())
    assert all(os.path.basename(store.paths[i]) in expected for i in range(store.n))
    assert all(len(h) == 40 for h in store.sha1)
    report = (tmp_path / "emb" / "report.md").read_text()
    assert f"embedded: {good} of {len(expected)}" in report


KILLER = """
import os, signal, sys
import bigseer.curate.embed as e
from bigseer.atomic import TMP_PREFIX
commit, calls = e._commit_part, []
def killing_commit(root, k, emb, meta):
    calls.append(k)
    if len(calls) == 3:  # die while writing the third part: a temp dir is left behind
        (root / "parts" / f"{TMP_PREFIX}part-{k:06d}.{os.getpid()}").mkdir()
        os.kill(os.getpid(), signal.SIGKILL)
    return commit(root, k, emb, meta)
e._commit_part = killing_commit
from bigseer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_mid_embed_then_resume_recomputes_no_committed_part(tmp_path, weights, capsys):
    write_folder(tmp_path / "imgs", 24)
    args = ["embed", str(tmp_path / "imgs"), "--weights", weights, "--out", str(tmp_path / "emb"), "--part_size", "4",
            *SMALL]
    killed = subprocess.run([sys.executable, "-c", KILLER, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert committed_parts(tmp_path / "emb") == {0, 1}
    parts = tmp_path / "emb" / PARTS
    assert any(p.name.startswith(".tmp-") for p in parts.iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in parts.glob("part-*/*")}
    with pytest.raises(DataError, match="incomplete: 4 of 6 parts missing"):
        EmbeddingStore(tmp_path / "emb")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "in 4 parts on rank 0" in out and "2 of 6 parts were committed before" in out
    assert {p: p.stat().st_mtime_ns for p in parts.glob("part-00000[01]/*")} == stamps
    assert sorted(p.name for p in parts.iterdir()) == [f"part-{k:06d}" for k in range(6)]
    resumed = EmbeddingStore(tmp_path / "emb")
    embed_source(EmbedConfig(str(tmp_path / "imgs"), weights, str(tmp_path / "clean"), part_size=4, batch_size=4,
                             resize=32, crop=32))
    clean = EmbeddingStore(tmp_path / "clean")
    assert np.array_equal(resumed.rows().read(0, resumed.n), clean.rows().read(0, clean.n))
    assert main(args) == 0 and "in 0 parts" in capsys.readouterr().out  # all done: nothing recomputed


def test_embed_refusals_are_one_line(tmp_path, weights, capsys):
    write_folder(tmp_path / "imgs", 6)
    base = ["embed", str(tmp_path / "imgs"), "--out", str(tmp_path / "emb"), *SMALL]
    assert main([*base, "--weights", str(tmp_path / "nope.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "do not exist" in err
    assert main([*base, "--weights", weights, "--part_size", "4"]) == 0
    capsys.readouterr()
    assert main([*base, "--weights", weights, "--part_size", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another run (part_size: 4, now 3)" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["embed", str(empty), "--weights", weights, "--out", str(tmp_path / "e2")]) == 2
    assert "contains no files" in capsys.readouterr().err
    tiny = tmp_path / "tiny"  # images, but all below --min_side: embedded as skipped, then nothing to dedup
    tiny.mkdir()
    for i in range(3):
        distinct_image(i, side=8).save(tiny / f"{i}.png")
    assert main(["embed", str(tiny), "--weights", weights, "--out", str(tmp_path / "e3"), *SMALL]) == 0
    assert "skipped 3 (too_small 3)" in capsys.readouterr().out
    assert main(["dedup", str(tmp_path / "e3"), "--out", str(tmp_path / "k3")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no image of" in err and "could be embedded" in err
