"""Naming the rank that stalls a job: per-rank heartbeats in the launcher's key-value store.

Every rank records the last step it finished in the c10d store (``bigseer/step/<rank>``; one small write per
step). A dead rank ends the job through the launcher (torchrun / deepspeed kill the other workers when one
exits). A rank that is *stuck* (alive, not progressing) leaves the others waiting in a collective until
``collective_timeout_s``; the collective then raises on every waiting rank at about the same time. Each of
them reports its timeout in the store, waits a moment for the others' reports, and :func:`explain_timeout`
names the ranks that did not report (the stuck ones) with the last step they finished, so the job ends
with the cause instead of a bare gloo/NCCL timeout. (On NCCL the communicator's own watchdog may abort the
process first; its message names the collective.)
"""

from __future__ import annotations

import logging
from typing import Any

from bigseer.distributed import get_rank, get_world_size, is_distributed
from bigseer.errors import BigseerError

log = logging.getLogger("bigseer")
_KEY = "bigseer/step/"


class CollectiveTimeout(BigseerError):
    """A collective waited longer than the configured timeout (a rank is stuck or gone)."""


def _store() -> Any:
    if not is_distributed():
        return None
    try:
        import torch.distributed.distributed_c10d as c10d

        return c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no store (e.g. file init): heartbeats are best effort
        return None


class Heartbeat:
    """``beat(step)`` after every step; ``behind(step)`` lists (rank, last step) of ranks not at ``step``."""

    def __init__(self) -> None:
        self.store = _store()
        self.rank, self.world = get_rank(), get_world_size()

    def beat(self, step: int) -> None:
        if self.store is not None:
            self.store.set(f"{_KEY}{self.rank}", str(step))

    def _get(self, key: str) -> str | None:
        try:
            return self.store.get(key).decode() if self.store.check([key]) else None
        except Exception:  # noqa: BLE001 - the store itself may be gone with the job
            return None

    def stuck(self, step: int, wait_s: float) -> list[tuple[int, int]]:
        """Report this rank's timeout at ``step``, wait ``wait_s`` for the other waiting ranks to report theirs,
        and return (rank, last finished step) of the ranks that did not: the stuck or dead ones."""
        if self.store is None:
            return []
        import time

        try:
            self.store.set(f"bigseer/timeout/{self.rank}", str(step))
        except Exception:  # noqa: BLE001
            return []
        time.sleep(wait_s)
        out = []
        for r in range(self.world):
            if r != self.rank and self._get(f"bigseer/timeout/{r}") is None:
                last = self._get(f"{_KEY}{r}")
                out.append((r, int(last) if last is not None else -1))
        return out


def is_collective_timeout(exc: BaseException) -> bool:
    """True for the errors gloo / NCCL raise when a collective times out."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return ("timed out" in text or "timeout" in text) and ("gloo" in text or "nccl" in text or "wait" in text
                                                          or "distbackend" in text or "collective" in text)


def explain_timeout(exc: BaseException, heartbeat: Heartbeat | None, step: int, timeout_s: int) -> CollectiveTimeout:
    """One line for a collective timeout at ``step``: which ranks are behind and where they stopped."""
    behind = heartbeat.stuck(step, wait_s=min(10.0, max(2.0, 0.2 * timeout_s))) if heartbeat else []
    if behind:
        who = ", ".join(f"rank {r} (last finished step {last})" if last >= 0 else f"rank {r} (no step finished)"
                        for r, last in behind)
        what = f"{who} stopped making progress"
    else:
        what = "another rank stopped making progress"
    return CollectiveTimeout(f"rank {get_rank()} waited {timeout_s} s in a collective during step {step + 1}: {what} "
                             f"(stuck or dead); ending the job (--collective_timeout_s sets the limit; --resume "
                             f"continues from the last checkpoint)")
