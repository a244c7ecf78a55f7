"""Launching real jobs in tests: the CLI as users type it, and killing whole process trees as a scheduler does.

torchrun and the deepspeed launcher start every worker in a session of its own, so killing the launcher's
process group leaves the workers running; :func:`kill_tree` walks ``/proc/PID/task/*/children`` instead.

Checking that processes are gone: record them (:func:`snapshot`: pid -> start time) while their parent is
still alive, then ask :func:`alive` about that record. Walking the tree afterwards proves nothing: once the
launcher is reaped, ``/proc/<its pid>`` is gone and its orphaned workers are no longer found below it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["--model", "regnety_test", "--crops", "2x32+2x16", "--head_dims", "32", "--embed_dim", "16",
        "--num_prototypes", "32", "--seed", "3", "--no_export"]


def env() -> dict[str, str]:
    out = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(k, None)
    return out


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (children first found breadth-first)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def start_time(pid: int) -> int | None:
    """Start time (clock ticks after boot, field 22 of ``/proc/PID/stat``) of a live process, None when there is
    no such process or it is a zombie (it has exited; only its exit status waits to be collected)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime field 22
    return None if fields[0] in ("Z", "X") else int(fields[19])


def snapshot(pids: list[int]) -> dict[int, int]:
    """``pid -> start time`` of the live processes among ``pids`` (for :func:`alive` later)."""
    out = {p: start_time(p) for p in pids}
    return {p: t for p, t in out.items() if t is not None}


def alive(recorded: dict[int, int]) -> list[int]:
    """The recorded processes still running: the pid exists, is not a zombie and has the recorded start time
    (a reused pid is another process)."""
    return [p for p, t in recorded.items() if start_time(p) == t]


def kill_recorded(recorded: dict[int, int], sig: int = signal.SIGKILL) -> None:
    """Signal the recorded processes that are still the same processes (cleanup after a reaped launcher)."""
    for p in alive(recorded):
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal ``pid`` and every descendant (whatever session they are in)."""
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _environ(pid: int) -> dict[bytes, bytes]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split(b"=", 1) for kv in raw.split(b"\0") if b"=" in kv)


def workers(pid: int) -> list[int]:
    """The training workers below a launcher: processes running the entry point with a RANK of their own
    (the deepspeed launcher's own per-node process runs it too, without RANK)."""
    out = []
    for p in descendants(pid):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(c.endswith(b"pretrain.py") for c in cmd) and b"RANK" in _environ(p) \
                and not any(b"deepspeed.launcher" in c for c in cmd):
            out.append(p)
    return out


def rank_of(pid: int) -> int:
    return int(_environ(pid)[b"RANK"])


def losses(out: Path) -> dict[int, float]:
    recs: dict[int, float] = {}
    path = out / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            recs[r["step"]] = r["loss"]
    return recs


def wait_for(cond, timeout: float, every: float = 0.05) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(every)
    return False


def launch(cmd: list[str], out: Path, *extra: str, log: Path | None = None) -> subprocess.Popen:
    log = log or out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([*cmd, *TINY, "--output_dir", str(out), *extra], cwd=REPO, env=env(),
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)


def torchrun(nproc: int = 2, *agent: str) -> list[str]:
    return [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc), *agent, "examples/pretrain.py"]


def deepspeed(nproc: int = 2) -> list[str]:
    """The deepspeed launcher on a free master port (its default 29500 would be shared with any other job on the
    machine, e.g. the other pytest worker; DeepSpeed's CPU all-reduce also names its shared memory after it)."""
    from bigseer.distributed import free_port

    return [str(BIN / "deepspeed"), "--master_port", str(free_port()), "--num_gpus", str(nproc), "examples/pretrain.py"]
