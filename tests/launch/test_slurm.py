"""Beyond one machine with the engines the field runs: two torchrun agents rendezvousing over c10d on
127.0.0.1 (two "nodes"), and SLURM through submitit, tested with submitit's local executor (no SLURM here):
both train exactly like a single-node 2-process torchrun job (same world size and backend: the same
computation, so the losses, the samples and the whole final checkpoint, tests/state_compare.py, are equal
bitwise), a preempted submitit job requeues itself and resumes by itself to the same final state, and the
sbatch script is checked line by line."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from bigseer.errors import ConfigError
from bigseer.launch.slurm import PretrainJob, SlurmSpec, sbatch_script, submit, with_resume_auto
from tests.distributed_utils import free_port
from tests.jobs import (
    BIN,
    TINY,
    _environ,
    descendants,
    env,
    kill_recorded,
    kill_tree,
    launch,
    losses,
    snapshot,
    wait_for,
)
from tests.state_compare import assert_same_state, load_state

pytestmark = pytest.mark.slow  # an end-to-end job: not in the fast tier (-m 'not slow')

STEPS = 6
ARGS = ["--backend", "ddp", "--shard_prototypes", "--syncbn_group_size", "-1", "--queue_length", "8",
        "--batch_size", "4", "--max_steps", str(STEPS), "--checkpoint_every", "1", "--log_samples"]


def _records(out: Path) -> dict[int, dict]:
    import json

    return {r["step"]: r for r in (json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-node run's output dir."""
    root = tmp_path_factory.mktemp("single_node")
    proc = launch([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "examples/pretrain.py"],
                  root / "run", *ARGS)
    assert proc.wait(timeout=300) == 0, (root / "run.log").read_text()[-3000:]
    return root / "run"


def _same_run(run: Path, ref_run: Path, differ: dict[str, str] | None = None) -> None:
    """Every step's samples and loss, and the final checkpoint (tests/state_compare.py), bitwise equal."""
    got, ref = _records(run), _records(ref_run)
    assert sorted(got) == list(range(1, STEPS + 1))
    for s in ref:
        assert got[s]["samples"] == ref[s]["samples"] and got[s]["loss"] == ref[s]["loss"], s
    assert_same_state(load_state(run, STEPS), load_state(ref_run, STEPS), str(run), other_process=True, differ=differ)


def test_two_torchrun_nodes_train_like_one_node(reference, tmp_path: Path) -> None:
    """SyncBN over both nodes and prototypes sharded across them (the config above)."""
    port = free_port()
    agents = [launch([str(BIN / "torchrun"), "--nnodes", "2", "--node_rank", str(n), "--nproc_per_node", "1",
                      "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "bigseer-test",
                      "examples/pretrain.py"], tmp_path / "run", *ARGS, log=tmp_path / f"node{n}.log")
              for n in (0, 1)]
    try:
        codes = [a.wait(timeout=300) for a in agents]
    finally:
        for a in agents:
            kill_tree(a.pid)
    assert codes == [0, 0], [(tmp_path / f"node{n}.log").read_text()[-2000:] for n in (0, 1)]
    _same_run(tmp_path / "run", reference)


def _submit_local(tmp_path: Path, extra: list[str]):
    os.environ.update({k: v for k, v in env().items() if k in ("DS_ACCELERATOR", "PYTHONPATH")})
    spec = SlurmSpec(nodes=1, gpus_per_node=0, tasks_per_node=2, time="10", folder=str(tmp_path / "submitit"))
    return submit(spec, [*TINY, *ARGS, "--output_dir", str(tmp_path / "run"), *extra], cluster="local")


def test_submitit_local_job_trains_like_torchrun(reference, tmp_path: Path) -> None:
    job = _submit_local(tmp_path, [])
    job.results()  # raises if a task failed
    _same_run(tmp_path / "run", reference)


def test_preempted_submitit_job_requeues_and_resumes_by_itself(reference, tmp_path: Path) -> None:
    """SLURM signals every task (USR2) before preempting; submitit asks the job to checkpoint, which requeues
    the same command; with --resume auto it continues from `latest` and ends as the uninterrupted run."""
    job = _submit_local(tmp_path, ["--max_steps", str(STEPS), "--collective_timeout_s", "10"])
    controller = job._process
    run = tmp_path / "run"
    tasks: dict[int, int] = {}
    try:
        assert wait_for(lambda: len(losses(run)) >= 2 or controller.poll() is not None, 240)
        tasks = snapshot([p for p in descendants(controller.pid) if b"SUBMITIT_LOCAL_GLOBALID" in _environ(p)])
        for p in tasks:
            os.kill(p, signal.SIGUSR2)
        job.results()
    finally:
        kill_tree(controller.pid)
        kill_recorded(tasks)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "submitit").glob("*_log.*")))
    assert "Requeued job" in logs and "resumed from" in logs, logs[-3000:]
    _same_run(run, reference, differ={"meta/config/collective_timeout_s": "this job is started with a 10 s timeout"})


def test_sbatch_script_line_by_line() -> None:
    spec = SlurmSpec(nodes=64, gpus_per_node=8, partition="learn", time="3-00:00:00", account="seer",
                     folder="/checkpoint/me/seer/%j", extra={"exclusive": True})
    lines = sbatch_script(spec, ["--seer", "--data", "/data/shards/index.json", "--resume"]).splitlines()
    for want in ("#SBATCH --nodes=64", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=learn", "#SBATCH --account=seer", "#SBATCH --time=4320",
                 "#SBATCH --requeue", "#SBATCH --exclusive", "#SBATCH --cpus-per-task=10"):
        assert want in lines, want
    assert any(ln.startswith("#SBATCH --signal=USR2@") for ln in lines)  # warned before preemption/timeout
    assert any(ln.startswith("srun ") and "submitit.core._submit" in ln for ln in lines)  # one task per GPU
    assert lines[-1] == "# task: bigseer pretrain --seer --data /data/shards/index.json --resume auto"


def test_resume_auto_and_time_parsing() -> None:
    assert with_resume_auto(["--resume", "latest", "--x", "1"]) == ["--x", "1", "--resume", "auto"]
    assert with_resume_auto(["--resume"]) == ["--resume", "auto"]
    assert PretrainJob(["--a"]).checkpoint().function.args == ["--a", "--resume", "auto"]
    assert [SlurmSpec(time=t).minutes() for t in ("90", "01:30:00", "1-00:00:00", "00:10")] == [90, 90, 1440, 1]
    with pytest.raises(ConfigError, match="--time 'soon' is invalid"):
        SlurmSpec(time="soon").minutes()
