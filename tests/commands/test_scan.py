"""``bigseer scan``: one pass through decode + multi-crop; counts, skip reasons, images/s."""

from __future__ import annotations

import re

from bigseer.cli import main
from tests.data.zoo import write_zoo


def test_scan_folder_counts_every_item_once(tmp_path, capsys):
    expected = write_zoo(str(tmp_path))
    rc = main(["scan", str(tmp_path), "--crops", "2x32+2x16", "--workers", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    good = sum(1 for r in expected.values() if not r)
    assert f"decoded: {good}\n" in out
    assert f"skipped: {len(expected) - good}\n" in out
    for reason in {"truncated", "empty", "not_image", "too_large", "too_small", "unreadable"}:
        want = sum(1 for r in expected.values() if r == reason)
        assert f"  {reason}: {want}\n" in out
    rate = float(re.search(r"images/s: ([0-9.]+)", out).group(1))
    assert rate > 0
    assert f"folder {tmp_path} ({len(expected)} files)" in out


def test_scan_builtin_with_limit_and_errors(capsys):
    assert main(["scan", "builtin", "--limit", "20", "--crops", "2x160+4x96"]) == 0
    out = capsys.readouterr().out
    assert "decoded: 20\n" in out and "skipped: 0\n" in out
    assert main(["scan", "builtin", "--crops", "2x"]) == 2
    assert "bad crop spec" in capsys.readouterr().err
    assert main(["scan", "/nonexistent/data"]) == 2
    assert "does not exist" in capsys.readouterr().err
