"""SwAV / SEER multi-crop specs and augmentations.

A crop spec such as ``"2x224+4x96"`` becomes a list of :class:`CropGroup`. For every image the
crop *geometry* (RandomResizedCrop boxes and flips) is drawn on the image's full, EXIF-oriented
size before anything is decoded, so the decoder may decode at a reduced size (JPEG DCT scaling)
without changing the crop statistics; :func:`needed_scale` says how small it may decode.

Augmentations follow SwAV's ``main_swav.py`` order and defaults: RandomResizedCrop (bilinear,
antialiased), horizontal flip, colour distortion (ColorJitter 0.8s/0.8s/0.8s/0.2s with p 0.8 in a
random order, grayscale p 0.2), PIL Gaussian blur with p 0.5 and radius in [0.1, 2.0], ImageNet
normalisation. Randomness comes only from the ``numpy.random.Generator`` passed in.
:func:`render_crop` is the CPU path (uint8 throughout); :mod:`bigseer.data.tensor_augment` is the
same per-crop pipeline as torch ops for any device.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from PIL import Image

from bigseer.data.orientation import orient_array
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
    """SwAV / SEER augmentation settings (defaults = SEER's colour strength 1.0 recipe). The one augmentation
    config: pretraining's and evaluation's configs have fields of the same names (:meth:`of`)."""

    flip_p: float = 0.5
    jitter_strength: float = 1.0          # ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_radius: tuple[float, float] = (0.1, 2.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's aspect-ratio range
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def of(cls, config: object) -> "AugmentConfig":
        """The augmentation a run config asks for: every field of this class that ``config`` has under the same
        name and sets (not None); the others keep their defaults."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            v = getattr(config, f.name, None)
            if v is not None:
                values[f.name] = tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else v
        return cls(**values)


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
            box = random_resized_box(width, height, g.scale, aug.crop_ratio, rng)
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


def crop_box(width: int, height: int, scale_xy: tuple[float, float],
             plan: CropPlan) -> tuple[float, float, float, float]:
    """The plan's box in the pixels of an image decoded at ``scale_xy`` (``width`` x ``height``)."""
    sx, sy = scale_xy
    x0, y0, x1, y1 = plan.box
    return (x0 * sx, y0 * sy, min(x1 * sx, width), min(y1 * sy, height))


def adjust_hue_uint8(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Rotate the HSV hue of uint8 ``HxWx3`` by ``factor`` turns (torchvision's ``adjust_hue``).

    Exact HSV rotation in float32, rounded once (<= 1 LSB from a float64 colorsys round trip);
    V and S are kept. PIL's uint8 HSV round trip (the previous path) is off the exact rotation by
    up to 17 LSB: H truncated to 1/255 turn (6), shift rounded to 1/255 turn (3), wrap mod 256
    instead of 255 (6), S truncated (1), rounding (1). Channel ``c`` of the result is
    ``V - C * clip(min(k, 4 - k), 0, 1)`` with ``k = (n_c + H') mod 6``, ``n = (5, 3, 1)``
    (the float32 steps: :mod:`bigseer.data.augment_kernels`, which runs it).
    """
    from bigseer.data.augment_kernels import augment

    return augment(np.asarray(rgb, dtype=np.uint8), False, ([3], 1.0, 1.0, 1.0, factor), False, None)


class OrientedArray:
    """Decoded pixels in their stored orientation and the EXIF orientation (2..8) that shows them upright
    (decode.py ``arrays=True``): render_crop maps each crop box into the stored pixels and orients the
    small crop instead of copying the whole image into its upright orientation."""

    __slots__ = ("stored", "orientation", "shape")

    def __init__(self, stored: np.ndarray, orientation: int) -> None:
        self.stored, self.orientation = stored, orientation
        h, w = stored.shape[:2]
        self.shape = (w, h, stored.shape[2]) if orientation >= 5 else stored.shape

    def stored_box(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """``box`` (x0, y0, x1, y1) of the upright image as the same region of the stored pixels."""
        x0, y0, x1, y1 = box
        h, w = self.stored.shape[:2]
        o = self.orientation
        if o >= 5:  # transposed: upright x runs along stored y
            x0, y0, x1, y1 = y0, x0, y1, x1
            flip_x, flip_y = o in (7, 8), o in (6, 7)
        else:
            flip_x, flip_y = o in (2, 3), o in (3, 4)
        if flip_x:
            x0, x1 = w - x1, w - x0
        if flip_y:
            y0, y1 = h - y1, h - y0
        return x0, y0, x1, y1

    def orient(self, crop: np.ndarray) -> np.ndarray:
        """A crop cut from the stored pixels, turned upright (the views equal to PIL's transposes)."""
        return orient_array(crop, self.orientation)


def enclosing_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """The whole pixels of a ``width`` x ``height`` image that ``box`` touches (at least one; the box itself
    when its edges are whole pixels, as every plan box is at scale 1)."""
    x0, y0 = min(max(math.floor(box[0]), 0), width - 1), min(max(math.floor(box[1]), 0), height - 1)
    return x0, y0, min(max(math.ceil(box[2]), x0 + 1), width), min(max(math.ceil(box[3]), y0 + 1), height)


def render_crop(img: Image.Image | np.ndarray | OrientedArray, scale_xy: tuple[float, float],
                plan: CropPlan) -> np.ndarray:
    """Cut, resize and colour-augment one crop from ``img`` (RGB, possibly reduced by
    ``scale_xy`` relative to the full size the plan was drawn on). Returns uint8 HxWx3.

    ``img`` is a PIL image, a uint8 ``HxWx3`` / ``HxWx4`` (RGBX) array or an :class:`OrientedArray`
    (decode.py's ``arrays=True``; for EXIF-rotated images: the box is mapped into the stored pixels, the
    crop resized there and turned upright, which is the same crop up to the resize's rounding: for the
    transposing orientations 5-8 each pass runs along the other axis of the upright crop).
    All on uint8: one antialiased bilinear resize of the crop box, then flip, colour jitter (PIL's
    ImageEnhance blends in the plan's order, hue by :func:`adjust_hue_uint8`), grayscale (ITU-R 601 luma,
    kept single-channel through the blur) and PIL's Gaussian blur (extended box blur, sigma = radius),
    all in the fused kernels of :mod:`bigseer.data.augment_kernels` (bitwise PIL's ops, 3-9x faster).

    Resize. From an array (the CPU loader, :class:`~bigseer.data.render.SampleRenderer`): the pixels the
    box touches are cut, then resized, so every output pixel's filter stays inside the crop, as in
    torchvision's RandomResizedCrop (``crop(box).resize``, SwAV's own definition), by
    :func:`~bigseer.data.resize_kernels.resize_box` (bitwise Pillow's resize of the cut: its coefficients,
    integer arithmetic and pass order; read in place), whole-pixel boxes (every box at scale 1) and
    fractional ones (reduced decode) alike, with the box relative to the cut pixels
    (same geometry, no rounding of the box). From a PIL image: PIL's ``resize(box=...)`` over the whole
    image, as before, whose border filters may reach up to one filter support past the box: the two differ
    in a crop's outer 1-3 rows and columns only.
    Against the previous all-PIL path otherwise: the same pixels, except hue,
    which is the exact rotation (see adjust_hue_uint8; later blends can scale its difference, crops
    measure mean |diff| <= 2 LSB in the tests).
    """
    return _augment(_resized(img, scale_xy, plan), plan)


def render_crop_into(img: Image.Image | np.ndarray | OrientedArray, scale_xy: tuple[float, float],
                     plan: CropPlan, out: np.ndarray, norm: tuple[np.ndarray, np.ndarray]) -> None:
    """:func:`render_crop`'s crop written into float32 ``out`` (3, S, S) normalised with ``norm``
    (:func:`normalization`) by the same kernel pass: bitwise ``normalize_uint8`` of render_crop's crop,
    without the uint8 crop, its copy into the batch or the separate normalising passes (the CPU loader)."""
    from bigseer.data.augment_kernels import augment_into

    augment_into(_resized(img, scale_xy, plan), plan.flip, plan.extra.get("jitter"), bool(plan.extra.get("gray")),
                 plan.extra.get("blur"), norm[0], norm[1], out)


def _resized(img: Image.Image | np.ndarray | OrientedArray, scale_xy: tuple[float, float],
             plan: CropPlan) -> np.ndarray:
    """The crop's box of ``img`` resized to ``plan.size`` (render_crop's first step), uint8 HxWx3."""
    if isinstance(img, OrientedArray):  # the box in the stored pixels, the crop turned upright after
        height, width = img.shape[:2]
        stored = img.stored_box(crop_box(width, height, scale_xy, plan))
        return img.orient(_resize_cut(img.stored, stored, plan.size))
    if isinstance(img, np.ndarray):
        height, width = img.shape[:2]
        return _resize_cut(img, crop_box(width, height, scale_xy, plan), plan.size)
    box = crop_box(img.width, img.height, scale_xy, plan)
    out = img.resize((plan.size, plan.size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out if out.mode == "RGB" else out.convert("RGB"))


def _resize_cut(arr: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """The pixels ``box`` touches, cut from ``arr`` and resized to ``size`` by PIL's two passes
    (:func:`~bigseer.data.resize_kernels.resize_box`, read in place) with the box relative to the cut."""
    from bigseer.data.resize_kernels import resize_box

    x0, y0, x1, y1 = enclosing_box(box, arr.shape[1], arr.shape[0])
    return resize_box(arr[y0:y1, x0:x1], (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0), size)


def _augment(crop: np.ndarray, plan: CropPlan) -> np.ndarray:
    """Everything after the resize (flip, colour jitter, grayscale, blur) on a uint8 HxWx3 crop, by the
    fused kernels of :mod:`bigseer.data.augment_kernels` (bitwise PIL's ops); a new uint8 HxWx3 array."""
    from bigseer.data.augment_kernels import augment

    return augment(crop, plan.flip, plan.extra.get("jitter"), bool(plan.extra.get("gray")),
                   plan.extra.get("blur"))


def normalization(aug: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(255 mean, 255 std)`` of ``aug`` as float32 (3,) arrays, each product rounded to float32: the constants
    both normalising paths use (:func:`normalize_uint8`, :func:`render_crop_into`)."""
    return np.array(aug.mean, np.float32) * np.float32(255.0), np.array(aug.std, np.float32) * np.float32(255.0)


def normalize_uint8(batch: torch.Tensor, aug: AugmentConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """``[..., H, W, 3]`` uint8 -> ``[..., 3, H, W]`` float32 normalised with ``aug.mean/std``,
    on ``batch``'s device (into ``out`` when given); one converting copy, then in-place
    ``(x - 255 mean) / (255 std)`` (the CPU loader writes the same values from its crop kernel instead,
    :func:`render_crop_into`)."""
    shape = batch.movedim(-1, -3).shape
    x = torch.empty(shape, dtype=torch.float32, device=batch.device) if out is None else out
    x.copy_(batch.movedim(-1, -3))
    mean, std = (torch.from_numpy(v).view(3, 1, 1).to(batch.device) for v in normalization(aug))
    return x.sub_(mean).div_(std)
