"""Pure key maps between bigseer's (timm) RegNetY trunk keys and other libraries' layouts.

Trunk keys in bigseer are timm's (``stem.conv.weight``, ``s2.b3.conv2.bn.running_mean``, ...). Each
layout maps the stem, the block prefix (stage S = 1..4, block i = 1..d) and the block-local module
names; the leaf (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``) is
unchanged. Key facts from /work/shared/REFERENCE.md section 2 (and timm ``regnet.py`` ``_filter_fn``,
detectron2 ``modeling/backbone/regnet.py``, transformers ``modeling_regnet.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from bigseer.errors import CheckpointError, ConfigError

# Layouts that `bigseer export` writes; "vissl" is read-only (convert / load_pretrained).
EXPORT_LAYOUTS = ("timm", "torchvision", "hf", "detectron2")
ALL_LAYOUTS = EXPORT_LAYOUTS + ("vissl",)

_TIMM_BLOCK = re.compile(r"^s([1-4])\.b(\d+)\.(.+)$")
_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class Layout:
    """How one library names a RegNetY trunk's tensors."""

    name: str
    stem: dict[str, str]  # timm stem module -> layout module
    block_prefix: Callable[[int, int], str]  # (stage 1..4, block 1..d) -> prefix
    block_pattern: re.Pattern[str]  # matches a layout block key; groups (stage, block, rest)
    block_index_base: int  # the layout's number for block 1
    modules: dict[str, str]  # timm block-local module -> layout module
    stage_index_base: int = 1  # the layout's number for stage 1 (res2)
    normalize: Callable[[str], str] | None = None  # layout module name -> its plain form (read side only)

    def from_timm(self, key: str) -> str:
        """timm key -> this layout's key (CheckpointError for a key outside the trunk)."""
        module, leaf = _split_leaf(key, "timm")
        if module in self.stem:
            return f"{self.stem[module]}.{leaf}"
        m = _TIMM_BLOCK.match(module)
        if m and m.group(3) in self.modules:
            return f"{self.block_prefix(int(m.group(1)), int(m.group(2)))}.{self.modules[m.group(3)]}.{leaf}"
        raise CheckpointError(f"key {key!r} is not a RegNetY trunk key in timm layout")

    def to_timm(self, key: str) -> str:
        """This layout's key -> timm key (CheckpointError naming the key if it is not a trunk key)."""
        module, leaf = _split_leaf(key, self.name)
        if self.normalize is not None:
            module = self.normalize(module)
        for timm_mod, mod in self.stem.items():
            if module == mod:
                return f"{timm_mod}.{leaf}"
        m = self.block_pattern.match(module)
        if m:
            rest = m.group(3)
            for timm_mod, mod in self.modules.items():
                if rest == mod:
                    block = int(m.group(2)) - self.block_index_base + 1
                    stage = int(m.group(1)) - self.stage_index_base + 1
                    return f"s{stage}.b{block}.{timm_mod}.{leaf}"
        raise CheckpointError(f"key {key!r} is not a RegNetY trunk key in {self.name} layout")


def _split_leaf(key: str, layout: str) -> tuple[str, str]:
    module, _, leaf = key.rpartition(".")
    if not module or leaf not in _LEAVES:
        raise CheckpointError(f"key {key!r} is not a RegNetY trunk key in {layout} layout")
    return module, leaf


_TIMM_MODULES = ("conv1.conv", "conv1.bn", "conv2.conv", "conv2.bn", "se.fc1", "se.fc2", "conv3.conv",
                 "conv3.bn", "downsample.conv", "downsample.bn")


def _modules(*names: str) -> dict[str, str]:
    return dict(zip(_TIMM_MODULES, names))


# SEER-10B (VISSL ``regnet_fsdp`` / ``regnet_v2``) nests each stage's blocks in FSDP groups with
# stage-global block indices: ``_feature_blocks.res4.block3-part1.block3-9.f.a.0`` is the plain
# ``_feature_blocks.res4.block3-9.f.a.0``. Renaming only: the parts hold whole blocks.
_VISSL_PART = re.compile(r"^_feature_blocks\.res(\d)\.block(\d)-part\d+\.(block(\d)-\d+\..+)$")
_VISSL_BLOCK = re.compile(r"^_feature_blocks\.res(\d)\.block(\d)-\d+\.")


def _vissl_plain(module: str) -> str:
    """Strip the 10B ``blockS-partK.`` level; CheckpointError when the res / stage numbers disagree
    (``res{S+1}.block{S}-...``), so a mislabelled block never lands in another stage."""
    m = _VISSL_PART.match(module)
    if m:
        if m.group(2) != m.group(4):
            raise CheckpointError(f"VISSL key {module!r}: part of stage {m.group(2)} holds a block of stage "
                                  f"{m.group(4)}")
        module = f"_feature_blocks.res{m.group(1)}.{m.group(3)}"
    b = _VISSL_BLOCK.match(module)
    if b and int(b.group(1)) != int(b.group(2)) + 1:
        raise CheckpointError(f"VISSL key {module!r}: res{b.group(1)} must hold block{int(b.group(1)) - 1}-* "
                              f"(stage S is res(S+1))")
    return module


LAYOUTS: dict[str, Layout] = {
    "timm": Layout(
        "timm", {"stem.conv": "stem.conv", "stem.bn": "stem.bn"},
        lambda s, i: f"s{s}.b{i}", re.compile(r"^s([1-4])\.b(\d+)\.(.+)$"), 1, _modules(*_TIMM_MODULES)),
    "torchvision": Layout(
        "torchvision", {"stem.conv": "stem.0", "stem.bn": "stem.1"},
        lambda s, i: f"trunk_output.block{s}.block{s}-{i - 1}",
        re.compile(r"^trunk_output\.block([1-4])\.block\1-(\d+)\.(.+)$"), 0,
        _modules("f.a.0", "f.a.1", "f.b.0", "f.b.1", "f.se.fc1", "f.se.fc2", "f.c.0", "f.c.1", "proj.0",
                 "proj.1")),
    "hf": Layout(
        "hf", {"stem.conv": "embedder.embedder.convolution", "stem.bn": "embedder.embedder.normalization"},
        lambda s, i: f"encoder.stages.{s - 1}.layers.{i - 1}",
        re.compile(r"^encoder\.stages\.([0-3])\.layers\.(\d+)\.(.+)$"), 0,
        _modules("layer.0.convolution", "layer.0.normalization", "layer.1.convolution",
                 "layer.1.normalization", "layer.2.attention.0", "layer.2.attention.2",
                 "layer.3.convolution", "layer.3.normalization", "shortcut.convolution",
                 "shortcut.normalization"), stage_index_base=0),
    # pycls naming, as detectron2's RegNet backbone (and pycls .pyth files) use it.
    "detectron2": Layout(
        "detectron2", {"stem.conv": "stem.conv", "stem.bn": "stem.bn"},
        lambda s, i: f"s{s}.b{i}", re.compile(r"^s([1-4])\.b(\d+)\.(.+)$"), 1,
        _modules("f.a", "f.a_bn", "f.b", "f.b_bn", "f.se.f_ex.0", "f.se.f_ex.2", "f.c", "f.c_bn", "proj",
                 "bn")),
    # ClassyVision / VISSL SEER model zoo trunk (inside classy_state_dict.base_model.model.trunk).
    "vissl": Layout(
        "vissl", {"stem.conv": "_feature_blocks.conv1.stem.0", "stem.bn": "_feature_blocks.conv1.stem.1"},
        lambda s, i: f"_feature_blocks.res{s + 1}.block{s}-{i - 1}",
        re.compile(r"^_feature_blocks\.res\d\.block([1-4])-(\d+)\.(.+)$"), 0,
        _modules("f.a.0", "f.a.1", "f.b.0", "f.b.1", "f.se.excitation.0", "f.se.excitation.2", "f.c",
                 "f.final_bn", "proj", "bn"), normalize=_vissl_plain),
}

def get_layout(name: str, *, export: bool = False) -> Layout:
    """The layout called ``name``; ConfigError listing the choices otherwise."""
    choices = EXPORT_LAYOUTS if export else ALL_LAYOUTS
    if name not in choices:
        raise ConfigError(f"unknown layout {name!r}; choose one of: {', '.join(choices)}")
    return LAYOUTS[name]


def to_timm_key(key: str, layout: str) -> str:
    """Any layout's trunk key -> timm key."""
    return get_layout(layout).to_timm(key)


def from_timm_key(key: str, layout: str) -> str:
    """timm trunk key -> ``layout``'s key."""
    return get_layout(layout).from_timm(key)


# Unique marker keys used to recognise a layout from a state dict.
_MARKERS = {
    "vissl": "_feature_blocks.conv1.stem.0.weight",
    "hf": "embedder.embedder.convolution.weight",
    "torchvision": "stem.0.weight",
    "detectron2": "s1.b1.f.a.weight",
    "timm": "s1.b1.conv1.conv.weight",
}


def detect_layout(keys: list[str]) -> str | None:
    """The layout whose marker key is present, or None."""
    present = set(keys)
    for name, marker in _MARKERS.items():
        if marker in present:
            return name
    return None
