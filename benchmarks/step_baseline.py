"""The baseline of ``benchmarks/bench_step.py``: the SwAV step a user writes from timm + lightly + torch DDP +
torchvision instead of bigseer (lightly's SwAV example, on DDP). Its own code on purpose: none of bigseer's
training pieces (only ``bigseer.models.TIMM_NAMES`` for the timm twin of the preset, and ``parse_crops`` for the
crop spec both variants are given).

Per step: normalise prototypes, one model call per crop (``grouped``: one per resolution), ``SwaVLoss(high, low)``,
backward, LARS step, zero_grad, ``loss.item()``; phase times keyed by ``PHASES``.
"""

from __future__ import annotations

import argparse
import time

# per-step phases both bench_step variants report, in order
PHASES = ("data", "forward", "backward", "optimizer", "other")


def baseline_transforms(groups):
    """SwAV multi-crop as torchvision transforms.v2 (one Compose per crop; blur kernel ~10% of the crop)."""
    from bench_data import swav_v2_crop  # benchmarks/bench_data.py: the same per-crop Compose

    crops = [swav_v2_crop(g.size, g.scale) for g in groups for _ in range(g.count)]

    def multi(img):
        return [t(img) for t in crops]

    return multi


class BaselineVariant:
    """The loop a user writes from timm + lightly + torch DDP + torchvision (lightly's SwAV example, on DDP)."""

    def __init__(self, args: argparse.Namespace, rank: int, world: int, grouped: bool = False) -> None:
        import timm
        import torch
        import torch.nn.functional as F
        from lightly.loss import SwaVLoss
        from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
        from lightly.utils.lars import LARS
        from torch import nn
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DataLoader, DistributedSampler
        from torchvision import datasets

        from bigseer.data import parse_crops
        from bigseer.models import TIMM_NAMES

        class SwaV(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.backbone = timm.create_model(TIMM_NAMES[args.model], num_classes=0)
                self.projection_head = SwaVProjectionHead(self.backbone.num_features, args.hidden, args.embed)
                self.prototypes = SwaVPrototypes(args.embed, n_prototypes=args.prototypes)

            def forward(self, x):
                x = self.projection_head(self.backbone(x))
                return self.prototypes(F.normalize(x, dim=1, p=2))

        torch.manual_seed(0)
        self.groups = parse_crops(args.crops)
        self.n_high = self.groups[0].count
        self.model = DistributedDataParallel(SwaV())
        self.criterion = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05,
                                  sinkhorn_gather_distributed=True)
        lr = 0.3 * args.batch * world / 256  # the same peak LR rule as bigseer's default (base 0.3)
        self.optimizer = LARS(self.model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-5,
                              trust_coefficient=0.001)
        dataset = datasets.ImageFolder(args.imagefolder_root, transform=baseline_transforms(self.groups))
        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=0,
                                          drop_last=True)
        self.loader = DataLoader(dataset, batch_size=args.batch, sampler=self.sampler, num_workers=args.workers,
                                 drop_last=True, persistent_workers=False)
        self.workers = args.workers
        self.grouped = grouped
        self.epoch = 0
        self.it = None

    def start(self) -> None:
        if self.it is None or self.workers:
            self.it = iter(self.loader)

    def stop(self) -> None:
        if self.workers:
            self.it = None  # drops the loader iterator: its workers exit

    def _next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.epoch += 1
            self.sampler.set_epoch(self.epoch)
            self.it = iter(self.loader)
            return next(self.it)

    def step(self) -> tuple[dict[str, float], float]:
        import torch

        t0 = time.perf_counter()
        views, _ = self._next()
        t1 = time.perf_counter()
        self.model.module.prototypes.normalize()
        if self.grouped:  # one call per resolution (SwAV's reference does this; BN then sees all crops of a size)
            outputs, i = [], 0
            for g in self.groups:
                outputs += list(self.model(torch.cat(views[i:i + g.count])).chunk(g.count))
                i += g.count
        else:  # lightly's example: one call per crop
            outputs = [self.model(v) for v in views]
        loss = self.criterion(outputs[:self.n_high], outputs[self.n_high:])
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        loss_value = loss.item()
        t5 = time.perf_counter()
        # prototype normalisation is done at the start of the step, as in lightly's example; count it there:
        return dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4))), loss_value

    def close(self) -> None:
        self.it = None
