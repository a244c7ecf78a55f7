"""Pretraining recipes chosen from the data: ``auto`` (from the images' size and count) or ``seer``.

SEER's recipe (224 + 96 px multi-crop with ImageNet-strength colour, blur and flips, zero-init last BN,
16K prototypes) assumes large photos. On small images the two views of a randomly initialised trunk share
almost no signal and SwAV falls into its trivial fixed point (loss = ln K; benchmarks/results/downstream.md).
:func:`auto_recipe` scales the recipe with the data:

- crop size: the median shorter side rounded to a multiple of 16, between 32 and 224;
- below 96 px ("small"): two square crops covering 70-100% of the image, no flip, colour jitter 0.4, no
  grayscale, no blur, no zero-init of the blocks' last BN (at 32 px every block would start as its strided
  1x1 shortcut) and ``base_lr`` 2.4 (8x SEER's: every small-image run first sinks towards ln K, and only a
  large enough lr lets the trunk leave that plateau);
- 96-159 px ("medium"): two crops of 30-100% plus four half-size crops of 10-30%, jitter 0.8, blur 0.2;
- from 160 px ("large"): SEER's augmentation and zero-init, 2x224+4x96 crops;
- prototypes K = n_images / 16 rounded to a multiple of 16, in [32, 16384] (SEER: 16384 for 1B images);
  head 256 -> 64 below 100K images, else 2048 -> 128.

Only the small tier is validated by a benchmark (digits at 32 and 64 px, Fashion-MNIST at 32 px;
benchmarks/results/downstream.md); the medium tier is an interpolation, and the large tier is SEER's.

API: :func:`auto_recipe` (pure), :func:`probe_data` (reads a few image headers of a ``--data`` source),
:func:`recipe_for` (``"auto" | "seer" | "none"``), :func:`apply_recipe` (explicit fields win),
:func:`recipe_flags` (the overrides as command-line flags, for the log).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, fields, replace
from typing import Any, Iterable

from bigseer.errors import ConfigError, DataError

RECIPES = ("auto", "seer", "none")
SMALL_MAX_SIDE = 96   # median shorter side below which the small-image recipe applies
LARGE_MIN_SIDE = 160  # from here SEER's augmentation
PROBE_IMAGES = 32     # image headers read by probe_data
SMALL_BASE_LR = 2.4   # small images: 8x SEER's 0.3; at 0.3 the run stays at the early ln K plateau

SEER_FILE = "seer_rg256"  # bigseer/recipes/seer_rg256.yaml: the one owner of SEER RG256's settings
# the keys of SEER's recipe that are augmentation (the `auto` recipe's large-image tier uses these)
SEER_AUGMENT_KEYS = ("crops", "flip_p", "jitter_strength", "grayscale_p", "blur_p", "crop_ratio", "zero_init_last")


def seer_settings() -> dict[str, Any]:
    """SEER RG256's settings (flat PretrainConfig fields) from its recipe file."""
    from bigseer.config_files import load_config_file

    return load_config_file(SEER_FILE)


def seer_augment() -> dict[str, Any]:
    """The augmentation part of :func:`seer_settings`."""
    settings = seer_settings()
    return {k: settings[k] for k in SEER_AUGMENT_KEYS}


@dataclass(frozen=True)
class Recipe:
    """``overrides``: PretrainConfig field -> value; ``description``: one line for the log."""

    name: str
    overrides: dict[str, Any]
    description: str


@dataclass(frozen=True)
class DataProbe:
    """What :func:`probe_data` measured: item count and the shorter sides of the sampled images."""

    n_images: int
    sides: tuple[int, ...]

    @property
    def median_side(self) -> float:
        return float(statistics.median(self.sides))


def _round16(x: float) -> int:
    return int(16 * round(x / 16))


def crop_size(median_side: float) -> int:
    """Training crop side for images whose median shorter side is ``median_side``: multiple of 16 in [32, 224]."""
    return min(224, max(32, _round16(median_side)))


def num_prototypes(n_images: int) -> int:
    """K = n_images / 16 rounded to a multiple of 16, clamped to [32, 16384]."""
    return min(16384, max(32, _round16(n_images / 16)))


def _check(median_side: float, n_images: int) -> None:
    if isinstance(median_side, bool) or not isinstance(median_side, (int, float)) or not median_side > 0 \
            or math.isinf(median_side):
        raise ConfigError(f"auto recipe: median_side={median_side!r} must be a positive number of pixels")
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise ConfigError(f"auto recipe: n_images={n_images!r} must be an integer >= 1")


def auto_recipe(median_side: float, n_images: int) -> Recipe:
    """The ``auto`` recipe for images of median shorter side ``median_side`` px, ``n_images`` of them (pure)."""
    _check(median_side, n_images)
    size = crop_size(median_side)
    k = num_prototypes(n_images)
    head = {"head_dims": (256,), "embed_dim": 64} if n_images < 100_000 else {"head_dims": (2048,), "embed_dim": 128}
    if median_side < SMALL_MAX_SIDE:
        tier = "small"
        aug = {"crops": f"2x{size}@0.7-1", "flip_p": 0.0, "jitter_strength": 0.4, "grayscale_p": 0.0, "blur_p": 0.0,
               "crop_ratio": (1.0, 1.0), "zero_init_last": False, "base_lr": SMALL_BASE_LR}
    elif median_side < LARGE_MIN_SIDE:
        tier = "medium"
        aug = {"crops": f"2x{size}@0.3-1+4x{_round16(size / 2)}@0.1-0.3", "flip_p": 0.5, "jitter_strength": 0.8,
               "grayscale_p": 0.2, "blur_p": 0.2, "crop_ratio": (3 / 4, 4 / 3), "zero_init_last": False}
    else:
        tier = "large"
        aug = seer_augment()
    overrides = {**aug, **head, "num_prototypes": k}
    desc = (f"recipe auto ({tier} images: median side {median_side:g} px, {n_images} images): "
            f"{recipe_flags(overrides)}")
    return Recipe("auto", overrides, desc)


def seer_recipe() -> Recipe:
    """SEER RG256's full recipe (``--seer``): augmentation, head, prototypes, optimisation and model."""
    overrides = seer_settings()
    return Recipe("seer", overrides, f"recipe seer (SEER RG256 paper settings): {recipe_flags(overrides)}")


def recipe_for(name: str, data: str | None = None, probe: DataProbe | None = None) -> Recipe:
    """``auto`` (probes ``data`` unless ``probe`` is given), ``seer``, or ``none`` (no overrides)."""
    if name not in RECIPES:
        raise ConfigError(f"recipe={name!r} is unknown; choose one of {', '.join(RECIPES)}")
    if name == "none":
        return Recipe("none", {}, "recipe none: PretrainConfig defaults and explicit flags only")
    if name == "seer":
        return seer_recipe()
    if probe is None:
        if data is None:
            raise ConfigError("recipe auto needs the data (--data) to measure image sizes")
        probe = probe_data(data)
    return auto_recipe(probe.median_side, probe.n_images)


def apply_recipe(cfg: Any, recipe: Recipe, explicit: Iterable[str] = ()) -> Any:
    """``cfg`` (a PretrainConfig) with the recipe's overrides, except fields named in ``explicit``."""
    known = {f.name for f in fields(cfg)}
    unknown = sorted(set(recipe.overrides) - known)
    if unknown:
        raise ConfigError(f"recipe {recipe.name}: unknown PretrainConfig field(s) {unknown}")
    keep = set(explicit)
    return replace(cfg, **{k: v for k, v in recipe.overrides.items() if k not in keep})


def _flag(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no_{name}"
    if isinstance(value, tuple):
        return f"--{name} " + ",".join(f"{v:.4g}" for v in value)
    return f"--{name} {value:g}" if isinstance(value, float) else f"--{name} {value}"


def recipe_flags(overrides: dict[str, Any]) -> str:
    """The overrides as ``bigseer pretrain`` flags (booleans as ``--x`` / ``--no_x``), in a stable order."""
    return " ".join(_flag(k, v) for k, v in overrides.items())


class _HeaderOnly(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised from the crop plan once the image size is known, so nothing is decoded."""


def _side_of(catalog: Any, i: int) -> int | None:
    """Shorter (EXIF-oriented) side of item ``i`` from its header, or None when it is not a usable image."""
    seen: list[int] = []

    def plan(width: int, height: int) -> list:
        seen.append(min(width, height))
        raise _HeaderOnly

    try:
        catalog.load(i, plan)
    except Exception:  # _HeaderOnly (also if re-raised as another type), or a skipped (corrupt, tiny) item
        pass
    return seen[0] if seen else None


def _header_side(path: str) -> int | None:
    """Shorter side from the file's header (PIL opens lazily; rotation does not change the shorter side)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return min(img.size) if min(img.size) > 0 else None
    except Exception:  # not an image / unreadable: not counted
        return None


def _even_picks(n: int, m: int) -> list[int]:
    m = min(n, m)
    return sorted({int(round(j * (n - 1) / max(m - 1, 1))) for j in range(m)})


def probe_data(spec: str, max_images: int = PROBE_IMAGES) -> DataProbe:
    """Count the items of ``--data`` ``spec`` and measure the shorter side of up to ``max_images`` evenly spaced
    ones. A folder is probed from image headers only; other sources (tar shards, lists, builtin) through
    ``open_source(spec).load`` with a crop plan that stops once the size is known. DataError when none of the
    sampled items is a readable image."""
    import os

    from bigseer.data import open_source

    catalog = open_source(spec)
    n = len(catalog)
    if os.path.isdir(spec):
        from bigseer.data.files import walk_files

        files = walk_files(spec)
        sides = tuple(s for s in (_header_side(files[i]) for i in _even_picks(len(files), max_images))
                      if s is not None)
    else:
        sides = tuple(s for s in (_side_of(catalog, i) for i in _even_picks(n, max_images)) if s is not None)
    if not sides:
        raise DataError(f"recipe auto: none of {min(n, max_images)} sampled items of {spec!r} is a readable image")
    return DataProbe(n, sides)
