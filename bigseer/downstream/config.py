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
from dataclasses import asdict, dataclass, fields
from typing import Any

from bigseer.config import RESUME
from bigseer.errors import ConfigError
from bigseer.flags import add_flags, chosen_values, doc

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
# flag groups of `bigseer eval --help`
SECTIONS: dict[str, tuple[str, ...]] = {
    "optimisation (default: per mode; finetune/lowshot = SEER paper, linear = VISSL)":
        ("epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_milestones", "lr_gamma"),
    "features and protocol": ("layer", "head_bn", "fraction", "lowshot_protocol", "knn_k", "knn_temperature",
                              "shots", "fractions", "draws", "probe_c", "features"),
    "augmentation and evaluation sizes": ("train_crop", "crop_scale", "flip_p", "jitter_strength", "grayscale_p",
                                          "blur_p", "eval_resize", "eval_crop"),
    "run": ("num_workers", "seed", "cpu", "progress", "channels_last", "compile"),
}
RESUMABLE_CHANGES = {"epochs", "resume", "output_dir", "num_workers", "progress", "cpu", "weights", "data",
                     "channels_last", "compile"}


@dataclass
class EvalConfig:
    """One downstream evaluation run. ``None`` hyperparameters take ``MODE_DEFAULTS[mode]``."""

    mode: str = doc("finetune", "what to evaluate: finetune | linear | lowshot | knn | probe", choices=MODES)
    data: str = doc("", "directory with train/<class>/ and val/<class>/ images", required=True)
    weights: str | None = doc(None, "bigseer export, training checkpoint dir, or timm-layout safetensors (with "
                                    "--model); omit for random init")
    model: str | None = doc(None, "RegNetY preset (required without --weights)")
    output_dir: str | None = doc(None, "checkpoint.pt (each epoch) and results.json go here")
    resume: str = doc("no", "continue from OUTPUT_DIR/checkpoint.pt: latest (fail without one) | auto (start fresh "
                            "without one, for schedulers that restart jobs) | no", choices=RESUME, const="latest")
    # optimisation (global batch over all processes); None: the mode's default (MODE_DEFAULTS)
    epochs: int | None = doc(None, "finetune 35, linear 28")
    batch_size: int | None = doc(None, "global batch over all processes (256)")
    lr: float | None = doc(None, "finetune 0.0125, linear 0.01")
    momentum: float | None = doc(None, "SGD momentum (0.9)")
    weight_decay: float | None = doc(None, "finetune 1e-4, linear 5e-4")
    lr_milestones: list[int] | None = doc(None, "epochs where the lr is multiplied by lr_gamma: finetune 30, "
                                                "linear 8 16 24")
    lr_gamma: float | None = doc(None, "lr factor at each milestone (0.1)")
    # features / protocol
    layer: str = doc("res5", "feature stage of linear, knn and lowshot-linear", choices=LAYERS)
    head_bn: bool = doc(True, "non-affine BatchNorm before the linear classifier")
    fraction: float | None = doc(None, "lowshot (and optionally knn): this fraction of images and labels, e.g. 0.01")
    lowshot_protocol: str = doc("finetune", "lowshot: fine-tune the trunk, or a linear classifier on it",
                                choices=("finetune", "linear"))
    knn_k: int = doc(20, "knn: neighbours that vote")
    knn_temperature: float = doc(0.07, "knn: temperature of the similarity weights")
    # probe: k labeled images per class and fractions of the labels, several draws, logistic regression
    shots: list[int] = doc([1, 2, 5, 10], "probe: labeled images per class, one budget each")
    fractions: list[float] = doc([0.01, 0.1], "probe: class-balanced fractions of the training labels, one budget "
                                              "each")
    draws: int = doc(5, "probe: subsets drawn per budget (mean and std)")
    probe_c: float = doc(1.0, "probe: inverse L2 strength of scikit-learn's LogisticRegression (C)")
    features: str = doc("trunk", "probe: trunk features, or raw pixels (the baseline; no weights needed)",
                        choices=FEATURES)
    # sizes
    train_crop: int = doc(224, "side of the training crops")
    crop_scale: list[float] = doc([0.08, 1.0], "area range of the training crops (LO HI)", nargs=2)
    # augmentation: the fields of bigseer.data.AugmentConfig, named as in pretraining (`augment()` builds it);
    # the old names still work as flags
    flip_p: float = doc(0.5, "horizontal flip probability")
    jitter_strength: float | None = doc(None, "colour jitter strength; finetune 0.8, linear 0",
                                        aliases=("--color_jitter",))
    grayscale_p: float | None = doc(None, "grayscale probability; finetune 0.2, linear 0",
                                    aliases=("--grayscale_prob",))
    blur_p: float | None = doc(None, "Gaussian blur probability; finetune 0.5, linear 0", aliases=("--blur_prob",))
    eval_resize: int = doc(256, "evaluation: resize the short side to this")
    eval_crop: int = doc(224, "evaluation: centre crop of this side")
    # bookkeeping
    num_workers: int = doc(0, "DataLoader worker processes")
    seed: int = doc(0, "seed of initialisation, sampling and draws")
    cpu: bool = doc(False, "force CPU (Accelerator(cpu=True)); see the docs for the 2-process CPU launch")
    progress: bool = doc(True, "progress bars")
    channels_last: str = doc("auto", "NHWC trunk (auto: on for CUDA), as in pretraining", choices=("auto", "on", "off"))
    compile: str = doc("off", "torch.compile each trunk block (auto: off)", choices=("auto", "on", "off"))

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
        """The training augmentation as ``bigseer.data.AugmentConfig`` (the class pretraining uses), from the fields
        of the same names of a :meth:`resolved` config (the mode's defaults filled in)."""
        from bigseer.data.multicrop import AugmentConfig

        if None in (self.jitter_strength, self.grayscale_p, self.blur_p):
            raise ConfigError("EvalConfig.augment() needs a resolved() config (the mode's augmentation defaults)")
        return AugmentConfig.of(self)

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
    """Command-line flags for ``EvalConfig`` (``bigseer.flags``; ``bigseer eval MODE`` passes ``with_mode=False``:
    MODE is positional)."""
    add_flags(parser, EvalConfig, skip=() if with_mode else ("mode",), sections=SECTIONS)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """``EvalConfig`` from parsed ``add_arguments`` flags (not yet resolved)."""
    return EvalConfig(**chosen_values(args, EvalConfig))  # MODE, positional or --mode, is args.mode either way
