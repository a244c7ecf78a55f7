"""Robust decoding: every bad-input kind is skipped by reason, every odd-but-valid kind decodes."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from bigseer.data.decode import SkipImage, decode_bytes, decode_jpeg_turbo, format_skipped, to_rgb, turbo_eighths
from bigseer.data.multicrop import AugmentConfig, CropPlan, parse_crops, plan_crops, render_crop
from tests.data.zoo import bad_kinds, exif_rotated_jpeg, good_kinds, jpeg_bytes, noise_image, sixteen_bit_png


def _whole(w: int, h: int) -> list[CropPlan]:
    return [CropPlan((0, 0, w, h), max(w, h), False)]  # no reduction: output as large as the image


@pytest.mark.parametrize("name", sorted(bad_kinds()))
def test_bad_inputs_are_skipped_with_reason(name):
    data, reason = bad_kinds()[name]
    with pytest.raises(SkipImage) as info:
        decode_bytes(data, _whole, min_side=16)
    assert info.value.reason == reason


@pytest.mark.parametrize("name", sorted(good_kinds()))
def test_unusual_valid_images_decode_to_rgb(name):
    data = good_kinds()[name]
    ref = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    img, scale, plans = decode_bytes(data, _whole)
    assert img.mode == "RGB" and img.size == ref.size and scale == (1.0, 1.0)
    assert len(plans) == 1


def test_sixteen_bit_is_scaled_not_clipped():
    img, _, _ = decode_bytes(sixteen_bit_png(), _whole)
    arr = np.asarray(img)
    assert arr[:, :16].min() == 255 and arr[:, 16:].max() == 128 and arr[:, 16:].min() == 128


def test_transparent_pixels_become_white():
    img, _, _ = decode_bytes(good_kinds()["rgba.png"], _whole)
    assert np.asarray(img)[:, :24].min() == 255
    assert np.asarray(img)[:, 24:].min() < 250  # opaque half keeps its colours


def test_exif_rotation_applied_and_geometry_on_oriented_size():
    seen = []

    def plan(w, h):
        seen.append((w, h))
        return _whole(w, h)

    img, _, _ = decode_bytes(exif_rotated_jpeg(6), plan)
    assert seen == [(20, 40)] and img.size == (20, 40)
    arr = np.asarray(img).astype(int)
    top, bottom = arr[:15].mean(axis=(0, 1)), arr[-15:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60  # stored left half (red) is displayed on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_tiny_images_decode_when_allowed_and_render_any_crop():
    data = bad_kinds()["tiny.png"][0]
    groups = parse_crops("1x24+1x8")
    rng = np.random.default_rng(0)
    img, scale, plans = decode_bytes(data, lambda w, h: plan_crops(w, h, groups, AugmentConfig(), rng), min_side=1)
    crops = [render_crop(img, scale, p) for p in plans]
    assert [c.shape for c in crops] == [(24, 24, 3), (8, 8, 3)]


def test_bomb_is_rejected_from_header_without_allocating(monkeypatch):
    """The mechanism, not this process's RSS: a 30000 x 30000 PNG (2.7 GB as RGB) and an over-limit JPEG are
    refused with reason "too_large" while no pixel decoder (PIL ``load``, simplejpeg, the PIL path) runs."""
    import PIL.ImageFile

    import bigseer.data.decode as decode

    decoded = []

    def refuse(name):
        def decoder(*args, **kwargs):
            decoded.append(name)
            raise AssertionError(f"{name} ran: pixels were decoded")
        return decoder

    bomb, small_jpeg = bad_kinds()["bomb.png"][0], jpeg_bytes(noise_image(64, 64))  # made before the patches
    for owner, name in ((Image.Image, "load"), (PIL.ImageFile.ImageFile, "load"), (decode, "decode_pixels"),
                        (decode, "decode_jpeg_turbo"), (decode, "_pil_pixels")):
        monkeypatch.setattr(owner, name, refuse(name))
    assert struct.unpack(">II", bomb[16:24]) == (30000, 30000)  # IHDR width, height
    with pytest.raises(SkipImage) as info:
        decode_bytes(bomb, _whole, max_pixels=10**12)  # PIL's own limit still applies
    assert info.value.reason == "too_large"
    with pytest.raises(SkipImage) as info:
        decode_bytes(small_jpeg, _whole, max_pixels=64 * 64 - 1)
    assert info.value.reason == "too_large" and decoded == []


def test_jpeg_draft_decodes_small_but_faithfully():
    data = jpeg_bytes(noise_image(1600, 1200, 11))
    groups = parse_crops("1x64@0.3-1.0")
    aug = AugmentConfig(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, flip_p=0.0)
    diffs, reduced = [], 0
    for s in range(6):
        full, fscale, fplans = decode_bytes(data, lambda w, h: plan_crops(w, h, groups, aug, np.random.default_rng(s)),
                                            reduce=False)
        small, sscale, splans = decode_bytes(data, lambda w, h: plan_crops(w, h, groups, aug, np.random.default_rng(s)))
        assert [p.box for p in fplans] == [p.box for p in splans]  # geometry from the full size
        reduced += small.width < full.width
        a = render_crop(full, fscale, fplans[0]).astype(float)
        b = render_crop(small, sscale, splans[0]).astype(float)
        diffs.append(np.abs(a - b).mean())
    assert reduced == 6
    assert max(diffs) < 4.0, diffs  # mean absolute difference in 0..255 units


def test_to_rgb_handles_cmyk_and_int32():
    assert to_rgb(Image.new("CMYK", (4, 4), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    i32 = Image.fromarray(np.full((4, 4), 65535, dtype=np.int32), "I")
    assert to_rgb(i32).getpixel((0, 0)) == (255, 255, 255)


def test_format_skipped_for_the_training_log():
    assert format_skipped({}) == "skipped 0"
    assert format_skipped({"not_image": 1, "truncated": 2}) == "skipped 3 (truncated 2, not_image 1)"


# --- every supported format against a full-size PIL decode (the bound in decode.py's docstring) ---

def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """Photo-like content: smooth scene, a little fine detail, sensor noise."""
    rng = np.random.default_rng(seed)
    scene = noise_image(w, h, seed)
    detail = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).resize((w, h))
    arr = np.asarray(Image.blend(scene, detail, 0.1), dtype=np.int16) + rng.integers(-6, 7, (h, w, 1))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _formats() -> dict[str, tuple[bytes, bool]]:
    """name -> (encoded bytes, is_jpeg) for every format this PIL writes and reads back."""
    from PIL import features

    img = _photo(96, 72, 5)
    out = {
        "baseline.jpg": (_encode(img, "JPEG", quality=90), True),
        "progressive.jpg": (_encode(img, "JPEG", quality=90, progressive=True), True),
        "gray.jpg": (_encode(img.convert("L"), "JPEG", quality=90), True),
        "cmyk.jpg": (_encode(img.convert("CMYK"), "JPEG", quality=90), True),
        "444.jpg": (_encode(img, "JPEG", quality=90, subsampling=0), True),
        "rotated.jpg": (exif_rotated_jpeg(8), True),
        "rgb.png": (_encode(img, "PNG"), False),
        "rgba.png": (_encode(img.convert("RGBA"), "PNG"), False),
        "palette.gif": (_encode(img.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"), False),
        "rgb.bmp": (_encode(img, "BMP"), False),
        "rgb.tif": (_encode(img, "TIFF"), False),
        "deflate.tif": (_encode(img, "TIFF", compression="tiff_adobe_deflate"), False),
        "rgb.tga": (_encode(img, "TGA"), False),
        "rgb.ppm": (_encode(img, "PPM"), False),
        "rgb.ico": (_encode(img, "ICO", sizes=[(64, 48)]), False),
        "rgb.sgi": (_encode(img, "SGI"), False),
        "rgb.pcx": (_encode(img, "PCX"), False),
        "rgb.qoi": (_encode(img, "QOI"), False),
    }
    if features.check("webp"):
        out["lossy.webp"] = (_encode(img, "WEBP", quality=90), False)
        out["lossless.webp"] = (_encode(img, "WEBP", lossless=True), False)
    if features.check("jpg_2000"):
        out["rgb.jp2"] = (_encode(img, "JPEG2000"), False)
    if features.check("avif"):
        out["rgb.avif"] = (_encode(img, "AVIF", quality=90), False)
    return out


def _reference(data: bytes) -> np.ndarray:
    """The full-size decode the bound is stated against: PIL, EXIF-oriented, to_rgb."""
    return np.asarray(to_rgb(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))), dtype=np.int16)


@pytest.mark.parametrize("name", sorted(_formats()))
def test_every_format_decodes_within_bound_of_full_size_pil(name):
    data, is_jpeg = _formats()[name]
    img, scale, _ = decode_bytes(data, _whole, reduce=False)
    got = np.asarray(img, dtype=np.int16)
    ref = _reference(data)
    assert got.shape == ref.shape and scale == (1.0, 1.0)
    assert np.abs(got - ref).max() <= (1 if is_jpeg else 0)  # libjpeg-turbo in both / the same PIL decode
    t, tscale, _ = decode_bytes(data, _whole, reduce=False, device="cpu")  # the tensor path's decode
    assert tuple(t.shape) == (3, *ref.shape[:2]) and t.dtype == torch.uint8 and tscale == (1.0, 1.0)
    assert np.abs(t.permute(1, 2, 0).numpy().astype(np.int16) - got).max() == 0  # same decoder


def _crop_diffs(data: bytes, spec: str, seeds: range, arrays: bool = False,
                **kw) -> tuple[list[float], list[float], list[int]]:
    """Per-crop mean and 99th percentile |reduced - full| of crops rendered from both decodes,
    and the reduced decode widths. ``arrays``: as the CPU loader decodes (RGBX arrays, crops cut then resized)."""
    groups = parse_crops(spec)
    aug = AugmentConfig(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, flip_p=0.0)
    means, p99s, widths = [], [], []
    for s in seeds:
        def plan(w, h, s=s):
            return plan_crops(w, h, groups, aug, np.random.default_rng(s))

        full, fscale, fplans = decode_bytes(data, plan, reduce=False, arrays=arrays)
        small, sscale, splans = decode_bytes(data, plan, arrays=arrays, **kw)
        assert [p.box for p in fplans] == [p.box for p in splans]  # geometry drawn on the full size
        assert isinstance(small, np.ndarray) == arrays
        widths.append(small.shape[1] if arrays else small.width)
        for a, b in zip(fplans, splans):
            ref = render_crop(full, fscale, a)
            d = np.abs(ref.astype(float) - render_crop(small, sscale, b).astype(float))
            means.append(float(d.mean()))
            p99s.append(float(np.percentile(d, 99)))
    return means, p99s, widths


@pytest.mark.parametrize("arrays", [False, True])
@pytest.mark.parametrize("kind", ["baseline", "progressive", "444", "gray"])
def test_reduced_jpeg_crops_within_bound_of_full_decode(kind, arrays):
    img = _photo(1600, 1200, 9)
    kw = {"progressive": {"progressive": True}, "444": {"subsampling": 0}}.get(kind, {})
    data = jpeg_bytes(img.convert("L") if kind == "gray" else img, **kw)
    means, p99s, widths = _crop_diffs(data, "2x224+4x96", range(4), arrays=arrays)
    assert all(w < 1600 for w in widths)  # really reduced
    assert max(means) <= 2.0 and max(p99s) <= 8.0, (max(means), max(p99s))  # photo-like bound


@pytest.mark.parametrize("arrays", [False, True])
def test_reduced_jpeg_crops_with_sharp_edges_within_bound(arrays):
    from PIL import ImageDraw

    img = noise_image(1600, 1200, 3)
    draw, rng = ImageDraw.Draw(img), np.random.default_rng(3)
    for _ in range(60):
        x, y = (int(v) for v in rng.integers(0, 1600, 2))
        draw.rectangle([x, y, x + int(rng.integers(5, 200)), y + int(rng.integers(5, 200))],
                       fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    means, p99s, _ = _crop_diffs(jpeg_bytes(img), "2x224+4x96", range(4), arrays=arrays)
    assert max(means) <= 2.5 and max(p99s) <= 20.0, (max(means), max(p99s))


def test_simplejpeg_decodes_jpegs_at_three_eighths_and_pil_fallback_does_not():
    # a 1x96 crop of a 256-px box needs scale 0.375: libjpeg-turbo's 3/8, PIL's draft only has 1/2
    data = jpeg_bytes(_photo(1024, 768, 2))

    def plan(w, h):
        return [CropPlan((0, 0, 256, 256), 96, False)]

    turbo, _, _ = decode_bytes(data, plan)
    pil, _, _ = decode_bytes(data, plan, turbo=False)
    assert turbo.size == (384, 288) and pil.size == (512, 384)
    assert turbo_eighths(0.375) == 3 and turbo_eighths(0.376) == 4 and turbo_eighths(0.51) == 8


def test_jpegs_simplejpeg_refuses_still_decode_through_pil():
    cmyk = jpeg_bytes(_photo(64, 48).convert("CMYK"))
    assert decode_jpeg_turbo(cmyk, 64, 48, 1.0) is None  # CMYK: PIL handles the Adobe inversion
    whole = bytearray(jpeg_bytes(_photo(160, 120, 4)))
    whole[len(whole) // 2:len(whole) // 2 + 20] = bytes(20)  # damage PIL tolerates, strict libjpeg refuses
    assert decode_jpeg_turbo(bytes(whole), 160, 120, 1.0) is None
    img, _, _ = decode_bytes(bytes(whole), _whole)
    assert np.array_equal(np.asarray(img), _reference(bytes(whole)).astype(np.uint8))  # not skipped: PIL's call
    for data in (cmyk,):
        img, _, _ = decode_bytes(data, _whole)
        assert np.abs(np.asarray(img, dtype=np.int16) - _reference(data)).max() == 0


def test_exif_orientation_on_the_tensor_path_matches_pil():
    for orientation in range(1, 9):
        data = exif_rotated_jpeg(orientation)
        ref = _reference(data)
        t, scale, _ = decode_bytes(data, _whole, device="cpu")
        assert np.abs(t.permute(1, 2, 0).numpy().astype(np.int16) - ref).max() <= 1, orientation
        assert scale == (1.0, 1.0)


def test_bad_inputs_are_skipped_on_the_tensor_path_too():
    for name, (data, reason) in bad_kinds().items():
        with pytest.raises(SkipImage) as info:
            decode_bytes(data, _whole, min_side=16, device="cpu")
        assert info.value.reason == reason, name



@pytest.mark.parametrize("orientation", range(1, 9))
def test_array_decode_is_the_decoders_rgbx_oriented_as_pil(orientation):
    from bigseer.data.orientation import orient_array
    from bigseer.data.multicrop import OrientedArray

    img = noise_image(64, 40, 9)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = jpeg_bytes(img, exif=exif.tobytes())
    plans = plan_crops(64, 40, parse_crops("1x16"), AugmentConfig(), np.random.default_rng(0))
    pil, scale, _ = decode_bytes(data, lambda w, h: plans)
    got, scale_a, _ = decode_bytes(data, lambda w, h: plans, arrays=True)
    assert isinstance(got, OrientedArray if orientation > 1 else np.ndarray) and scale_a == scale
    arr = orient_array(got.stored, orientation) if orientation > 1 else got  # the whole image, upright
    assert arr.dtype == np.uint8 and arr.shape[2] == 4 and got.shape == arr.shape
    assert arr.shape[:2] == (pil.height, pil.width)
    assert np.array_equal(arr[:, :, :3], np.asarray(pil))  # same decoder, same orientation


@pytest.mark.parametrize("orientation", range(2, 9))
def test_crops_of_rotated_images_are_cut_from_the_stored_pixels_and_turned(orientation):
    """render_crop on an OrientedArray (box mapped into the stored pixels, crop turned upright) equals the
    crop of the upright image up to the resize's rounding (its passes swap order for orientations 5-8)."""
    from bigseer.data.orientation import orient_array
    from bigseer.data.multicrop import OrientedArray

    stored = np.concatenate([np.array(_photo(90, 60, orientation)), np.zeros((60, 90, 1), np.uint8)], axis=2)
    wrapped = OrientedArray(stored, orientation)
    upright = orient_array(stored, orientation)
    assert wrapped.shape == upright.shape
    h, w = upright.shape[:2]
    diffs, resized = [], []
    for seed in range(30):
        for p in plan_crops(w, h, parse_crops("2x32+2x12"), AugmentConfig(), np.random.default_rng(seed)):
            for scale in ((1.0, 1.0), (0.8, 0.7)):  # whole-pixel and fractional boxes
                diffs.append(np.abs(render_crop(wrapped, scale, p).astype(int) - render_crop(upright, scale, p)))
                plain = CropPlan(p.box, p.size, False)
                resized.append(np.abs(render_crop(wrapped, scale, plain).astype(int)
                                      - render_crop(upright, scale, plain)))
    # the resize alone: one rounding apart (transposed: rows first instead of columns, rounded between)
    assert max(int(d.max()) for d in resized) <= (1 if orientation < 5 else 2)
    assert np.mean([d.mean() for d in resized]) < (0.02 if orientation < 5 else 0.25)
    # whole crops: colour ops scale those differences by <= 1.8 each, nothing systematic
    assert max(int(d.max()) for d in diffs) < 16 and np.mean([d.mean() for d in diffs]) < 0.3


def test_array_decode_leaves_other_images_to_pil():
    for name in ("cmyk.jpg", "rgba.png", "gray.png"):
        img, _, _ = decode_bytes(good_kinds()[name], _whole, arrays=True)
        assert isinstance(img, Image.Image) and img.mode == "RGB"
