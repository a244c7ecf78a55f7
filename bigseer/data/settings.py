"""The ``data`` and ``augment`` sections of a run config (read by ``bigseer.data``). Each field is described
here, once (``bigseer.flags.doc``); the ``augment`` fields are named as in :class:`bigseer.data.AugmentConfig`,
which :meth:`AugmentConfig.of` builds from them."""

from __future__ import annotations

from dataclasses import dataclass

from bigseer.flags import doc


@dataclass
class DataSettings:
    """Section ``data`` of :class:`bigseer.config.PretrainConfig`: what to train on and how it is loaded."""

    data: str = doc("builtin", 'image folder, file list, tar shards (glob/brace), shard index (index.json), URL, or '
                               "'builtin'")
    crops: str = doc("2x64+4x32", 'multi-crop spec COUNTxSIZE[@MIN-MAX]+... (SEER: 2x224+4x96; 10B: 2x160+4x96)')
    batch_size: int | None = doc(None, "images per rank per step; default: the DeepSpeed config's micro batch, else "
                                       '32 (SEER: 16)')
    num_workers: int = doc(0, 'DataLoader worker processes per rank (0: decode in the training process)')
    decode_device: str = doc("cpu", 'where JPEGs are decoded and cropped: cpu (loader workers, simplejpeg) | cuda '
                                    "(nvjpeg and the crops on the rank's GPU, in the training process) | cpu-tensor "
                                    "(the cuda path's code on CPU: tests, debugging)")
    shard_cache: str | None = doc(None, 'node-local cache dir for remote shards (default: under the temp dir)')


@dataclass
class AugmentSettings:
    """Section ``augment`` of :class:`bigseer.config.PretrainConfig`: the SwAV/SEER augmentation's settings."""

    flip_p: float = doc(0.5, 'SwAV/SEER augmentation: horizontal flip probability')
    jitter_strength: float = doc(1.0, 'colour distortion strength s: ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with p 0.8')
    grayscale_p: float = doc(0.2, 'probability of converting a crop to grayscale')
    blur_p: float = doc(0.5, 'probability of a Gaussian blur (radius 0.1-2.0) on a crop')
    crop_ratio: tuple[float, ...] = doc((3 / 4, 4 / 3), 'RandomResizedCrop aspect-ratio range')
