"""The tensor path (bigseer.data.tensor_augment, shared with device="cuda") against the CPU uint8
path, op by op and per crop, and SampleRenderer on both paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter

from bigseer.data.decode import SkipImage
from bigseer.data.multicrop import (AugmentConfig, CropPlan, adjust_hue_uint8, normalize_uint8, parse_crops,
                                    plan_crops, render_crop)
from bigseer.data.render import SampleRenderer
from bigseer.data.sources import open_source
from bigseer.data.tensor_augment import (adjust_contrast, adjust_hue, as_chw_uint8, blend, gaussian_blur, luma,
                                         render_crop_tensor, resize_box, resolve_device)
from bigseer.errors import ConfigError
from tests.data.zoo import noise_image, write_zoo

pytestmark = pytest.mark.numerics  # re-run by .ci/run under another kernel dispatch


def _rgb(w: int = 120, h: int = 90, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy().astype(int)


@pytest.mark.parametrize("wh,box,size", [((120, 90), (3.25, 5.5, 100.75, 80.0), 64), ((120, 90), (0, 0, 120, 90), 32),
                                         ((120, 90), (10, 0, 50, 90), 90), ((120, 90), (0, 0, 120, 90), 120),
                                         ((120, 90), (0.5, 0.25, 7.5, 6.0), 24), ((120, 90), (60.1, 44.9, 120, 90), 16),
                                         ((50, 200), (2.5, 10.25, 48.0, 190.0), 40), ((50, 200), (0, 0, 50, 200), 24)])
def test_resize_is_pils_box_resize(wh, box, size):
    """Bitwise Pillow's resize (its coefficients, fixed point and pass order, vertical first for the tall
    50 x 200 source), carried exactly by float64 matmuls."""
    from bigseer.data.pil_resample import vertical_first

    img = _rgb(*wh)
    want = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, box=box)).astype(int)
    got = _hwc(resize_box(as_chw_uint8(img, "cpu"), box, size))
    assert np.array_equal(got, want)
    assert vertical_first(*wh, size, size) == (wh == (50, 200))


@pytest.mark.parametrize("radius", [0.1, 0.5, 1.0, 1.37, 2.0])
def test_blur_is_pils_gaussian_blur(radius):
    for img in (_rgb(), _rgb(5, 7, 1)):  # also smaller than the box
        want = np.asarray(img.filter(ImageFilter.GaussianBlur(radius))).astype(int)
        got = _hwc(gaussian_blur(as_chw_uint8(img, "cpu").float(), radius))
        assert np.abs(got - want).max() <= 1 and (got != want).mean() <= 1e-3


@pytest.mark.parametrize("factor", [0.2, 0.9, 1.0, 1.8])
def test_colour_ops_are_pils(factor):
    img = _rgb()
    x = as_chw_uint8(img, "cpu").float()
    for want, got in [(ImageEnhance.Brightness(img).enhance(factor), blend(0.0, x, factor)),
                      (ImageEnhance.Contrast(img).enhance(factor), adjust_contrast(x, factor)),
                      (ImageEnhance.Color(img).enhance(factor), blend(luma(x), x, factor))]:
        assert np.abs(_hwc(got) - np.asarray(want).astype(int)).max() <= 1
    assert np.abs(luma(x)[0].numpy() - np.asarray(img.convert("L")).astype(int)).max() <= 1
    hue = factor / 4 - 0.2
    assert np.abs(_hwc(adjust_hue(x, hue)) - adjust_hue_uint8(np.asarray(img), hue).astype(int)).max() <= 1


def test_whole_crops_match_the_cpu_path_within_bound():
    img = np.array(noise_image(400, 300, 3))  # the CPU loader renders from arrays (decode.py arrays=True)
    t = as_chw_uint8(img, "cpu")
    groups = parse_crops("2x64+4x24")
    diffs, kinds = [], set()
    for seed in range(40):
        for p in plan_crops(400, 300, groups, AugmentConfig(), np.random.default_rng(seed)):
            for scale in ((1.0, 1.0), (0.8, 0.7)):
                got = render_crop_tensor(t, scale, p)
                assert got.dtype == torch.uint8 and tuple(got.shape) == (p.size, p.size, 3)
                diffs.append(np.abs(got.numpy().astype(int) - render_crop(img, scale, p).astype(int)))
            kinds |= {k for k in ("jitter", "gray", "blur") if p.extra.get(k)} | ({"flip"} if p.flip else set())
    assert kinds == {"jitter", "gray", "blur", "flip"}
    assert max(int(d.max()) for d in diffs) < 12  # 1-LSB ties through <= 4 ops scaling by <= 1.8
    assert np.mean([d.mean() for d in diffs]) <= 0.01  # no systematic difference


def _catalog(tmp_path):
    for i in range(4):
        noise_image(160, 120, 20 + i).save(tmp_path / f"a{i}.jpg", quality=90)
    noise_image(96, 80, 30).save(tmp_path / "b.png")
    return open_source(str(tmp_path))


def test_sample_renderer_tensor_path_on_cpu_matches_cpu_path(tmp_path):
    catalog = _catalog(tmp_path)
    groups = parse_crops("2x48+3x16")
    cpu = SampleRenderer(catalog, groups, AugmentConfig())
    tensor = SampleRenderer(catalog, groups, AugmentConfig(), device="cpu")
    for item in range(len(catalog)):
        a = cpu.render(item, np.random.default_rng(item))
        b = tensor.render(item, np.random.default_rng(item))
        assert [x.shape for x in a] == [tuple(y.shape) for y in b] == [(48, 48, 3)] * 2 + [(16, 16, 3)] * 3
        assert all(isinstance(y, torch.Tensor) and y.device.type == "cpu" for y in b)
        for x, y in zip(a, b):
            assert np.abs(x.astype(int) - y.numpy().astype(int)).max() < 12
    batches = []
    for r in (cpu, tensor):  # buffers as the stream fills them, then the stream's normalisation
        bufs = r.new_buffers(2)
        for b in range(2):
            r.place(bufs, b, r.render(b, np.random.default_rng(b)))
        batches.append([normalize_uint8(buf, r.aug) for buf in bufs])
        assert [tuple(c.shape) for c in batches[-1]] == [(2, 2, 3, 48, 48), (3, 2, 3, 16, 16)]
    for x, y in zip(*batches):
        assert (x - y).abs().max() <= 12 / (255 * 0.224)  # < 12 LSB in normalised units


def test_sample_renderer_tensor_path_skips_bad_images_by_reason(tmp_path):
    expected = write_zoo(str(tmp_path))
    catalog = open_source(str(tmp_path))
    r = SampleRenderer(catalog, parse_crops("1x16"), AugmentConfig(), device="cpu")
    reasons = set()
    for item in range(len(catalog)):
        try:
            crops = r.render(item, np.random.default_rng(item))
            assert crops[0].shape == (16, 16, 3)
        except SkipImage as exc:
            reasons.add(exc.reason)
    assert reasons == {v for v in expected.values() if v}


def test_builtin_images_on_the_tensor_path():
    r = SampleRenderer(open_source("builtin:4"), parse_crops("1x32"), AugmentConfig(), device="cpu")
    assert tuple(r.render(0, np.random.default_rng(0))[0].shape) == (32, 32, 3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for machines without CUDA")
def test_cuda_without_cuda_is_one_config_error_line():
    with pytest.raises(ConfigError) as info:
        SampleRenderer(open_source("builtin:4"), parse_crops("1x32"), AugmentConfig(), device="cuda")
    msg = str(info.value)
    assert "cuda" in msg and "torch.cuda.is_available() is False" in msg and "\n" not in msg


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "", 3.5])
def test_bad_device_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="decode device"):
        resolve_device(bad)


def test_flip_is_exact_on_the_tensor_path():
    t = as_chw_uint8(_rgb(64, 64, 5), "cpu")
    plain = render_crop_tensor(t, (1.0, 1.0), CropPlan((0, 0, 64, 64), 64, False))
    flipped = render_crop_tensor(t, (1.0, 1.0), CropPlan((0, 0, 64, 64), 64, True))
    assert torch.equal(flipped, plain.flip(1))
    assert torch.equal(plain, t.permute(1, 2, 0))  # whole image at its own size: untouched


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK", "P", "RGBA"])
def test_rgbx_array_is_the_rgb_image_in_four_byte_pixels(mode):
    """PIL-decoded images (PNG, WebP, CMYK JPEG) reach the CPU crop path as RGBX words: channels 0-2 are
    PIL's RGB conversion, the array is (H, W, 4) with 4-byte pixels the resize kernel reads in place."""
    from bigseer.data.render import rgbx_array

    img = noise_image(37, 23, 5).convert(mode)
    got = rgbx_array(img)
    assert got.shape == (23, 37, 4) and got.dtype == np.uint8 and got.strides[1:] == (4, 1)
    assert np.array_equal(got[..., :3], np.asarray(img.convert("RGB")))


@pytest.mark.parametrize("device", [None, "cpu"])
def test_fill_and_finish_are_render_place_and_normalize_bitwise(tmp_path, device):
    """The stream's batch (new_batch, fill, finish): on the CPU path the crop kernel writes the normalised
    crops itself, bitwise what render + place + normalize_uint8 give (JPEG, and PNG through PIL); on the
    tensor path ("cpu" here) it is that flow. A slot refilled after a skip holds only the new sample."""
    catalog = _catalog(tmp_path)
    r = SampleRenderer(catalog, parse_crops("2x48+3x16"), AugmentConfig(), device=device)
    n = len(catalog)
    bufs = r.new_buffers(n)
    for b in range(n):
        r.place(bufs, b, r.render(b, np.random.default_rng(b)))
    want = [normalize_uint8(buf, r.aug) for buf in bufs]
    batch = r.new_batch(n)
    r.fill(batch, 0, n - 1, np.random.default_rng(99))  # a sample later replaced in slot 0
    for b in range(n):
        r.fill(batch, b, b, np.random.default_rng(b))
    got = r.finish(batch)
    assert [tuple(c.shape) for c in got] == [(2, n, 3, 48, 48), (3, n, 3, 16, 16)]
    assert all(c.dtype == torch.float32 for c in got)
    for x, y in zip(got, want):
        assert torch.equal(x, y)
