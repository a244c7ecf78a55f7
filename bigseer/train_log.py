"""Training log: a progress bar on a terminal, plain lines otherwise, a JSONL file, TensorBoard events and
a PNG of the curves at the end. Only rank 0 writes."""

from __future__ import annotations

import json
import logging
import resource
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from bigseer.distributed import all_gather_cat

log = logging.getLogger("bigseer")


def peak_memory_mb() -> float:
    """Peak memory of this process: CUDA max allocated on GPU, else peak RSS (MiB)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _CurrentStderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at each record (not the stream of the moment it was made:
    a run started in a notebook cell or a captured test must not leave the logger writing to a closed file)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # set by StreamHandler.__init__; the property always reads sys.stderr
        pass


def setup_logging(rank: int) -> None:
    """INFO on rank 0, WARNING elsewhere, one line per record, to the current standard error."""
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s bigseer %(levelname)s %(message)s",
                        handlers=[_CurrentStderr()], force=True)
    # warnings (e.g. a precision fallback) as one line each, without the echoed source line
    warnings.formatwarning = lambda message, category, *_, **__: f"{category.__name__}: {message}\n"


def step_stats(loss: torch.Tensor, skipped: dict[str, int]) -> tuple[float, list[float], dict[str, int]]:
    """One all-gather per step: the loss averaged over ranks, each rank's peak memory (MiB) and the
    skipped-image counts summed over ranks."""
    from bigseer.data import SKIP_REASONS

    local = torch.tensor([float(loss), peak_memory_mb(), *(float(skipped.get(r, 0)) for r in SKIP_REASONS)],
                         dtype=torch.float64)
    rows = all_gather_cat(local.to(loss.device if loss.device.type != "meta" else "cpu")[None]).cpu()
    totals = rows[:, 2:].sum(0)
    return (float(rows[:, 0].mean()), rows[:, 1].tolist(),
            {r: int(n) for r, n in zip(SKIP_REASONS, totals.tolist()) if n})


def all_samples(samples: torch.Tensor | None) -> list[int]:
    """The sample ids of this step on all ranks, sorted (one all-gather)."""
    if samples is None:
        return []
    return sorted(all_gather_cat(samples.to(torch.int64)).tolist())


class TrainLogger:
    """Per-step metrics sink; a no-op on ranks other than 0."""

    def __init__(self, output_dir: str, total_steps: int, start_step: int, rank: int, log_every: int = 1) -> None:
        self.enabled = rank == 0
        self.log_every = log_every
        self.dir = Path(output_dir)
        self.history: list[dict[str, Any]] = []
        self.skipped_total: dict[str, int] = {}
        self._bar = None
        self._tb = None
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.dir / "metrics.jsonl", "a")
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="pretrain", unit="step", dynamic_ncols=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard"))
        except ImportError:  # tensorboard is a dependency; keep training if it is broken
            log.warning("tensorboard unavailable; metrics go to metrics.jsonl only")

    def add_skipped(self, skipped: dict[str, int]) -> None:
        for reason, n in skipped.items():
            self.skipped_total[reason] = self.skipped_total.get(reason, 0) + int(n)

    def step(self, step: int, metrics: dict[str, Any]) -> None:
        """Record metrics for a finished step (``step`` counts from 1)."""
        if not self.enabled:
            return
        record = {"step": step, **metrics, "skipped": dict(self.skipped_total)}
        self.history.append(record)
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and v is not None:
                    self._tb.add_scalar(f"train/{k}", v, step)
            for k, v in (metrics.get("health") or {}).items():
                self._tb.add_scalar(f"health/{k}", v, step)
        h = metrics.get("health") or {}
        short = (f"loss {metrics['loss']:.4f} "
                 + (f"({h['loss_ratio']:.3f} ln K, {int(h['prototypes_used'])} protos used) " if h else "")
                 + f"lr {metrics['lr']:.4g} "
                 + (f"scale {metrics['loss_scale']:.0f} " if metrics.get("loss_scale") else "")
                 + f"{metrics['img_per_s']:.1f} img/s "
                 + (f"mfu {100 * metrics['mfu']:.1f}% " if metrics.get("mfu") is not None else "")
                 + f"mem {metrics['peak_mem_mb']:.0f}MB")
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(short)
        elif step % self.log_every == 0:
            skipped = sum(self.skipped_total.values())
            log.info("step %d %s%s", step, short, f" skipped {skipped}" if skipped else "")

    def close(self) -> Path | None:
        """Flush everything and write ``curves.png``; returns its path (rank 0)."""
        if not self.enabled:
            return None
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        self._jsonl.close()
        return self._plot()

    def _plot(self) -> Path | None:
        if not self.history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.history]
        fig, axes = plt.subplots(1, 4, figsize=(17, 3.5))
        axes[0].plot(steps, [r["loss"] for r in self.history], label="loss")
        log_k = [r.get("health", {}).get("log_k") for r in self.history]
        if any(v is not None for v in log_k):  # SwAV's trivial fixed point: the loss pinned at ln K
            axes[0].plot(steps, [v if v is not None else float("nan") for v in log_k], "--", label="ln K")
            axes[0].legend(loc="upper right")
        axes[0].set_title("loss")
        for ax, key in zip(axes[1:3], ("lr", "img_per_s")):
            ax.plot(steps, [r[key] for r in self.history])
            ax.set_title(key)
        used = [r.get("health", {}).get("prototypes_used") for r in self.history]
        axes[3].plot(steps, [u if u is not None else float("nan") for u in used])
        axes[3].set_title("prototypes in use (argmax)")
        for ax in axes:
            ax.set_xlabel("step")
        fig.tight_layout()
        path = self.dir / "curves.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path
