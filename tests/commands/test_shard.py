"""``bigseer shard --max_side N --quality Q``: upright, size-capped JPEG shards, recorded in the index; damaged
images skipped and counted; bad settings one clear line before any work; the shard still trains."""

from __future__ import annotations

import io
import json
import tarfile
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from bigseer.cli import main
from bigseer.data import MultiCropStream
from bigseer.data.shard_index import read_reencode
from bigseer.data.shard_writer import Reencode, write_shards
from bigseer.errors import ConfigError
from tests.data.zoo import good_kinds, jpeg_bytes, noise_image, png_bytes


def _rotated_photo() -> bytes:
    """300x200 stored, EXIF orientation 6 (shown as 200x300 portrait); an asymmetric picture: a red
    top-left quadrant, a blue bottom edge, smooth colours elsewhere."""
    img = np.asarray(noise_image(300, 200, 11)).copy()
    img[:100, :150] = (230, 20, 20)
    img[180:, :] = (20, 20, 230)
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(Image.fromarray(img), exif=exif.tobytes())


def _source(root: Path) -> dict[str, bytes]:
    root.mkdir(parents=True)
    files = {
        "big.jpg": jpeg_bytes(noise_image(400, 300, 1)),
        "wide.png": png_bytes(noise_image(500, 90, 2)),
        "small.jpg": jpeg_bytes(noise_image(40, 30, 3)),  # under the cap: kept at its size
        "gray.jpg": jpeg_bytes(noise_image(260, 200, 4, "L")),
        "rotated.jpg": _rotated_photo(),
        **{f"zoo_{k}": v for k, v in good_kinds().items() if k != "png_named.dat"},
    }
    whole = jpeg_bytes(noise_image(320, 240, 7))
    files["truncated.jpg"] = whole[: len(whole) // 2]  # the header is fine, the pixel data is cut
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


def _members(shards: list[Path]) -> dict[str, bytes]:
    out = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                out[m.name] = tar.extractfile(m).read()
    return out


def test_reencoded_shards_are_capped_upright_recorded_and_count_damaged_images(tmp_path: Path) -> None:
    files = _source(tmp_path / "src")
    result = write_shards(str(tmp_path / "src"), str(tmp_path / "out" / "s-%03d.tar"), max_size="40KB",
                          reencode=Reencode(max_side=64, quality=85))
    names = sorted(files)  # walk order is sorted: sample key i is names[i] (truncated.jpg skipped)
    members = _members(result.shards)
    assert result.skipped == {"truncated": 1}  # decoded at shard time: counted, not stored, not silent
    assert result.samples == len(files) - 1 == len(members)
    for key, data in members.items():
        assert key.endswith(".jpg")
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "JPEG" and max(img.size) <= 64
            assert img.getexif().get(0x0112) is None  # orientation applied, no tag left to apply twice
            src_name = names[int(key.split(".")[0])]
            with Image.open(io.BytesIO(files[src_name])) as src:
                upright = ImageOps.exif_transpose(src)
                w, h = upright.size
                if max(w, h) <= 64:
                    assert img.size == (w, h), src_name
                else:
                    assert max(img.size) == 64 and (img.size[0] >= img.size[1]) == (w >= h), src_name
                    assert abs(min(img.size) - min(w, h) * 64 / max(w, h)) <= 1, src_name  # aspect kept
                if src_name == "gray.jpg":
                    assert img.mode == "L"
                if src_name == "rotated.jpg":
                    assert img.size == (43, 64)  # 200x300 upright, capped at 64
                    def coarse(im: Image.Image) -> np.ndarray:  # compare pictures, not resampling filters
                        return np.asarray(im.convert("RGB").resize((8, 12), Image.Resampling.BOX), float)

                    got = coarse(img)
                    assert np.abs(got - coarse(upright)).mean() < 6  # upright: the oriented picture
                    assert np.abs(got - coarse(src)).mean() > 30  # not the stored (sideways) one
    doc = json.loads(result.index.read_text())
    assert doc["bigseer"]["reencode"] == {"max_side": 64, "quality": 85, "format": "JPEG",
                                          "exif_orientation": "applied"}
    assert doc["bigseer"]["skipped"] == {"truncated": 1}
    assert read_reencode(str(result.index)) == doc["bigseer"]["reencode"]
    plain = write_shards(str(tmp_path / "src"), str(tmp_path / "plain" / "s-%03d.tar"))
    assert read_reencode(str(plain.index)) is None  # stored as they were: nothing recorded


def test_reencoded_shard_trains(tmp_path: Path) -> None:
    _source(tmp_path / "src")
    result = write_shards(str(tmp_path / "src"), str(tmp_path / "out" / "s-%03d.tar"),
                          reencode=Reencode(max_side=48, quality=90))
    stream = MultiCropStream(str(result.index), "2x32+2x16", 4, seed=0)
    try:
        batches = list(islice(iter(stream), 3))
    finally:
        stream.close()
    assert len(batches) == 3
    for b in batches:
        crops = b.crops if hasattr(b, "crops") else b[0]
        assert tuple(crops[0].shape) == (2, 4, 3, 32, 32) and tuple(crops[1].shape) == (2, 4, 3, 16, 16)
        assert all(bool(c.isfinite().all()) for c in crops)


def test_cli_reencodes_and_resume_needs_the_same_settings(tmp_path: Path, capsys) -> None:
    _source(tmp_path / "src")
    pattern = str(tmp_path / "out" / "s-%03d.tar")
    assert main(["shard", str(tmp_path / "src"), pattern, "--max_side", "32", "--quality", "70"]) == 0
    out = capsys.readouterr().out
    assert "re-encoded: max side 32, JPEG quality 70, EXIF orientation applied" in out
    assert "skipped: truncated 1" in out
    assert read_reencode(str(tmp_path / "out" / "index.json"))["max_side"] == 32
    assert main(["shard", str(tmp_path / "src"), pattern, "--max_side", "64"]) == 2  # another setting: refused
    err = capsys.readouterr().err
    assert "re-encoding" in err and err.count("\n") == 1


@pytest.mark.parametrize("flags, words", [
    (["--max_side", "0"], "--max_side must be a whole number of pixels >= 1, got 0"),
    (["--max_side", "-5"], "--max_side must be a whole number of pixels >= 1, got -5"),
    (["--max_side", "512", "--quality", "0"], "--quality must be a JPEG quality from 1 to 100, got 0"),
    (["--quality", "101"], "--quality must be a JPEG quality from 1 to 100, got 101"),
])
def test_bad_settings_are_one_line_before_any_work(tmp_path: Path, capsys, flags, words) -> None:
    out_dir = tmp_path / "out"
    rc = main(["shard", str(tmp_path / "no-such-source"), str(out_dir / "s-%03d.tar"), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and err.count("\n") == 1
    assert not out_dir.exists()  # nothing read, nothing written (the source does not even exist)


def test_reencode_settings_validate_in_the_library_too() -> None:
    with pytest.raises(ConfigError, match="max_side"):
        Reencode(max_side=0)
    with pytest.raises(ConfigError, match="quality"):
        Reencode(max_side=10, quality=200)
    assert Reencode().record()["max_side"] is None  # quality only: the size is kept
