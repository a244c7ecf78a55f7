"""What torch.compile did during a compiled throughput variant: graphs, graph breaks, recompile-limit hits."""

from __future__ import annotations

import contextlib
import logging
from typing import Any


def dynamo_counts() -> dict[str, Any]:
    """torch._dynamo's counters now: unique graphs, graph breaks, the three most frequent break reasons."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001 - no dynamo: nothing to count
        return {}
    breaks = counters.get("graph_break", {})
    return {"unique_graphs": int(counters.get("stats", {}).get("unique_graphs", 0)),
            "graph_breaks": int(sum(breaks.values())),
            "break_reasons": [str(k)[:120] for k, _ in sorted(breaks.items(), key=lambda kv: -kv[1])[:3]]}


class DynamoWatch(logging.Handler):
    """Counts dynamo's recompile (cache size) limit warnings and its counters from creation to ``result()``."""

    def __init__(self, backend: str) -> None:
        super().__init__(logging.WARNING)
        self.backend = backend
        self.hits: list[str] = []
        self.before = dynamo_counts()
        logging.getLogger("torch._dynamo").addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            msg = record.getMessage()
            if "recompile_limit" in msg or "cache_size_limit" in msg:
                self.hits.append(msg.splitlines()[0][:200])

    def result(self) -> dict[str, Any]:
        now = dynamo_counts()
        return {"unique_graphs": now.get("unique_graphs", 0) - self.before.get("unique_graphs", 0),
                "graph_breaks": now.get("graph_breaks", 0) - self.before.get("graph_breaks", 0),
                "break_reasons": now.get("break_reasons", []), "recompile_limit_hits": len(self.hits),
                "recompile_limit_msgs": self.hits[:2], "backend": self.backend}

    def close(self) -> None:
        """Detach, and drop dynamo's caches (the next variant compiles afresh)."""
        logging.getLogger("torch._dynamo").removeHandler(self)
        with contextlib.suppress(Exception):
            import torch

            torch._dynamo.reset()
        super().close()


def describe(dyn: dict[str, Any]) -> str:
    """One clause for a row's details."""
    first = f" (first: {dyn['break_reasons'][0].splitlines()[0][:60]})" if dyn["break_reasons"] else ""
    return (f"dynamo ({dyn['backend']}): {dyn['unique_graphs']} graphs, {dyn['graph_breaks']} breaks{first}, "
            f"recompile-limit hits {dyn['recompile_limit_hits']}")
