"""``Parallel``: what the engine holds after ``bigseer.parallel.setup`` (common part of every backend)."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable, Iterable

import torch
from torch import nn

from bigseer.checkpoint.pieces import Piece
from bigseer.distributed import all_gather_cat
from bigseer.errors import ConfigError
from bigseer.parallel.bn_stats import average_bn_stats
from bigseer.parallel.precision import autocast
from bigseer.parallel.state import ensure_momentum, model_pieces, optimizer_pieces


def trunk_of(model: nn.Module) -> nn.Module:
    """The RegNet trunk (anything with ``.stages()`` and ``.blocks()``): ``model.trunk`` or ``model``."""
    for cand in (getattr(model, "trunk", None), model):
        if cand is not None and hasattr(cand, "stages") and hasattr(cand, "blocks"):
            return cand
    raise ConfigError(f"{type(model).__name__} has no RegNet trunk (.trunk with .stages()/.blocks())")


def sharded_params(model: nn.Module) -> list[nn.Parameter]:
    """Parameters already sharded across ranks by the model itself (``_bigseer_sharded = True``)."""
    return [p for p in model.parameters() if getattr(p, "_bigseer_sharded", False)]


def gather_sharded_entries(model: nn.Module, sd: dict[str, Any]) -> dict[str, Any]:
    """Replace the state-dict entries of ``_bigseer_sharded`` params by their full tensors (all-gathered on
    dim 0 over ``p._bigseer_shard_group``). Collective when such params exist."""
    names = {id(p): n for n, p in model.named_parameters()}
    for p in sharded_params(model):
        name = names[id(p)]
        full = all_gather_cat(p.detach(), getattr(p, "_bigseer_shard_group", None), dim=0)
        if name in sd:
            sd[name] = full.cpu()
    return sd


def call_on_model(fn: Callable[..., Any], model: nn.Module) -> Any:
    """``fn()`` when ``fn`` takes no arguments (a bound method of the model), else ``fn(model)``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return fn(model)
    required = [p for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    return fn() if not required else fn(model)


def destroy_group(group: Any) -> None:
    """Destroy a process group made with ``new_group`` (a no-op for None or after the default group is gone)."""
    import torch.distributed as dist

    if group is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group(group)


class Parallel:
    """A wrapped model plus its optimizer, loss scaling and checkpoint I/O.

    Attributes: ``backend``, ``precision`` (the effective one), ``module`` (call it, or use
    ``forward`` which also applies autocast where the precision needs it), ``unwrapped`` (the original
    model object, its parameters possibly sharded), ``optimizer``, ``checkpoint_format``.
    """

    backend = "base"

    def __init__(self, model: nn.Module, module: nn.Module, optimizer: Any, precision: str, device_type: str,
                 syncbn: bool, scaler: Any = None, grad_clip: float | None = None,
                 autocast_precision: str | None = None) -> None:
        self.unwrapped = model
        self.module = module
        self.optimizer = optimizer
        self.precision = precision
        self.device_type = device_type
        self.syncbn = syncbn
        self.bn_synced_over_world = syncbn  # False when SyncBN groups are smaller than the world (setup sets it)
        self.scaler = scaler
        self.grad_clip = grad_clip
        self._autocast_precision = precision if autocast_precision is None else autocast_precision
        self._frozen: list[nn.Parameter] = []
        self._owned_groups: list[Any] = []  # process groups setup() made for this run (SyncBN): close() ends them

    def _params_named(self, names: Iterable[str]) -> list[nn.Parameter]:
        named = dict(self.unwrapped.named_parameters())
        missing = [n for n in names if n not in named]
        if missing:
            raise ConfigError(f"unknown parameter name(s) {missing}; e.g. {list(named)[-3:]}")
        return [named[n] for n in names]

    def set_frozen(self, names: Iterable[str], frozen: bool) -> None:
        """Freeze (or release) parameters by name: frozen ones are skipped by the next optimizer steps
        (their gradients dropped after backward and reduction). Use it for SwAV's prototype freezing: it also
        works under DeepSpeed, where dropping ``.grad`` after backward has no effect."""
        params = self._params_named(list(names))
        ids = {id(p) for p in params}
        self._frozen = [p for p in self._frozen if id(p) not in ids] + (params if frozen else [])

    def _drop_frozen_grads(self) -> None:
        for p in self._frozen:
            p.grad = None

    # ---- training step -------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped model under this precision's autocast (fp32 BN/Sinkhorn are the model's job)."""
        with autocast(self._autocast_precision, self.device_type):
            return self.module(*args, **kwargs)

    __call__ = forward

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of this rank's loss (scaled when fp16)."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def backward_micro(self, loss: torch.Tensor, index: int, count: int) -> None:
        """Backward of micro-batch ``index`` of the ``count`` of one optimizer step: the gradients accumulate to
        the mean of the micro-batches'; the data-parallel reduction waits for the last one (DDP's ``no_sync``)."""
        if count == 1:
            return self.backward(loss)
        no_sync = getattr(self.module, "no_sync", None)
        with no_sync() if no_sync is not None and index < count - 1 else contextlib.nullcontext():
            self.backward(loss / count)

    def _clip(self) -> None:
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in self.unwrapped.parameters() if p.grad is not None],
                                           self.grad_clip)

    def step(self) -> bool:
        """Optimizer step (unscale, optional clip, step, scale update). False when skipped on inf/nan."""
        self._drop_frozen_grads()
        if self.scaler is None:
            self._clip()
            self.optimizer.step()
            return True
        self.scaler.unscale_(self.optimizer)
        self._clip()
        before = float(self.scaler.get_scale())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return not float(self.scaler.get_scale()) < before

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def loss_scale(self) -> float | None:
        """Current dynamic loss scale (None when no scaling)."""
        return float(self.scaler.get_scale()) if self.scaler is not None else None

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every parameter group."""
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def run_on_full_params(self, fn: Callable[..., Any]) -> Any:
        """Run ``fn(unwrapped)`` (or ``fn()`` for a callable without parameters, e.g. the bound
        ``model.normalize_prototypes``) under ``no_grad`` where the parameters can be modified in place and
        the change is kept by the backend. Call on every rank."""
        with torch.no_grad():
            return call_on_model(fn, self.unwrapped)

    # ---- state ---------------------------------------------------------------------------------
    def sync_bn_stats(self) -> int:
        """Average BN running stats over all ranks unless SyncBN over the whole world keeps them equal (groups
        smaller than the world each hold their own). Collective."""
        return 0 if self.bn_synced_over_world else average_bn_stats(self.unwrapped)

    def full_state_dict(self) -> dict[str, Any]:
        """Full model state (the model's own keys, CPU tensors) on rank 0; BN stats averaged across ranks
        when there is no SyncBN. Collective: call on every rank (others may get an empty dict)."""
        self.sync_bn_stats()
        sd = {k: v.detach().cpu().clone() for k, v in self.unwrapped.state_dict().items()}
        return gather_sharded_entries(self.unwrapped, sd)

    # ---- checkpoint pieces (bigseer.checkpoint writes and reads them; world-size and backend free) ----
    def state_pieces(self) -> list[Piece]:
        """Where this rank's share of every logical tensor lives: model parameters and buffers
        (``model.<fqn>``) and the optimizer's tensor state (``optim.<fqn>.<key>``), after creating any
        momentum buffers an SGD-style optimizer has not made yet. Local views: saving stages copies of
        them, loading writes into them."""
        ensure_momentum(self.optimizer)
        return model_pieces(self.unwrapped) + optimizer_pieces(self.unwrapped, self.optimizer)

    def after_load(self) -> None:
        """Make the backend consistent after ``state_pieces()`` were written into (nothing for views of the
        parameters themselves; DeepSpeed refreshes its copies of the fp32 master)."""

    def scaler_state(self) -> dict[str, Any] | None:
        """The dynamic loss scaler's state in a backend-free form (None without loss scaling)."""
        if self.scaler is None:
            return None
        sd = self.scaler.state_dict()
        return {"scale": float(sd.get("scale", self.scaler.get_scale())),
                "growth_tracker": int(sd.get("_growth_tracker", 0))}

    def load_scaler_state(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`scaler_state` (from any backend's checkpoint)."""
        if self.scaler is None or not state:
            return
        sd = self.scaler.state_dict()
        sd.update(scale=float(state["scale"]), _growth_tracker=int(state.get("growth_tracker", 0)))
        self.scaler.load_state_dict(sd)

    def close(self) -> None:
        """Release what :func:`bigseer.parallel.setup` created in this process (process groups, backend
        engines, environment variables); the model and its tensors stay usable. Idempotent."""
        for group in self._owned_groups:
            destroy_group(group)
        self._owned_groups = []

    def write_native(self, directory: str) -> None:
        """Write the backend's own checkpoint format beside bigseer's (only DeepSpeed has one, on request)."""
