"""bigseer's one SwAV step (``bigseer.trainer.swav_step``) with its phase boundaries visible to a benchmark.

The step stays the library's (set_lr, forward, backward, optimizer step, prototype renormalisation, zero_grad,
in its order); :class:`Probe` only sees the ``Parallel`` calls it makes, so that a benchmark can time or measure
between them (per-phase times, RSS peaks, gradients held before the optimizer step) without writing the step
again.
"""

from __future__ import annotations

import time
from typing import Any, Callable

# the bigseer.parallel.Parallel calls swav_step makes, in its order (set_lr only when given an lr)
STEP_CALLS = ("set_lr", "forward", "backward", "step", "run_on_full_params", "zero_grad")


class Probe:
    """``par`` (a ``bigseer.parallel.Parallel``) as ``swav_step`` sees it: ``on(name)`` runs just before each of
    its calls named in ``STEP_CALLS``; every other attribute passes through."""

    def __init__(self, par: Any, on: Callable[[str | None], None]) -> None:
        self._par = par
        self._on = on

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._par, name)
        if name not in STEP_CALLS:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._on(name)
            return attr(*args, **kwargs)

        return call


def probed_step(par: Any, crops: list[Any], on: Callable[[str | None], None], lr: float | None = None,
                measure: Any = None) -> tuple[Any, bool]:
    """``swav_step(par, crops, lr, measure)`` with ``on(call)`` before each of its ``Parallel`` calls and
    ``on(None)`` after the last; returns what ``swav_step`` returns (loss, stepped)."""
    from bigseer.trainer import swav_step

    out = swav_step(Probe(par, on), crops, lr=lr, measure=measure)
    on(None)
    return out


def timed_step(par: Any, crops: list[Any], lr: float | None = None, sync: Callable[[], Any] | None = None,
               on: Callable[[str | None], None] | None = None) -> tuple[Any, bool, dict[str, float]]:
    """``swav_step`` timed per call: (loss, stepped, seconds keyed by the ``STEP_CALLS`` it made). ``sync``
    (e.g. ``torch.distributed.barrier``) runs at every boundary before the clock is read, so that each time is
    the slowest rank's; ``on(call)`` (as for :func:`probed_step`) runs at every boundary outside the timed spans."""
    times: dict[str, float] = {}
    current: list[Any] = [None, 0.0]  # the call being timed, its start

    def boundary(name: str | None) -> None:
        if sync is not None:
            sync()
        if current[0] is not None:
            times[current[0]] = time.perf_counter() - current[1]
        if on is not None:
            on(name)
        current[0], current[1] = name, time.perf_counter()

    loss, stepped = probed_step(par, crops, boundary, lr=lr)
    return loss, stepped, times
