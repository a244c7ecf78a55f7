"""The downstream-evaluation run configuration, its per-mode defaults, command-line flags and validation.

Modes: ``finetune`` (whole network), ``linear`` (frozen trunk, linear classifier on pooled res4/res5),
``lowshot`` (a class-balanced ``fraction`` of the training images and labels; fine-tunes by default,
``--lowshot_protocol linear`` probes instead), ``knn`` (weighted kNN on frozen features, no training) and
``probe`` (logistic-regression probes on frozen, standardised features with k labeled images per class
and with a fraction of the labels, mean and std over several draws; ``bigseer.downstream.probe``).
Every hyperparameter left as ``None`` takes its mode default (``MODE_DEFAULTS``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from bigseer.config import RESUME
from bigseer.errors import ConfigError

MODES = ("finetune", "linear", "lowshot", "knn", "probe")
FEATURES = ("trunk", "pixels")
LAYERS = ("res4", "res5")

# SEER paper fine-tuning: SGD momentum 0.9, batch 256, lr 0.0125, weight decay 1e-4, 35 epochs with
# lr / 10 after 30, SwAV-style augmentation, 224 centre-crop evaluation (resize 256).
_FINETUNE = dict(epochs=35, batch_size=256, lr=0.0125, momentum=0.9, weight_decay=1e-4, lr_milestones=[30],
                 lr_gamma=0.1, jitter_strength=0.8, grayscale_p=0.2, blur_p=0.5)
# Linear probes follow VISSL's ImageNet linear benchmark (28 epochs, lr 0.01 at batch 256, lr / 10 at
# epochs 8, 16, 24, weight decay 5e-4) with its light augmentation (random resized crop + flip only).
_LINEAR = dict(epochs=28, batch_size=256, lr=0.01, momentum=0.9, weight_decay=5e-4, lr_milestones=[8, 16, 24],
               lr_gamma=0.1, jitter_strength=0.0, grayscale_p=0.0, blur_p=0.0)
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "finetune": _FINETUNE,
    "lowshot": _FINETUNE,
    "linear": _LINEAR,
    "knn": dict(_LINEAR, epochs=0),
    "probe": dict(_LINEAR, epochs=0),  # no SGD: batch_size is the feature-extraction batch
}
NO_SGD_MODES = ("knn", "probe")
# Fields that may differ between a run and its resumption.
RESUMABLE_CHANGES = {"epochs", "resume", "output_dir", "num_workers", "progress", "cpu", "weights", "data",
                     "channels_last", "compile"}


@dataclass
class EvalConfig:
    """One downstream evaluation run. ``None`` hyperparameters take ``MODE_DEFAULTS[mode]``."""

    mode: str = "finetune"
    data: str = ""
    weights: str | None = None  # bigseer export / checkpoint dir / timm-layout safetensors; None = random init
    model: str | None = None  # RegNetY preset; required without weights
    output_dir: str | None = None
    resume: str = "no"  # as in pretraining (bigseer.config.RESUME): no | latest | auto
    # optimisation (global batch over all processes)
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    lr_milestones: list[int] | None = None
    lr_gamma: float | None = None
    # features / protocol
    layer: str = "res5"  # linear, knn, lowshot-linear
    head_bn: bool = True  # non-affine BatchNorm before the linear classifier
    fraction: float | None = None  # lowshot (and optionally knn): 0.01 / 0.1
    lowshot_protocol: str = "finetune"  # finetune | linear
    knn_k: int = 20
    knn_temperature: float = 0.07
    # probe: k labeled images per class and fractions of the labels, several draws, logistic regression
    shots: list[int] = field(default_factory=lambda: [1, 2, 5, 10])
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1])
    draws: int = 5
    probe_c: float = 1.0  # inverse L2 strength of scikit-learn's LogisticRegression
    features: str = "trunk"  # trunk | pixels (the raw-pixel baseline, no weights needed)
    # augmentation / evaluation sizes
    train_crop: int = 224
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    # augmentation: the fields of bigseer.data.AugmentConfig, named as in pretraining (`augment()` builds it)
    flip_p: float = 0.5
    jitter_strength: float | None = None
    grayscale_p: float | None = None
    blur_p: float | None = None
    eval_resize: int = 256
    eval_crop: int = 224
    # bookkeeping
    num_workers: int = 0
    seed: int = 0
    cpu: bool = False
    progress: bool = True
    channels_last: str = "auto"  # auto (on for CUDA) | on | off, as in pretraining (bigseer.parallel.apply_speedups)
    compile: str = "off"  # on | off | auto (= off): torch.compile each trunk block

    def __post_init__(self) -> None:
        if isinstance(self.resume, bool):  # resume=True / False (before 0.3) = latest / no
            self.resume = "latest" if self.resume else "no"

    def resolved(self) -> "EvalConfig":
        """A copy with every ``None`` hyperparameter replaced by its mode default, validated."""
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is unknown; choose one of {', '.join(MODES)}")
        d = asdict(self)
        for k, v in MODE_DEFAULTS[self.mode].items():
            if d[k] is None:
                d[k] = list(v) if isinstance(v, list) else v
        cfg = EvalConfig(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r} is invalid: must be {allowed}")

        if self.mode not in MODES:
            raise bad("mode", f"one of {MODES}")
        if not self.data:
            raise ConfigError("data is required: a directory with train/<class>/ and val/<class>/ image folders")
        if self.weights is None and self.model is None and not (self.mode == "probe" and self.features == "pixels"):
            raise ConfigError("give --weights (a bigseer export or checkpoint) or --model PRESET (random init)")
        if self.resume not in RESUME:
            raise bad("resume", f"one of {', '.join(RESUME)}")
        if self.resume != "no" and not self.output_dir:
            raise ConfigError("resume needs output_dir (the directory holding checkpoint.pt)")
        if self.mode not in NO_SGD_MODES and (self.epochs is None or self.epochs < 1):
            raise bad("epochs", "an integer >= 1")
        if self.batch_size is None or self.batch_size < 1:
            raise bad("batch_size", "an integer >= 1")
        for name in ("lr", "weight_decay", "momentum"):
            v = getattr(self, name)
            if v is None or v < 0:
                raise bad(name, ">= 0")
        if not self.lr_gamma or self.lr_gamma <= 0:
            raise bad("lr_gamma", "> 0")
        if self.lr_milestones is None or any(m < 1 for m in self.lr_milestones) or \
                list(self.lr_milestones) != sorted(self.lr_milestones):
            raise bad("lr_milestones", "increasing epochs >= 1")
        if self.layer not in LAYERS:
            raise bad("layer", f"one of {LAYERS}")
        for name in ("channels_last", "compile"):
            if getattr(self, name) not in ("auto", "on", "off"):
                raise bad(name, "auto, on or off")
        if self.mode == "lowshot" and self.fraction is None:
            raise ConfigError("lowshot needs --fraction (e.g. 0.01 or 0.1)")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise bad("fraction", "in (0, 1]")
        if self.fraction is not None and self.mode in ("finetune", "linear", "probe"):
            raise ConfigError(f"fraction is only used by lowshot and knn, not {self.mode}"
                              + (" (probe takes --fractions)" if self.mode == "probe" else ""))
        self._validate_probe()
        if self.lowshot_protocol not in ("finetune", "linear"):
            raise bad("lowshot_protocol", "finetune or linear")
        if self.knn_k < 1:
            raise bad("knn_k", "an integer >= 1")
        if self.knn_temperature <= 0:
            raise bad("knn_temperature", "> 0")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise bad("crop_scale", "two numbers 0 < lo <= hi <= 1")
        for name in ("train_crop", "eval_crop", "eval_resize"):
            if getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        if self.eval_crop > self.eval_resize:
            raise bad("eval_crop", f"<= eval_resize ({self.eval_resize})")
        for name in ("flip_p", "grayscale_p", "blur_p"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise bad(name, "in [0, 1]")
        if self.jitter_strength is not None and self.jitter_strength < 0:
            raise bad("jitter_strength", ">= 0")
        if self.num_workers < 0:
            raise bad("num_workers", ">= 0")

    def _validate_probe(self) -> None:
        """Raise ConfigError for bad probe settings (checked in every mode: they have defaults)."""
        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r} is invalid: must be {allowed}")

        if self.features not in FEATURES:
            raise bad("features", f"one of {FEATURES}")
        if not isinstance(self.shots, (list, tuple)) or \
                any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.shots):
            raise bad("shots", "a list of integers >= 1 (labeled images per class)")
        if not isinstance(self.fractions, (list, tuple)) or \
                any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1 for f in self.fractions):
            raise bad("fractions", "a list of numbers in (0, 1]")
        if self.mode == "probe" and not (self.shots or self.fractions):
            raise ConfigError("probe needs at least one labeled budget: --shots or --fractions")
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1:
            raise bad("draws", "an integer >= 1")
        if not isinstance(self.probe_c, (int, float)) or not self.probe_c > 0 or self.probe_c == float("inf"):
            raise bad("probe_c", "a finite number > 0")

    def augment(self) -> Any:
        """The training augmentation as ``bigseer.data.AugmentConfig`` (the class pretraining uses)."""
        from bigseer.data.multicrop import AugmentConfig

        return AugmentConfig(flip_p=self.flip_p, jitter_strength=self.jitter_strength or 0.0,
                             grayscale_p=self.grayscale_p or 0.0, blur_p=self.blur_p or 0.0)

    @property
    def trains_trunk(self) -> bool:
        """Whether the trunk's weights are updated (finetune, lowshot with the finetune protocol)."""
        return self.mode == "finetune" or (self.mode == "lowshot" and self.lowshot_protocol == "finetune")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of all fields."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalConfig":
        """Inverse of ``to_dict``; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown downstream config key(s) {unknown}")
        return cls(**d)


def add_arguments(parser: argparse.ArgumentParser, with_mode: bool = True) -> None:
    """Command-line flags for ``EvalConfig`` (``bigseer eval MODE`` passes ``with_mode=False``: MODE is positional)."""
    p = parser
    if with_mode:
        p.add_argument("--mode", choices=MODES, default="finetune")
    p.add_argument("--data", required=True, help="directory with train/<class>/ and val/<class>/ images")
    p.add_argument("--weights", default=None, help="bigseer export, training checkpoint dir, or timm-layout "
                   "safetensors (with --model); omit for random init")
    p.add_argument("--model", default=None, help="RegNetY preset (required without --weights)")
    p.add_argument("--output_dir", default=None, help="checkpoint.pt (each epoch) and results.json go here")
    p.add_argument("--resume", nargs="?", const="latest", default="no", choices=RESUME,
                   help="continue from OUTPUT_DIR/checkpoint.pt: latest (fail without one; --resume alone) | auto "
                        "(start fresh without one, for schedulers that restart jobs) | no")
    g = p.add_argument_group("optimisation (default: per mode; finetune/lowshot = SEER paper, linear = VISSL)")
    g.add_argument("--epochs", type=int, default=None, help="finetune 35, linear 28")
    g.add_argument("--batch_size", type=int, default=None, help="global batch over all processes (256)")
    g.add_argument("--lr", type=float, default=None, help="finetune 0.0125, linear 0.01")
    g.add_argument("--momentum", type=float, default=None, help="0.9")
    g.add_argument("--weight_decay", type=float, default=None, help="finetune 1e-4, linear 5e-4")
    g.add_argument("--lr_milestones", type=int, nargs="*", default=None, help="finetune 30, linear 8 16 24")
    g.add_argument("--lr_gamma", type=float, default=None, help="lr factor at each milestone (0.1)")
    f = p.add_argument_group("features and protocol")
    f.add_argument("--layer", choices=LAYERS, default="res5", help="linear/knn feature stage")
    f.add_argument("--no_head_bn", dest="head_bn", action="store_false",
                   help="no BatchNorm (non-affine) before the linear classifier")
    f.add_argument("--fraction", type=float, default=None, help="lowshot: 0.01 or 0.1 of images and labels")
    f.add_argument("--lowshot_protocol", choices=("finetune", "linear"), default="finetune")
    f.add_argument("--knn_k", type=int, default=20)
    f.add_argument("--knn_temperature", type=float, default=0.07)
    f.add_argument("--shots", type=int, nargs="*", default=[1, 2, 5, 10],
                   help="probe: labeled images per class, one budget each")
    f.add_argument("--fractions", type=float, nargs="*", default=[0.01, 0.1],
                   help="probe: class-balanced fractions of the training labels, one budget each")
    f.add_argument("--draws", type=int, default=5, help="probe: subsets drawn per budget (mean and std)")
    f.add_argument("--probe_c", type=float, default=1.0, help="probe: LogisticRegression C (inverse L2)")
    f.add_argument("--features", choices=FEATURES, default="trunk",
                   help="probe: trunk features, or raw pixels (the baseline; no weights needed)")
    a = p.add_argument_group("augmentation and evaluation sizes")
    a.add_argument("--train_crop", type=int, default=224)
    a.add_argument("--crop_scale", type=float, nargs=2, default=[0.08, 1.0], metavar=("LO", "HI"))
    # the same names as `bigseer pretrain` (bigseer.data.AugmentConfig); the old names still work
    a.add_argument("--flip_p", type=float, default=0.5, help="horizontal flip probability")
    a.add_argument("--jitter_strength", "--color_jitter", dest="jitter_strength", type=float, default=None,
                   help="colour jitter strength; finetune 0.8, linear 0")
    a.add_argument("--grayscale_p", "--grayscale_prob", dest="grayscale_p", type=float, default=None,
                   help="finetune 0.2, linear 0")
    a.add_argument("--blur_p", "--blur_prob", dest="blur_p", type=float, default=None, help="finetune 0.5, linear 0")
    a.add_argument("--eval_resize", type=int, default=256)
    a.add_argument("--eval_crop", type=int, default=224)
    b = p.add_argument_group("run")
    b.add_argument("--num_workers", type=int, default=0)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--cpu", action="store_true", help="force CPU (Accelerator(cpu=True)); see the docs for the "
                   "2-process CPU launch")
    b.add_argument("--no_progress", dest="progress", action="store_false")
    b.add_argument("--channels_last", choices=("auto", "on", "off"), default="auto",
                   help="NHWC trunk (auto: on for CUDA), as in pretraining")
    b.add_argument("--compile", choices=("auto", "on", "off"), default="off",
                   help="torch.compile each trunk block (auto: off)")


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """``EvalConfig`` from parsed ``add_arguments`` flags (not yet resolved)."""
    known = {f.name for f in fields(EvalConfig)}
    return EvalConfig(**{k: v for k, v in vars(args).items() if k in known})
