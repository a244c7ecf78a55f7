"""RegNetY trunks (Radosavovic et al. 2020) at every SEER scale, in timm's state-dict layout.

Plain single-device PyTorch: no parallelism here. Keys equal timm's ``RegNet`` with
``num_classes=0`` (``stem.conv``, ``s1.b1.conv1.conv``, ``s1.b1.se.fc1``, ``s1.b1.downsample.conv``,
...), so an exported trunk loads into timm unchanged.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, cast

import torch
from torch import nn

from bigseer.errors import ConfigError
from bigseer.models.init import RowsOf, default_seed, fill_, init_param_, normal, whole

STAGE_NAMES = ("res2", "res3", "res4", "res5")


@dataclass(frozen=True)
class RegNetParams:
    """The RegNet design-space parameters (pycls / timm naming in comments)."""

    depth: int  # d: total number of blocks
    w0: float  # initial width
    wa: float  # width slope
    wm: float  # width multiplier (quantisation base)
    group_width: int  # g: channels per group in the 3x3 conv
    se_ratio: float = 0.25  # SE width as a fraction of the block's input width
    bottleneck_ratio: float = 1.0
    stem_width: int = 32

    def __post_init__(self) -> None:
        for f in fields(self):  # type check first, so the value checks below never raise TypeError
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ConfigError(f"RegNetParams.{f.name}={value!r} is invalid: must be a finite number")
        checks = [
            ("depth", isinstance(self.depth, int) and self.depth >= 4, "an integer >= 4"),
            ("w0", self.w0 > 0 and float(self.w0) % 8 == 0, "a positive multiple of 8"),
            ("wa", self.wa > 0, "> 0"),
            ("wm", self.wm > 1, "> 1"),
            ("group_width", isinstance(self.group_width, int) and self.group_width > 0, "a positive integer"),
            ("se_ratio", 0 <= self.se_ratio < 1, "in [0, 1)"),
            ("bottleneck_ratio", self.bottleneck_ratio > 0, "> 0"),
            ("stem_width", isinstance(self.stem_width, int) and self.stem_width > 0, "a positive integer"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"RegNetParams.{name}={getattr(self, name)!r} is invalid: must be {allowed}")
        widths, depths, _ = _stage_plan(self)
        if len(widths) != 4:
            raise ConfigError(
                f"RegNetParams {asdict(self)} generate {len(widths)} stages (widths {widths}); "
                "bigseer needs exactly 4 (res2..res5): adjust depth, wa or wm"
            )

    def stages(self) -> tuple[list[int], list[int], list[int]]:
        """Per-stage (widths, depths, group widths) after group-width compatibility rounding."""
        return _stage_plan(self)


def block_widths(p: RegNetParams) -> list[int]:
    """Per-block widths: ``u_j = w0 + wa*j``, quantised to ``w0 * wm^k``, rounded to a multiple of 8."""
    widths = []
    for j in range(p.depth):
        u = p.w0 + p.wa * j
        k = round(math.log(u / p.w0) / math.log(p.wm))
        widths.append(int(round(p.w0 * p.wm**k / 8) * 8))
    return widths


def _stage_plan(p: RegNetParams) -> tuple[list[int], list[int], list[int]]:
    widths = block_widths(p)
    stage_widths: list[int] = []
    stage_depths: list[int] = []
    for w in widths:
        if stage_widths and stage_widths[-1] == w:
            stage_depths[-1] += 1
        else:
            stage_widths.append(w)
            stage_depths.append(1)
    out_widths, groups = [], []
    for w in stage_widths:
        w_bot = int(w * p.bottleneck_ratio)
        g = min(p.group_width, w_bot)
        w_bot = int(round(w_bot / g) * g)
        out_widths.append(int(w_bot / p.bottleneck_ratio))
        groups.append(g)
    return out_widths, stage_depths, groups


# Presets. Large ones are SEER's (and timm's regnety_080 ... regnety_2560); small ones for demos/tests.
PRESETS: dict[str, RegNetParams] = {
    "regnety_test": RegNetParams(depth=4, w0=8, wa=10.0, wm=1.8, group_width=8, stem_width=8),
    "regnety_tiny": RegNetParams(depth=6, w0=16, wa=16.0, wm=1.8, group_width=8, stem_width=16),
    "regnety_200mf": RegNetParams(depth=13, w0=24, wa=36.44, wm=2.49, group_width=8),
    "regnety_400mf": RegNetParams(depth=16, w0=48, wa=27.89, wm=2.09, group_width=8),
    "regnety_800mf": RegNetParams(depth=14, w0=56, wa=38.84, wm=2.4, group_width=16),
    "regnety_1600mf": RegNetParams(depth=27, w0=48, wa=20.71, wm=2.65, group_width=24),
    "regnety_3200mf": RegNetParams(depth=21, w0=80, wa=42.63, wm=2.66, group_width=24),
    "regnety_8gf": RegNetParams(depth=17, w0=192, wa=76.82, wm=2.19, group_width=56),
    "regnety_16gf": RegNetParams(depth=18, w0=200, wa=106.23, wm=2.48, group_width=112),
    "regnety_32gf": RegNetParams(depth=20, w0=232, wa=115.89, wm=2.53, group_width=232),
    "regnety_64gf": RegNetParams(depth=20, w0=352, wa=147.48, wm=2.4, group_width=328),
    "regnety_128gf": RegNetParams(depth=27, w0=456, wa=160.83, wm=2.52, group_width=264),
    "regnety_256gf": RegNetParams(depth=27, w0=640, wa=230.83, wm=2.53, group_width=373),
    "seer_10b": RegNetParams(depth=27, w0=1744, wa=620.83, wm=2.52, group_width=1010),
}

# The timm model name with the same config (used for interop and tests).
TIMM_NAMES: dict[str, str] = {
    "regnety_200mf": "regnety_002",
    "regnety_400mf": "regnety_004",
    "regnety_800mf": "regnety_008",
    "regnety_1600mf": "regnety_016",
    "regnety_3200mf": "regnety_032",
    "regnety_8gf": "regnety_080",
    "regnety_16gf": "regnety_160",
    "regnety_32gf": "regnety_320",
    "regnety_64gf": "regnety_640",
    "regnety_128gf": "regnety_1280",
    "regnety_256gf": "regnety_2560",
}


def resolve_params(name_or_params: str | RegNetParams | dict[str, Any]) -> RegNetParams:
    """A preset name, a ``RegNetParams`` or a dict of its fields -> ``RegNetParams``."""
    if isinstance(name_or_params, RegNetParams):
        return name_or_params
    if isinstance(name_or_params, dict):
        known = {f.name for f in fields(RegNetParams)}
        unknown = sorted(set(name_or_params) - known)
        if unknown:
            raise ConfigError(f"unknown RegNetParams field(s) {unknown}; allowed: {sorted(known)}")
        required = {f.name for f in fields(RegNetParams) if f.default is MISSING}
        missing = sorted(required - set(name_or_params))
        if missing:
            raise ConfigError(f"missing RegNetParams field(s) {missing}; required: {sorted(required)}")
        return RegNetParams(**name_or_params)
    if isinstance(name_or_params, str) and name_or_params in PRESETS:
        return PRESETS[name_or_params]
    raise ConfigError(f"unknown RegNetY preset {name_or_params!r}; choose one of: {', '.join(PRESETS)}")


class ConvBN(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + optional ReLU; keys ``conv.*`` and ``bn.*`` as in timm."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True,
                 device: Any = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False, device=device)
        self.bn = nn.BatchNorm2d(cout, device=device)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """SE: global average pool, 1x1 conv (bias) to ``rd`` channels, ReLU, 1x1 conv back, sigmoid gate."""

    def __init__(self, channels: int, rd: int, device: Any = None) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd, 1, bias=True, device=device)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd, channels, 1, bias=True, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.fc2(self.act(self.fc1(s))).sigmoid()


class Bottleneck(nn.Module):
    """RegNetY block: 1x1 -> grouped 3x3 (stride) -> SE -> 1x1, projection shortcut, ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int, bottleneck_ratio: float,
                 se_ratio: float, device: Any = None) -> None:
        super().__init__()
        mid = int(round(cout * bottleneck_ratio))
        self.conv1 = ConvBN(cin, mid, 1, device=device)
        self.conv2 = ConvBN(mid, mid, 3, stride, groups=mid // group_width, device=device)
        self.se = SqueezeExcite(mid, int(round(cin * se_ratio)), device=device) if se_ratio else nn.Identity()
        self.conv3 = ConvBN(mid, cout, 1, act=False, device=device)
        self.downsample = (ConvBN(cin, cout, 1, stride, act=False, device=device)
                           if cin != cout or stride != 1 else nn.Identity())
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.conv3(self.se(self.conv2(self.conv1(x))))
        return self.act3(x + shortcut)


class RegStage(nn.Sequential):
    """One stage: blocks ``b1..bd``; the first block has stride 2."""

    def __init__(self, cin: int, cout: int, depth: int, group_width: int, p: RegNetParams,
                 device: Any = None) -> None:
        super().__init__()
        for i in range(depth):
            block = Bottleneck(cin if i == 0 else cout, cout, 2 if i == 0 else 1, group_width,
                               p.bottleneck_ratio, p.se_ratio, device=device)
            self.add_module(f"b{i + 1}", block)


class RegNet(nn.Module):
    """RegNetY trunk without classifier.

    ``forward(x)`` returns pooled features ``[N, num_features]``; ``forward_features(x)`` returns the
    stage maps ``{"res2", "res3", "res4", "res5"}`` at strides 4/8/16/32.
    """

    s1: RegStage  # the stages, registered by add_module (declared for the type checker)
    s2: RegStage
    s3: RegStage
    s4: RegStage

    def __init__(self, params: RegNetParams, *, device: Any = None, zero_init_last: bool = True) -> None:
        super().__init__()
        self.params = params
        self.zero_init_last = zero_init_last
        widths, depths, groups = params.stages()
        self.stage_widths = widths
        self.stage_depths = depths
        self.stage_group_widths = groups
        self.num_features = widths[-1]
        self.memory_format = torch.contiguous_format  # channels_last: inputs converted (weights by the caller)
        self.stem = ConvBN(3, params.stem_width, 3, stride=2, device=device)
        cin = params.stem_width
        for i, (w, d, g) in enumerate(zip(widths, depths, groups)):
            self.add_module(f"s{i + 1}", RegStage(cin, w, d, g, params, device=device))
            cin = w
        if device is None or torch.device(device).type != "meta":
            self.init_weights()

    def stages(self) -> list[RegStage]:
        """The four stages in order (``s1``..``s4`` = res2..res5)."""
        return [self.s1, self.s2, self.s3, self.s4]

    def blocks(self) -> list[Bottleneck]:
        """All blocks in forward order (the units for sharding and activation checkpointing)."""
        return [cast(Bottleneck, b) for s in self.stages() for b in s]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x.contiguous(memory_format=self.memory_format))
        out = {}
        for name, stage in zip(STAGE_NAMES, self.stages()):
            x = stage(x)
            out[name] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x.contiguous(memory_format=self.memory_format))
        for stage in self.stages():
            x = stage(x)
        return x.mean((2, 3))

    @torch.no_grad()
    def init_weights(self, device: Any = None, *, seed: int | None = None, rows_of: RowsOf = whole) -> "RegNet":
        """Materialise (if on meta) and initialise: kaiming-normal fan-out convs, BN (1, 0), fresh running
        stats, zero gamma on each block's last BN when ``zero_init_last``. Values are a function of
        ``(seed, parameter name, row)`` (:mod:`bigseer.models.init`): ``rows_of`` lets a caller holding only
        some rows of each tensor (an FSDP shard) fill exactly those. ``seed`` defaults to a draw from torch's
        default generator. Returns self."""
        if device is not None or any(t.is_meta for t in self.parameters()):
            self.to_empty(device=device if device is not None else "cpu")
        seed = default_seed() if seed is None else seed
        last = {id(b.conv3.bn.weight) for b in self.blocks()} if self.zero_init_last else set()
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                init_param_(m.weight, f"{name}.weight", seed, normal(math.sqrt(2.0 / fan_out)), rows_of)
                if m.bias is not None:
                    fill_(m.bias, 0.0, rows_of)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                fill_(m.weight, 0.0 if id(m.weight) in last else 1.0, rows_of)
                fill_(m.bias, 0.0, rows_of)
                for buf, value in ((m.running_mean, 0.0), (m.running_var, 1.0), (m.num_batches_tracked, 0)):
                    if buf is not None:
                        buf.fill_(value)
        return self


def build_regnet(name_or_params: str | RegNetParams | dict[str, Any], *, device: Any = None,
                 zero_init_last: bool = True) -> RegNet:
    """Build a RegNetY trunk from a preset name (see ``PRESETS``) or ``RegNetParams``.

    ``device="meta"`` allocates nothing; call ``model.init_weights(device)`` to materialise.
    """
    return RegNet(resolve_params(name_or_params), device=device, zero_init_last=zero_init_last)


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (works on meta models)."""
    return sum(p.numel() for p in model.parameters())
