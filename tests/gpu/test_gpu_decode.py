"""JPEG decode on the tensor path (cuda: nvjpeg + tensor augmentations; cpu: the same tensor code) against the
CPU path (simplejpeg DCT-scaled decode) on generated camera-like JPEGs (12 MP on cuda), and MultiCropStream
batches arriving on the decode device (the engine's ``--decode_device``)."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.gpu.devices import DEVICES

ROOT = Path(__file__).resolve().parents[2]
# images, (width, height), crops per device
SIZES: dict[str, tuple[int, tuple[int, int], str]] = {"cpu": (3, (320, 240), "2x32+4x16"),
                                                      "cuda": (4, (4000, 3000), "2x224+4x96")}
# mean |diff| bound: bigseer/data/decode.py's 2 LSB for a reduced-scale decode on photo-like content; nvjpeg's
# IDCT and chroma upsampling are not libjpeg-turbo's, which may add about as much again on cuda
MEAN_LSB = {"cpu": 2.0, "cuda": 4.0}


def _write_jpegs(folder: Path, device: str) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))  # bench_data imports its sibling `report`
    try:
        from bench_data import write_camera_jpeg
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    n, size, _ = SIZES[device]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda i: write_camera_jpeg(str(folder / f"img_{i:03d}.jpg"), size, np.random.default_rng(i)),
                      range(n)))


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def folder(tmp_path: Path, device: str) -> Path:
    _write_jpegs(tmp_path, device)
    return tmp_path


def _render_all(renderer: Any, n: int) -> list[torch.Tensor]:
    """Every item's crops in the stream's batch buffers (one buffer per crop group), as CPU float tensors."""
    buffers = renderer.new_buffers(n)
    for item in range(n):
        renderer.place(buffers, item, renderer.render(item, np.random.default_rng([7, item])))
    return [b.cpu().float() for b in buffers]


def test_tensor_decode_matches_the_cpu_path(device: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bigseer.data.tensor_augment as ta
    from bigseer.data import AugmentConfig, open_source, parse_crops
    from bigseer.data.render import SampleRenderer

    counts = {"nvjpeg": 0, "fallback": 0}
    real = ta._nvjpeg

    def counting(*a: Any, **k: Any) -> Any:
        out = real(*a, **k)
        counts["fallback" if out is None else "nvjpeg"] += 1
        return out

    monkeypatch.setattr(ta, "_nvjpeg", counting)
    catalog, groups, aug = open_source(str(folder)), parse_crops(SIZES[device][2]), AugmentConfig()
    n = len(catalog)
    cpu = _render_all(SampleRenderer(catalog, groups, aug), n)
    dev = _render_all(SampleRenderer(catalog, groups, aug, device=device), n)
    assert [tuple(b.shape) for b in dev] == [tuple(b.shape) for b in cpu]
    mean = float(sum((a - b).abs().sum() for a, b in zip(cpu, dev, strict=True)) / sum(a.numel() for a in cpu))
    assert mean <= MEAN_LSB[device], f"crops differ from the CPU path by {mean:.2f} LSB on average"
    if device == "cuda":  # every JPEG went through nvjpeg, none fell back to the CPU decoder
        assert counts["fallback"] == 0 and counts["nvjpeg"] >= n, counts


def test_multicrop_stream_batches_arrive_on_the_decode_device(device: str, folder: Path) -> None:
    from bigseer.data import MultiCropStream

    stream = MultiCropStream(str(folder), SIZES[device][2], 2, device=device)
    try:
        first = next(iter(stream))
    finally:
        stream.close()
    assert {c.device.type for c in first.crops} == {device}
