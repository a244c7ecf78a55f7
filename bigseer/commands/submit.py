"""``bigseer submit --nodes N --gpus_per_node G [--partition P --time T --account A ...] -- pretrain ARGS``:
submit pretraining as a SLURM job through submitit (requeued on preemption, resumed with --resume auto)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus_per_node", type=int, default=8)
    parser.add_argument("--tasks_per_node", type=int, default=None, help="default: one per GPU")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--time", default="72:00:00", help="wall time: HH:MM:SS, D-HH:MM:SS or minutes")
    parser.add_argument("--account", default=None)
    parser.add_argument("--qos", default=None)
    parser.add_argument("--cpus_per_task", type=int, default=10)
    parser.add_argument("--mem", default=None)
    parser.add_argument("--constraint", default=None)
    parser.add_argument("--job_name", default="bigseer")
    parser.add_argument("--folder", default="runs/slurm/%j", help="submitit's logs and pickles (%%j: job id)")
    parser.add_argument("--cluster", default="slurm", choices=("slurm", "local"),
                        help="local: run the tasks on this machine with submitit's local executor")
    parser.add_argument("--dry_run", action="store_true", help="print the sbatch script, submit nothing")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- pretrain ARGS")


def run(args: argparse.Namespace) -> int:
    from bigseer.errors import ConfigError
    from bigseer.launch.slurm import SlurmSpec, sbatch_script, submit

    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd or cmd[0] != "pretrain":
        raise ConfigError("bigseer submit needs the command after --: bigseer submit [options] -- pretrain ARGS")
    spec = SlurmSpec(nodes=args.nodes, gpus_per_node=args.gpus_per_node, tasks_per_node=args.tasks_per_node,
                     partition=args.partition, time=args.time, account=args.account, qos=args.qos,
                     cpus_per_task=args.cpus_per_task, mem=args.mem, constraint=args.constraint,
                     job_name=args.job_name, folder=args.folder)
    if args.dry_run:
        print(sbatch_script(spec, cmd[1:]))
        return 0
    job = submit(spec, cmd[1:], cluster=args.cluster)
    print(f"submitted job {job.job_id} ({spec.nodes} node(s) x {spec.tasks()} task(s)); logs in {args.folder}",
          file=sys.stderr)
    if args.cluster == "local":
        job.results()
    return 0
