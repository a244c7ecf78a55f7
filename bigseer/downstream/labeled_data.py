"""ImageFolder-style labeled data for downstream evaluation: scanning, transforms, rank sharding.

Layout: ``ROOT/train/<class>/<image>`` and ``ROOT/val/<class>/<image>``. Classes are the sorted
sub-folder names of ``train/``; ``val/`` must hold exactly the same class folders. Training images get
SwAV-style augmentation (random resized crop, flip, colour distortion, Gaussian blur); evaluation images
are resized to ``eval_resize`` and centre-cropped to ``eval_crop`` (224 of 256 in the paper).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset
from torchvision import transforms as T

from bigseer.data.files import IMAGE_EXTENSIONS, has_image_extension
from bigseer.data.multicrop import AugmentConfig
from bigseer.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LabeledSplit:
    """One split: image paths, integer targets and the class names they index."""

    paths: list[str]
    targets: list[int]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> "LabeledSplit":
        """The images at ``indices`` (same class list)."""
        return LabeledSplit([self.paths[i] for i in indices], [self.targets[i] for i in indices], self.classes)


def _class_dirs(split_dir: str) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def scan_split(root: str, split: str, classes: Sequence[str] | None = None) -> LabeledSplit:
    """Scan ``root/split/<class>/*`` (files sorted, so the order is deterministic).

    ``classes=None`` takes the sorted class folders found; otherwise the folders must be exactly
    ``classes``. Raises DataError for a missing split, a class-set mismatch or an empty class.
    """
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise DataError(f"labeled data: {split_dir!r} does not exist (expected {root}/train/<class>/ and "
                        f"{root}/val/<class>/ folders)")
    found = _class_dirs(split_dir)
    if classes is None:
        classes = found
        if not classes:
            raise DataError(f"labeled data: {split_dir!r} has no class folders")
    else:
        missing = [c for c in classes if c not in found]
        extra = [c for c in found if c not in classes]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing class folder(s) {missing}")
            if extra:
                parts.append(f"class folder(s) {extra} absent from train/")
            raise DataError(f"labeled data: {split_dir!r} does not match train/: {'; '.join(parts)}")
    paths: list[str] = []
    targets: list[int] = []
    for idx, name in enumerate(classes):
        cdir = os.path.join(split_dir, name)
        files = sorted(f for f in os.listdir(cdir) if has_image_extension(f))
        if not files:
            raise DataError(f"labeled data: class folder {cdir!r} holds no images "
                            f"({', '.join('.' + e for e in sorted(IMAGE_EXTENSIONS))})")
        paths.extend(os.path.join(cdir, f) for f in files)
        targets.extend([idx] * len(files))
    return LabeledSplit(paths, targets, list(classes))


def scan_image_folder(root: str) -> tuple[LabeledSplit, LabeledSplit]:
    """``(train, val)`` splits of an ImageFolder-style tree, validated against each other."""
    if not os.path.isdir(root):
        raise DataError(f"labeled data: {root!r} is not a directory")
    train = scan_split(root, "train")
    val = scan_split(root, "val", train.classes)
    return train, val


class _RandomGaussianBlur:
    """PIL Gaussian blur with probability ``p`` and radius uniform in ``radius`` (SwAV-style)."""

    def __init__(self, p: float, radius: tuple[float, float] = (0.1, 2.0)) -> None:
        self.p, self.radius = p, radius

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.p <= 0 or torch.rand(()).item() >= self.p:
            return img
        lo, hi = self.radius
        r = lo + (hi - lo) * torch.rand(()).item()
        # radius is given for 224 px crops; scale it with the image so tiny images are not erased
        return img.filter(ImageFilter.GaussianBlur(radius=r * min(img.size) / 224))


def train_transform(crop: int, scale: tuple[float, float] = (0.08, 1.0),
                    aug: AugmentConfig | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """SwAV-style training augmentation from the one augmentation config of bigseer (``bigseer.data.AugmentConfig``,
    the same fields pretraining uses): random resized crop, flip (``flip_p``), colour jitter (strength
    ``jitter_strength`` with probability ``jitter_p``; 0 disables), random grayscale (``grayscale_p``), Gaussian
    blur (``blur_p``), normalise (``mean`` / ``std``)."""
    aug = aug or AugmentConfig()
    ops: list[Callable] = [T.RandomResizedCrop(crop, scale=scale, ratio=aug.crop_ratio)]
    if aug.flip_p > 0:
        ops.append(T.RandomHorizontalFlip(p=aug.flip_p))
    if aug.jitter_strength > 0:
        s = aug.jitter_strength
        ops.append(T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, min(0.5, 0.2 * s))], p=aug.jitter_p))
    if aug.grayscale_p > 0:
        ops.append(T.RandomGrayscale(p=aug.grayscale_p))
    if aug.blur_p > 0:
        ops.append(_RandomGaussianBlur(aug.blur_p, aug.blur_radius))
    ops += [T.ToTensor(), T.Normalize(aug.mean, aug.std)]
    return T.Compose(ops)


def eval_transform(resize: int, crop: int) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the short side to ``resize``, centre-crop ``crop``, normalise."""
    return T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class LabeledImages(Dataset):
    """Map-style dataset over a ``LabeledSplit``: returns ``(image_tensor, target)``."""

    def __init__(self, split: LabeledSplit, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.split.paths[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except OSError as exc:
            raise DataError(f"labeled data: cannot decode {path!r}: {exc}") from exc
        return self.transform(img), self.split.targets[i]


def shard_indices(n: int, rank: int, world_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                  pad: bool = True) -> list[int]:
    """This rank's indices of ``range(n)``: an epoch-seeded permutation (when ``shuffle``) dealt round-robin.

    ``pad=True`` repeats the first indices so every rank gets ``ceil(n / world_size)`` (training: equal step
    counts under DDP); ``pad=False`` gives disjoint shards that cover each index once (evaluation).
    """
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    if pad and n % world_size:
        total = -(-n // world_size) * world_size
        while len(order) < total:
            order = order + order[: total - len(order)]
    return order[rank::world_size]


def batch_ranges(n: int, batch_size: int) -> list[list[int]]:
    """Consecutive batches of ``range(n)``; a final batch of one is merged into the previous batch, since
    BatchNorm cannot train on a single sample (all data is still used)."""
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2].extend(batches.pop())
    return batches


def write_image_folder(root: str, split: str, images: Sequence, labels: Sequence[int],
                       class_names: Sequence[str]) -> list[str]:
    """Write ``images`` (uint8 arrays ``[H, W]`` or ``[H, W, 3]``) as PNGs under ``root/split/<class>/``.

    Used to turn in-memory datasets (e.g. scikit-learn's digits) into an ImageFolder tree. Returns the paths.
    """
    paths = []
    for name in class_names:
        os.makedirs(os.path.join(root, split, name), exist_ok=True)
    for i, (img, y) in enumerate(zip(images, labels)):
        path = os.path.join(root, split, class_names[int(y)], f"{i:06d}.png")
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths
