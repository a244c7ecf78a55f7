"""Train Mask R-CNN on a RegNetY trunk for a few steps on a small generated COCO-format dataset (CPU).

    .venv/bin/python examples/maskrcnn.py --steps 4                     # random regnety_test trunk
    .venv/bin/python examples/maskrcnn.py --weights EXPORT_DIR --steps 4   # from `bigseer export` output

The dataset (images with filled rectangles and triangles, polygon segmentations, a COCO
``annotations.json``) is written to --data (a temporary directory by default) and read back through
the COCO fields a real dataset would use.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import bigseer.downstream
from bigseer.models import build_regnet

CATEGORIES = [{"id": 1, "name": "rectangle"}, {"id": 2, "name": "triangle"}]


def make_coco(root: Path, n_images: int, size: int, seed: int = 0) -> Path:
    """Write ``n_images`` PNGs with 1-3 shapes each and their COCO annotations; returns the json path."""
    rng = random.Random(seed)
    images, annotations = [], []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for image_id in range(1, n_images + 1):
        img = Image.new("RGB", (size, size), tuple(rng.randrange(60) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(1, 3)):
            x0, y0 = rng.randrange(size - 40), rng.randrange(size - 40)
            w, h = rng.randrange(20, 40), rng.randrange(20, 40)
            cat = rng.choice(CATEGORIES)["id"]
            poly = ([x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h] if cat == 1
                    else [x0, y0 + h, x0 + w // 2, y0, x0 + w, y0 + h])
            draw.polygon(poly, fill=tuple(rng.randrange(120, 256) for _ in range(3)))
            xs, ys = poly[0::2], poly[1::2]
            bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                "segmentation": [poly], "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
        name = f"{image_id:06d}.png"
        img.save(root / "images" / name)
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


class CocoDetection(torch.utils.data.Dataset):
    """Minimal COCO reader: image tensor in [0, 1] and a torchvision target (boxes xyxy, labels, masks)."""

    def __init__(self, annotations: Path) -> None:
        coco = json.loads(annotations.read_text())
        self.root = annotations.parent / "images"
        self.images = coco["images"]
        self.anns: dict[int, list[dict]] = {}
        for a in coco["annotations"]:
            self.anns.setdefault(a["image_id"], []).append(a)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        info = self.images[i]
        img = Image.open(self.root / info["file_name"]).convert("RGB")
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3)
        boxes, labels, masks = [], [], []
        for a in self.anns.get(info["id"], []):
            x0, y0, w, h = a["bbox"]
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(a["category_id"])
            m = Image.new("L", (info["width"], info["height"]), 0)
            for poly in a["segmentation"]:
                ImageDraw.Draw(m).polygon(poly, fill=1)
            masks.append(torch.frombuffer(bytearray(m.tobytes()), dtype=torch.uint8).view(m.height, m.width))
        target = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                  "masks": torch.stack(masks)}
        return x.permute(2, 0, 1).float() / 255, target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="bigseer export / checkpoint / weights (default: random)")
    parser.add_argument("--model", default="regnety_test", help="preset for the random trunk")
    parser.add_argument("--data", default=None, help="where to write the generated dataset (default: temp dir)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.002)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_coco(Path(args.data or tmp), args.images, args.size)
        dataset = CocoDetection(data)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                             collate_fn=lambda b: tuple(zip(*b)))
        weights = args.weights if args.weights else build_regnet(args.model)
        model = bigseer.downstream.maskrcnn(weights, num_classes=len(CATEGORIES) + 1, trainable_stages=3,
                                            min_size=args.size, max_size=args.size,
                                            # small-image settings: fewer proposals and sampled RoIs
                                            rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150,
                                            rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=50,
                                            box_batch_size_per_image=64, box_detections_per_img=20)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
        step = 0
        while step < args.steps:
            for images, targets in loader:
                t0 = time.perf_counter()
                losses = model(list(images), list(targets))
                loss = sum(losses.values())
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                opt.step()
                step += 1
                parts = " ".join(f"{k}={v.item():.3f}" for k, v in losses.items())
                print(f"step {step}: loss={loss.item():.3f} ({parts}) {time.perf_counter() - t0:.2f}s", flush=True)
                if step >= args.steps:
                    break
        model.eval()
        with torch.no_grad():
            det = model([dataset[0][0]])[0]
        print(f"eval: {len(det['boxes'])} detections, masks {tuple(det['masks'].shape)}")


if __name__ == "__main__":
    main()
