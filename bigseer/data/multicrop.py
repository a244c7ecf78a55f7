"""SwAV / SEER multi-crop specs and augmentations.

A crop spec such as ``"2x224+4x96"`` becomes a list of :class:`CropGroup`. For every image the
crop *geometry* (RandomResizedCrop boxes and flips) is drawn on the image's full, EXIF-oriented
size before anything is decoded, so the decoder may decode at a reduced size (JPEG ``draft``)
without changing the crop statistics; :func:`needed_scale` says how small it may decode.

Augmentations follow SwAV's ``main_swav.py`` order and defaults: RandomResizedCrop (bilinear,
antialiased), horizontal flip, colour distortion (ColorJitter 0.8s/0.8s/0.8s/0.2s with p 0.8 in a
random order, grayscale p 0.2), PIL Gaussian blur with p 0.5 and radius in [0.1, 2.0], ImageNet
normalisation. Randomness comes only from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from bigseer.errors import ConfigError

LARGE_SCALE: tuple[float, float] = (0.14, 1.0)
SMALL_SCALE: tuple[float, float] = (0.05, 0.14)
DEFAULT_CROPS = "2x224+4x96"
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_GROUP_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*(?:@\s*([0-9.]+)\s*-\s*([0-9.]+)\s*)?$")
_EXPECTED = ("expected COUNTxSIZE[@MIN-MAX] groups joined by '+', e.g. '2x224+4x96' or "
             "'2x224@0.14-1.0+4x96@0.05-0.14'")


@dataclass(frozen=True)
class CropGroup:
    """``count`` crops of ``size`` x ``size`` pixels, RandomResizedCrop area fraction in ``scale``."""

    count: int
    size: int
    scale: tuple[float, float] = LARGE_SCALE


def parse_crops(spec: str | list[CropGroup]) -> list[CropGroup]:
    """Parse ``"2x224+4x96"`` (optionally ``@min-max`` per group) into crop groups.

    The first group defaults to the large-crop scale (0.14, 1.0), the others to the small-crop
    scale (0.05, 0.14). A list of :class:`CropGroup` is validated and returned as a new list.
    Raises ConfigError naming the spec and the expected form.
    """
    if isinstance(spec, (list, tuple)):
        groups = list(spec)
        if not groups or not all(isinstance(g, CropGroup) for g in groups):
            raise ConfigError(f"bad crop spec {spec!r}: expected a non-empty list of CropGroup")
        for g in groups:
            _check_group(g, repr(spec))
        return groups
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"bad crop spec {spec!r}: {_EXPECTED}")
    groups = []
    for i, part in enumerate(spec.split("+")):
        m = _GROUP_RE.match(part)
        if m is None:
            raise ConfigError(f"bad crop spec {spec!r}: {_EXPECTED}")
        count, size = int(m.group(1)), int(m.group(2))
        if m.group(3) is not None:
            try:
                scale = (float(m.group(3)), float(m.group(4)))
            except ValueError:
                raise ConfigError(f"bad crop spec {spec!r}: {_EXPECTED}") from None
        else:
            scale = LARGE_SCALE if i == 0 else SMALL_SCALE
        group = CropGroup(count, size, scale)
        _check_group(group, repr(spec))
        groups.append(group)
    return groups


def format_crops(groups: list[CropGroup]) -> str:
    """Inverse of :func:`parse_crops`, with explicit scales."""
    return "+".join(f"{g.count}x{g.size}@{g.scale[0]:g}-{g.scale[1]:g}" for g in groups)


def _check_group(g: CropGroup, spec: str) -> None:
    lo, hi = g.scale
    if g.count < 1 or g.size < 1 or not (0.0 < lo <= hi <= 1.0):
        raise ConfigError(f"bad crop spec {spec}: counts and sizes must be >= 1 and scales "
                          f"0 < MIN <= MAX <= 1 ({_EXPECTED})")


@dataclass(frozen=True)
class AugmentConfig:
    """SwAV / SEER augmentation settings (defaults = SEER's colour strength 1.0 recipe)."""

    flip_p: float = 0.5
    jitter_strength: float = 1.0          # ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_radius: tuple[float, float] = (0.1, 2.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass
class CropPlan:
    """Geometry of one crop on the full oriented image: box (x0, y0, x1, y1), target size, flip."""

    box: tuple[float, float, float, float]
    size: int
    flip: bool
    extra: dict = field(default_factory=dict)


def random_resized_box(width: int, height: int, scale: tuple[float, float],
                       ratio: tuple[float, float], rng: np.random.Generator
                       ) -> tuple[float, float, float, float]:
    """RandomResizedCrop geometry: area fraction in ``scale``, log-uniform aspect in ``ratio``.

    Ten tries, then a central crop with the aspect ratio clamped to ``ratio`` (the torchvision
    definition). Returns integer-valued (x0, y0, x1, y1).
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            return (x0, y0, x0 + w, y0 + h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, max(1, int(round(width / ratio[0])))
    elif in_ratio > ratio[1]:
        h, w = height, max(1, int(round(height * ratio[1])))
    else:
        w, h = width, height
    x0, y0 = (width - w) // 2, (height - h) // 2
    return (x0, y0, x0 + w, y0 + h)


def plan_crops(width: int, height: int, groups: list[CropGroup], aug: AugmentConfig,
               rng: np.random.Generator) -> list[CropPlan]:
    """Draw every crop's geometry and colour parameters for an image of the given full size."""
    plans = []
    s = aug.jitter_strength
    for g in groups:
        for _ in range(g.count):
            box = random_resized_box(width, height, g.scale, aug.ratio, rng)
            flip = bool(rng.random() < aug.flip_p)
            extra: dict = {}
            if s > 0 and rng.random() < aug.jitter_p:
                b, c, sat, hue = 0.8 * s, 0.8 * s, 0.8 * s, min(0.5, 0.2 * s)
                extra["jitter"] = (
                    [int(i) for i in rng.permutation(4)],
                    float(rng.uniform(max(0.0, 1 - b), 1 + b)),
                    float(rng.uniform(max(0.0, 1 - c), 1 + c)),
                    float(rng.uniform(max(0.0, 1 - sat), 1 + sat)),
                    float(rng.uniform(-hue, hue)),
                )
            extra["gray"] = bool(rng.random() < aug.grayscale_p)
            if rng.random() < aug.blur_p:
                extra["blur"] = float(rng.uniform(*aug.blur_radius))
            plans.append(CropPlan(box, g.size, flip, extra))
    return plans


def needed_scale(plans: list[CropPlan]) -> float:
    """Smallest decode scale (<= 1) at which no crop box is smaller than its output size."""
    need = 0.0
    for p in plans:
        x0, y0, x1, y1 = p.box
        need = max(need, p.size / max(x1 - x0, 1e-6), p.size / max(y1 - y0, 1e-6))
    return min(1.0, need)


def _adjust_hue(img: Image.Image, factor: float) -> Image.Image:
    if abs(factor) < 1e-9:
        return img
    h, s, v = img.convert("HSV").split()
    shifted = (np.asarray(h, dtype=np.uint8) + np.uint8(int(round(factor * 255)) % 256))
    return Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8), "L"), s, v)).convert("RGB")


def render_crop(img: Image.Image, scale_xy: tuple[float, float], plan: CropPlan) -> np.ndarray:
    """Cut, resize and colour-augment one crop from ``img`` (RGB, possibly reduced by
    ``scale_xy`` relative to the full size the plan was drawn on). Returns uint8 HxWx3."""
    sx, sy = scale_xy
    x0, y0, x1, y1 = plan.box
    box = (x0 * sx, y0 * sy, min(x1 * sx, img.width), min(y1 * sy, img.height))
    out = img.resize((plan.size, plan.size), Image.Resampling.BILINEAR, box=box)
    if plan.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    jitter = plan.extra.get("jitter")
    if jitter is not None:
        order, bright, contrast, sat, hue = jitter
        for op in order:
            if op == 0:
                out = ImageEnhance.Brightness(out).enhance(bright)
            elif op == 1:
                out = ImageEnhance.Contrast(out).enhance(contrast)
            elif op == 2:
                out = ImageEnhance.Color(out).enhance(sat)
            else:
                out = _adjust_hue(out, hue)
    if plan.extra.get("gray"):
        out = out.convert("L").convert("RGB")
    radius = plan.extra.get("blur")
    if radius is not None:
        out = out.filter(ImageFilter.GaussianBlur(radius=radius))
    return np.asarray(out, dtype=np.uint8)


def normalize_uint8(batch: torch.Tensor, aug: AugmentConfig) -> torch.Tensor:
    """``[..., H, W, 3]`` uint8 -> ``[..., 3, H, W]`` float32 normalised with ``aug.mean/std``."""
    x = batch.movedim(-1, -3).to(torch.float32)
    mean = torch.tensor(aug.mean, dtype=torch.float32).view(3, 1, 1) * 255.0
    std = torch.tensor(aug.std, dtype=torch.float32).view(3, 1, 1) * 255.0
    return ((x - mean) / std).contiguous()
