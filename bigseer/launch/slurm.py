"""SLURM jobs through submitit: one task per GPU, the rendezvous taken from SLURM, requeue on preemption.

``submit(spec, ["--data", ..., ...])`` submits ``bigseer pretrain ARGS --resume auto`` as a job of
``spec.nodes x spec.gpus_per_node`` tasks. Every task runs :class:`PretrainJob`: it sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` (the job's first host) and ``MASTER_PORT`` (from the job id)
from submitit's ``JobEnvironment`` and runs the same entry point as torchrun would. When SLURM preempts or
times out the job, submitit calls :meth:`PretrainJob.checkpoint`, which requeues the same command; the
requeued job continues from ``latest`` by itself (``--resume auto``; the last async checkpoint is intact,
docs/DESIGN-scale.md section 5), on however many nodes it gets if ``--nodes`` changes between submissions.
``cluster="local"`` runs the tasks as local processes (submitit's local executor: no SLURM needed).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from bigseer.errors import ConfigError


@dataclass
class SlurmSpec:
    """What to ask SLURM for (``None`` fields are left to the cluster's defaults)."""

    nodes: int = 1
    gpus_per_node: int = 8
    tasks_per_node: int | None = None  # default: one per GPU (one for CPU-only local runs)
    partition: str | None = None
    time: str = "72:00:00"  # HH:MM:SS, D-HH:MM:SS or minutes
    account: str | None = None
    qos: str | None = None
    cpus_per_task: int | None = 10
    mem: str | None = None
    constraint: str | None = None
    job_name: str = "bigseer"
    folder: str = "runs/slurm/%j"
    extra: dict[str, Any] = field(default_factory=dict)  # more sbatch options, e.g. {"exclusive": True}

    def minutes(self) -> int:
        """``time`` in minutes (ConfigError for a malformed value)."""
        t = str(self.time).strip()
        m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{2})(?::(\d{2}))?", t)
        if m:
            days, a, b, c = m.groups()
            hours, mins = (int(a), int(b)) if c is not None else (0, int(a))
            if c is None:  # MM:SS
                return max(1, int(days or 0) * 1440 + hours * 60 + mins + (1 if int(b) else 0))
            return max(1, int(days or 0) * 1440 + hours * 60 + mins + (1 if int(c) else 0))
        if t.isdigit() and int(t) > 0:
            return int(t)
        raise ConfigError(f"--time {self.time!r} is invalid: use minutes or HH:MM:SS (or D-HH:MM:SS)")

    def tasks(self) -> int:
        return self.tasks_per_node if self.tasks_per_node is not None else max(1, self.gpus_per_node)


def rendezvous_env() -> dict[str, str]:
    """torch.distributed's env:// variables for this task, from submitit's view of the SLURM (or local) job."""
    import submitit

    job = submitit.JobEnvironment()
    port = 20000 + int(re.sub(r"\D", "", str(job.job_id)) or 0) % 20000
    return {"RANK": str(job.global_rank), "LOCAL_RANK": str(job.local_rank), "WORLD_SIZE": str(job.num_tasks),
            "MASTER_ADDR": str(job.hostnames[0]), "MASTER_PORT": os.environ.get("MASTER_PORT", str(port))}


# the ``bigseer`` command (pyproject.toml [project.scripts]) that every task runs
ENTRY = "bigseer.cli:main"


class PretrainJob:
    """The callable every task runs (pickled by submitit); ``checkpoint`` requeues it on preemption."""

    def __init__(self, args: list[str]) -> None:
        self.args = with_resume_auto(list(args))

    def __call__(self) -> int:
        """``bigseer pretrain ARGS`` in this task, through the ``bigseer`` command's entry point named by
        :data:`ENTRY` (a launcher runs a command by name, as the sbatch script's last line says: it imports
        no layer above it)."""
        import importlib

        os.environ.update(rendezvous_env())
        module, func = ENTRY.split(":")
        main = getattr(importlib.import_module(module), func)
        rc = main(["pretrain", *self.args])
        if rc:
            raise RuntimeError(f"bigseer pretrain exited with {rc}")
        return rc

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(PretrainJob(self.args))


def with_resume_auto(args: list[str]) -> list[str]:
    """``args`` with ``--resume auto`` (a requeued job continues; a first one starts fresh)."""
    out, i = [], 0
    while i < len(args):
        if args[i] == "--resume":
            if i + 1 < len(args) and args[i + 1] in ("no", "latest", "auto"):
                i += 1
            i += 1
            continue
        out.append(args[i])
        i += 1
    return out + ["--resume", "auto"]


def make_executor(spec: SlurmSpec, cluster: str = "slurm") -> Any:
    """A submitit executor for ``spec`` on ``cluster`` (slurm | local)."""
    import shutil

    import submitit

    if cluster not in ("slurm", "local"):
        raise ConfigError(f"cluster {cluster!r} is invalid: slurm or local")
    if cluster == "slurm" and shutil.which("srun") is None:
        raise ConfigError("no SLURM on this machine (srun not found): --cluster local runs the tasks here, "
                          "--dry_run prints the sbatch script")
    executor = submitit.AutoExecutor(folder=spec.folder, cluster=cluster)
    params: dict[str, Any] = {"nodes": spec.nodes, "tasks_per_node": spec.tasks(), "timeout_min": spec.minutes(),
                              "name": spec.job_name}
    if cluster == "slurm":
        params.update(gpus_per_node=spec.gpus_per_node, slurm_partition=spec.partition, slurm_account=spec.account,
                      slurm_qos=spec.qos, cpus_per_task=spec.cpus_per_task, slurm_mem=spec.mem,
                      slurm_constraint=spec.constraint,
                      slurm_additional_parameters=dict(spec.extra, requeue=True))
        params = {k: v for k, v in params.items() if v is not None}
    elif spec.nodes != 1:
        raise ConfigError("cluster local runs on this machine: --nodes must be 1")
    executor.update_parameters(**params)
    return executor


def submit(spec: SlurmSpec, args: list[str], cluster: str = "slurm") -> Any:
    """Submit ``bigseer pretrain ARGS --resume auto``; returns the submitit job."""
    return make_executor(spec, cluster).submit(PretrainJob(args))


def sbatch_params(spec: SlurmSpec) -> dict[str, Any]:
    """The sbatch options of ``spec`` (submitit's names)."""
    params = dict(job_name=spec.job_name, partition=spec.partition, time=spec.minutes(), nodes=spec.nodes,
                  ntasks_per_node=spec.tasks(), cpus_per_task=spec.cpus_per_task, gpus_per_node=spec.gpus_per_node,
                  account=spec.account, qos=spec.qos, mem=spec.mem, constraint=spec.constraint,
                  additional_parameters=dict(spec.extra, requeue=True))
    return {k: v for k, v in params.items() if v is not None}


def sbatch_script(spec: SlurmSpec, args: list[str]) -> str:
    """The sbatch script ``submit`` hands SLURM (nothing is submitted; works without SLURM): submitit's own
    template, whose ``srun`` runs one :class:`PretrainJob` task per GPU and whose ``--signal`` makes SLURM
    warn the job before preemption or timeout, so it checkpoints and requeues."""
    import shlex
    import sys

    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(spec.folder)])
    script = _make_sbatch_string(command=command, folder=spec.folder, **sbatch_params(spec))
    return script + f"\n# task: bigseer pretrain {' '.join(shlex.quote(a) for a in with_resume_auto(args))}\n"
