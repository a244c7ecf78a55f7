"""Source kinds, auto-detection, combination, and DataError for unusable sources."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bigseer.data.decode import SkipImage
from bigseer.data.multicrop import CropPlan
from bigseer.data.sources import expand_braces, open_source
from bigseer.errors import DataError
from tests.data.zoo import jpeg_bytes, noise_image, png_bytes, write_folder, write_tar


def _whole(w, h):
    return [CropPlan((0, 0, w, h), max(w, h), False)]


def _outcomes(catalog):
    out = []
    for i in range(len(catalog)):
        try:
            img, _, _ = catalog.load(i, _whole)
            out.append(img.size)
        except SkipImage as exc:
            out.append(exc.reason)
    return out


def test_folder_is_recursive_any_extension_hidden_ignored(tmp_path):
    write_folder(str(tmp_path / "a"), 3)
    (tmp_path / "a" / "deep" / "er").mkdir(parents=True)
    (tmp_path / "a" / "deep" / "er" / "photo.bin").write_bytes(png_bytes(noise_image(30, 20)))
    (tmp_path / "a" / ".hidden.jpg").write_bytes(b"junk")
    cat = open_source(str(tmp_path / "a"))
    assert len(cat) == 4 and cat.describe() == f"folder {tmp_path / 'a'} (4 files)"
    assert _outcomes(cat) == [(48, 40)] * 3 + [(30, 20)]


def test_list_file_relative_and_absolute(tmp_path):
    paths = write_folder(str(tmp_path / "imgs"), 2)
    lst = tmp_path / "files.txt"
    lst.write_text(f"# comment\nimgs/img_000.jpg\n\n{paths[1]}\nimgs/missing.jpg\n")
    cat = open_source(str(lst))
    assert len(cat) == 3 and "list" in cat.describe() and "3 files" in cat.describe()
    assert _outcomes(cat) == [(48, 40), (48, 40), "unreadable"]


def test_tar_shards_brace_and_glob_webdataset_keys(tmp_path):
    good = jpeg_bytes(noise_image(40, 30))
    write_tar(str(tmp_path / "shard-000.tar"), {
        "s/000.jpg": good, "s/000.json": b"{}", "s/000.cls": b"3",
        "s/001.jpg": b"not an image at all",  # a member that is not an image
        "s/002.txt": b"metadata only",  # a sample without image member
    })
    write_tar(str(tmp_path / "shard-001.tar"), {"a.b.png": png_bytes(noise_image(20, 20)), "c.jpg": good})
    cat = open_source(str(tmp_path / "shard-{000..001}.tar"))
    assert len(cat) == 5 and "2 shards, 5 samples" in cat.describe()
    assert _outcomes(cat) == [(40, 30), "not_image", "not_image", (20, 20), (40, 30)]
    assert len(open_source(str(tmp_path / "shard-*.tar"))) == 5
    assert len(open_source(str(tmp_path / "shard-001.tar"))) == 2


def test_builtin_and_combined(tmp_path):
    write_folder(str(tmp_path / "f"), 2)
    cat = open_source(f"builtin:5,{tmp_path / 'f'}")
    assert len(cat) == 7 and cat.describe().startswith("builtin (5 generated images) + folder")
    sizes = _outcomes(cat)
    assert all(64 <= s[0] <= 256 and 64 <= s[1] <= 256 for s in sizes[:5]) and sizes[5:] == [(48, 40)] * 2
    assert len(open_source("builtin")) == 512


def test_expand_braces():
    assert expand_braces("a{08..10}b{x,y}") == ["a08bx", "a08by", "a09bx", "a09by", "a10bx", "a10by"]


def test_unusable_sources_raise_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    for i in range(3):
        (tmp_path / "texts" / f"t{i}.jpg").write_text("hello")
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b")
    (tmp_path / "bin.dat").write_bytes(bytes(range(256)) * 4)
    cases = {
        str(tmp_path / "nope"): "does not exist",
        str(tmp_path / "empty"): "contains no files",
        str(tmp_path / "texts"): "readable image",
        str(tmp_path / "empty.txt"): "names no files",
        str(tmp_path / "none-*.tar"): "matches no files",
        str(tmp_path / "x.tar.gz"): "compressed",
        str(tmp_path / "bin.dat"): "neither a directory",
        "builtin:0": "builtin:N",
        "": "expected",
    }
    for spec, words in cases.items():
        with pytest.raises(DataError) as info:
            open_source(spec)
        assert words in str(info.value) and "\n" not in str(info.value), (spec, str(info.value))


def test_folder_catalog_is_compact_and_ordered(tmp_path):
    write_folder(str(tmp_path), 12, fmt="PNG")
    cat = open_source(str(tmp_path))
    names = [os.path.basename(cat.parts[0].paths[i]) for i in range(len(cat))]
    assert names == sorted(names) and isinstance(cat.parts[0].paths._offsets, np.ndarray)


def test_unreadable_shard_in_a_pattern_is_skipped_not_fatal(tmp_path):
    write_tar(str(tmp_path / "p-0.tar"), {"a.jpg": jpeg_bytes(noise_image(40, 30))})
    (tmp_path / "p-1.tar").write_bytes(b"garbage, not a tar archive" * 40)
    cat = open_source(str(tmp_path / "p-*.tar"))
    assert len(cat) == 1 and "1 unreadable shards skipped" in cat.describe()
    with pytest.raises(DataError, match="cannot read tar shard"):
        open_source(str(tmp_path / "p-1.tar"))
