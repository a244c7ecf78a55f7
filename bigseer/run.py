"""A pretraining run resolved once: the user's config and the world in, the run the engine executes out.

:func:`resolve_run` is the one place that decides a run's final settings, in this order:

1. the resume point (``--resume``) is found, and its ``meta.json`` and ``trainer.pt`` are read, once;
2. ``--init_from`` weights (or, when the run resumes, its checkpoint) name the model when the user did not
   (``--model``); then the recipe (``auto``: chosen from the data's image sizes and count; ``seer``; ``none``) fills
   every setting the user did not choose (``explicit``: the flags and config-file keys the CLI saw);
3. an elastic resume re-plans the per-rank batch and the queue for this world size (:mod:`bigseer.resume`);
4. the config is finalized and validated (:func:`bigseer.config.validate`: fails before any work);
5. backend and precision are resolved;
6. ``--init_from`` weights are checked against ``--model`` (one line on a mismatch), unless the run resumes:
   a restarted job continues its own checkpoint.

The :class:`ResolvedRun` carries all of it to the engine, which writes ``ResolvedRun.cfg`` to
``OUTPUT_DIR/config.yaml``: ``--config`` of that file runs the same again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable

from bigseer.config import PretrainConfig, resolve_precision, validated
from bigseer.errors import CheckpointError

log = logging.getLogger("bigseer")


@dataclass(frozen=True)
class ResumePoint:
    """A committed checkpoint to continue: its directory and the two small files read from it."""

    directory: Path
    meta: dict[str, Any]
    trainer: dict[str, Any]


@dataclass(frozen=True)
class ResolvedRun:
    """What the engine executes: the final config and what was decided on the way to it."""

    cfg: PretrainConfig
    world_size: int
    backend: str  # none | ddp | fsdp | deepspeed | fairscale (``auto`` resolved)
    precision: str  # fp32 | bf16 | fp16 (``auto`` resolved)
    resume: ResumePoint | None
    median_side: float | None  # the data's median shorter side when the ``auto`` recipe probed it

    @property
    def micro(self) -> int:
        """Micro-batches per step (``--accumulate``)."""
        assert self.cfg.accumulate is not None
        return self.cfg.accumulate

    @property
    def lanes(self) -> int:
        """Data-parallel lanes of a step: ranks x micro-batches (a micro-batch counts like a rank)."""
        return self.world_size * self.micro

    @property
    def global_batch(self) -> int:
        assert self.cfg.batch_size is not None
        return self.cfg.batch_size * self.lanes


def chosen_fields(cfg: PretrainConfig, explicit: Iterable[str] | None) -> set[str]:
    """The settings the user chose: ``explicit`` when the caller knows them (the CLI), else every field that
    differs from its default (a config built in Python)."""
    if explicit is not None:
        return set(explicit)
    default = PretrainConfig()
    return {f.name for f in fields(cfg) if getattr(cfg, f.name) != getattr(default, f.name)}


def apply_data_recipe(cfg: PretrainConfig, explicit: Iterable[str] | None = None
                      ) -> tuple[PretrainConfig, float | None]:
    """``cfg`` with ``cfg.recipe`` applied to every setting the user did not choose; and the data's median side
    (None unless the ``auto`` recipe measured it)."""
    if cfg.recipe == "none":
        return cfg, None
    from bigseer.recipe import apply_recipe, probe_data, recipe_for

    probe = probe_data(cfg.data) if cfg.recipe == "auto" else None
    recipe = recipe_for(cfg.recipe, data=cfg.data, probe=probe)
    keep = chosen_fields(cfg, explicit) & set(recipe.overrides)
    log.info("%s%s", recipe.description, f" (kept your {', '.join(sorted(keep))})" if keep else "")
    return apply_recipe(cfg, recipe, keep), (probe.median_side if probe is not None else None)


def model_of_weights(cfg: PretrainConfig) -> PretrainConfig:
    """``cfg`` training the architecture of its ``--init_from`` weights (a preset; other shapes need --model)."""
    from bigseer.errors import ConfigError
    from bigseer.export.sources import open_weights
    from bigseer.models.regnet import PRESETS
    from bigseer.warm_start import arch_name

    opened = open_weights(str(cfg.init_from))
    opened.close()
    name = next((n for n, p in PRESETS.items() if p == opened.params), None)
    if name is None:
        raise ConfigError(f"--init_from {cfg.init_from} holds {arch_name(opened.params)}, which no preset builds; "
                          "bigseer pretrain trains the presets of `bigseer models`")
    if name != cfg.model:
        log.info("--init_from %s holds %s: training --model %s", cfg.init_from, name, name)
    return replace(cfg, model=name)


def find_resume_point(cfg: PretrainConfig) -> ResumePoint | None:
    """The checkpoint ``cfg.resume`` asks for, read (None: start fresh); ``latest`` without one is an error."""
    from bigseer.checkpoint import find_latest, read_meta, read_trainer_state

    if cfg.resume in ("no", None):
        return None
    found = find_latest(cfg.output_dir)
    if found is None and cfg.resume == "latest":
        raise CheckpointError(f"--resume: no checkpoint under {cfg.output_dir} (use --resume auto to start fresh "
                              "when there is none)")
    if found is None:
        log.info("--resume auto: no checkpoint under %s; starting from step 0", cfg.output_dir)
        return None
    return ResumePoint(found, read_meta(found), read_trainer_state(found))


def resolve_run(cfg: PretrainConfig, world_size: int, explicit: Iterable[str] | None = None) -> ResolvedRun:
    """The run ``cfg`` asks for on ``world_size`` ranks (module doc); ConfigError / CheckpointError / DataError
    before any work when it cannot run."""
    from bigseer.resume import plan_resume

    resume = find_resume_point(cfg)
    if cfg.init_from and "model" not in chosen_fields(cfg, explicit):  # the weights' (or its own run's) model
        named = replace(cfg, model=str(resume.meta.get("model_name", cfg.model))) if resume else model_of_weights(cfg)
        cfg, explicit = named, {*chosen_fields(cfg, explicit), "model"}
    cfg, median_side = apply_data_recipe(cfg, explicit)
    ds_batch_superseded = False
    if resume is not None:
        cfg, ds_batch_superseded = plan_resume(cfg, resume.meta, resume.trainer, world_size, str(resume.directory))
    cfg, backend = validated(cfg, world_size, ds_batch_superseded=ds_batch_superseded)
    if cfg.init_from and resume is None:
        from bigseer.warm_start import open_init_weights

        open_init_weights(cfg.init_from, cfg.model).close()  # the architecture, before any work
    elif cfg.init_from:
        log.info("--init_from %s not used: the run resumes from its checkpoint %s", cfg.init_from, resume.directory)
    return ResolvedRun(cfg=cfg, world_size=world_size, backend=backend, precision=resolve_precision(cfg),
                       resume=resume, median_side=median_side)
