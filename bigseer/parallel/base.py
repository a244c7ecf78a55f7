"""``Parallel``: what the engine holds after ``bigseer.parallel.setup`` (common part of every backend)."""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable, Iterable

import torch
from torch import nn

from bigseer.distributed import all_gather_cat, get_rank, get_world_size
from bigseer.errors import CheckpointError, ConfigError
from bigseer.parallel.bn_stats import average_bn_stats
from bigseer.parallel.precision import autocast


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


class Parallel:
    """A wrapped model plus its optimizer, loss scaling and checkpoint I/O.

    Attributes: ``backend``, ``precision`` (the effective one), ``module`` (call it, or use
    ``forward`` which also applies autocast where the precision needs it), ``unwrapped`` (the original
    model object, its parameters possibly sharded), ``optimizer``, ``checkpoint_format``.
    """

    backend = "base"
    checkpoint_format = "torch"

    def __init__(self, model: nn.Module, module: nn.Module, optimizer: Any, precision: str, device_type: str,
                 syncbn: bool, scaler: Any = None, grad_clip: float | None = None,
                 autocast_precision: str | None = None) -> None:
        self.unwrapped = model
        self.module = module
        self.optimizer = optimizer
        self.precision = precision
        self.device_type = device_type
        self.syncbn = syncbn
        self.scaler = scaler
        self.grad_clip = grad_clip
        self._autocast_precision = precision if autocast_precision is None else autocast_precision
        self._frozen: list[nn.Parameter] = []

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
        """Average BN running stats over all ranks unless SyncBN keeps them equal. Collective."""
        return 0 if self.syncbn else average_bn_stats(self.unwrapped)

    def full_state_dict(self) -> dict[str, Any]:
        """Full model state (the model's own keys, CPU tensors) on rank 0; BN stats averaged across ranks
        when there is no SyncBN. Collective: call on every rank (others may get an empty dict)."""
        self.sync_bn_stats()
        sd = {k: v.detach().cpu().clone() for k, v in self.unwrapped.state_dict().items()}
        return gather_sharded_entries(self.unwrapped, sd)

    def _save_sharded_sidecar(self, directory: str) -> None:
        """Every rank writes its ``_bigseer_sharded`` params and their optimizer state to
        ``directory/sharded_rank{r:05d}.pt`` (the main formats would keep only one rank's slice)."""
        params = sharded_params(self.unwrapped)
        if not params:
            return
        names = {id(p): n for n, p in self.unwrapped.named_parameters()}
        state = {"world_size": get_world_size(), "params": {}, "optimizer": {}}
        for p in params:
            state["params"][names[id(p)]] = p.detach().cpu().clone()
            opt_state = getattr(self.optimizer, "state", {}).get(p)
            if opt_state:
                state["optimizer"][names[id(p)]] = {k: (v.detach().cpu().clone() if isinstance(v, torch.Tensor)
                                                        else v) for k, v in opt_state.items()}
        os.makedirs(directory, exist_ok=True)
        torch.save(state, os.path.join(directory, f"sharded_rank{get_rank():05d}.pt"))

    def _load_sharded_sidecar(self, directory: str) -> None:
        params = sharded_params(self.unwrapped)
        if not params:
            return
        path = os.path.join(directory, f"sharded_rank{get_rank():05d}.pt")
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} does not exist: the checkpoint lacks this rank's sharded parameters")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["world_size"] != get_world_size():
            raise CheckpointError(f"{path} was written by {state['world_size']} ranks; this run has "
                                  f"{get_world_size()} (sharded parameters cannot be resharded)")
        names = {id(p): n for n, p in self.unwrapped.named_parameters()}
        with torch.no_grad():
            for p in params:
                name = names[id(p)]
                p.copy_(state["params"][name])
                if name in state["optimizer"]:
                    self.optimizer.state[p] = {k: (v.to(p.device) if isinstance(v, torch.Tensor) else v)
                                               for k, v in state["optimizer"][name].items()}

    def _extra_state(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def save(self, directory: str) -> None:
        """Write model + optimizer (+ scaler) in format "torch": ``directory/state.pt`` (rank 0 writes), plus
        ``sharded_rank*.pt`` per rank when the model has ``_bigseer_sharded`` params. Collective."""
        self.sync_bn_stats()
        state = {"model": self.unwrapped.state_dict(), "optimizer": self.optimizer.state_dict(),
                 **self._extra_state()}
        if get_rank() == 0:
            os.makedirs(directory, exist_ok=True)
            torch.save(state, os.path.join(directory, "state.pt"))
        self._save_sharded_sidecar(directory)
        if get_world_size() > 1:
            torch.distributed.barrier()

    def load(self, directory: str) -> None:
        """Read what ``save`` wrote (every rank reads ``directory/state.pt``)."""
        path = os.path.join(directory, "state.pt")
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} does not exist (format 'torch' checkpoint expected)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.unwrapped.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._load_extra_state(state)
        self._load_sharded_sidecar(directory)
