"""A tiny generated labeled ImageFolder (colour-coded classes with noise) for demos and tests."""

from __future__ import annotations

import numpy as np

from bigseer.downstream.labeled_data import write_image_folder

_PALETTE = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (200, 40, 200), (40, 200, 200)]


def write_colour_folder(root: str, num_classes: int = 3, train_per_class: int = 10, val_per_class: int = 4,
                        size: int = 32, seed: int = 0) -> str:
    """Write ``root/train/class_k/*.png`` and ``root/val/class_k/*.png``; class k is a noisy colour. Returns root."""
    rng = np.random.default_rng(seed)
    names = [f"class_{k}" for k in range(num_classes)]
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        images, labels = [], []
        for k in range(num_classes):
            base = np.array(_PALETTE[k % len(_PALETTE)]) * (1 - 0.3 * (k // len(_PALETTE)))
            for _ in range(n):
                img = base + rng.integers(-40, 40, (size, size, 3))
                images.append(np.clip(img, 0, 255).astype(np.uint8))
                labels.append(k)
        write_image_folder(root, split, images, labels, names)
    return root
