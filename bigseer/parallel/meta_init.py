"""Meta-device initialisation: materialise a (possibly FSDP2-sharded) SwAV model shard by shard.

Build the model on ``device="meta"``, apply ``fully_shard``, then :func:`materialize_meta` allocates only
this rank's shard of every parameter (``to_empty``) and initialises that shard in place with the
distributions of the eager constructors (the torchtitan recipe):

- ``nn.Conv2d``: weight ~ N(0, 2 / fan_out), fan_out = k_h * k_w * out_channels / groups; bias 0
  (``RegNet.init_weights``);
- BatchNorm: weight 1, bias 0, running mean 0, running var 1, ``num_batches_tracked`` 0; the last BN of
  every block gets weight 0 when the trunk has ``zero_init_last``;
- prototypes (``head.prototype_parameters()``): rows ~ U(-1/sqrt(d), 1/sqrt(d)) then L2-normalised
  (``SwAVHead``); FSDP2 shards on dim 0, so every local row is a whole row;
- other ``nn.Linear``: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch's default);
- other buffers (the SwAV queue): 0.

Values are drawn from a per-rank generator (seeded from the default generator and the rank), so the
shards are independent draws of the same distributions, not bitwise equal to an unsharded init.
``_bigseer_*`` attributes of parameters (sharded prototypes) survive ``to_empty``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from bigseer.distributed import get_rank
from bigseer.errors import ConfigError

__all__ = ["is_meta_model", "materialize_meta", "local_tensor"]

_SEED_STRIDE = 1_000_003


def is_meta_model(model: nn.Module) -> bool:
    """True when any parameter or buffer of ``model`` is on the meta device (DTensors included)."""
    return any(t.device.type == "meta" for t in (*model.parameters(), *model.buffers()))


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The locally stored part of ``t`` (a DTensor's local shard, else ``t`` itself)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _init_rules(model: nn.Module) -> dict[int, tuple[str, Callable[[torch.Tensor, torch.Generator], None]]]:
    """``id(tensor) -> (qualified name, init(local_tensor, generator))`` for every parameter and buffer.

    Raises ConfigError naming the first parameter no rule covers (before anything is allocated)."""
    from bigseer.parallel.base import trunk_of

    head = getattr(model, "head", None)
    protos = {id(p) for p in head.prototype_parameters()} if hasattr(head, "prototype_parameters") else set()
    last_bn: set[int] = set()
    try:
        trunk = trunk_of(model)
    except ConfigError:
        trunk = None
    if trunk is not None and getattr(trunk, "zero_init_last", False):
        last_bn = {id(b.conv3.bn.weight) for b in trunk.blocks()}

    def normal(std: float) -> Callable[[torch.Tensor, torch.Generator], None]:
        return lambda t, g: t.normal_(0.0, std, generator=g)

    def uniform(bound: float) -> Callable[[torch.Tensor, torch.Generator], None]:
        return lambda t, g: t.uniform_(-bound, bound, generator=g)

    def fill(value: float) -> Callable[[torch.Tensor, torch.Generator], None]:
        return lambda t, g: t.fill_(value)

    def unit_rows(bound: float) -> Callable[[torch.Tensor, torch.Generator], None]:
        def init(t: torch.Tensor, g: torch.Generator) -> None:
            t.uniform_(-bound, bound, generator=g)
            if t.numel():
                t.div_(t.norm(dim=1, keepdim=True).clamp_min(1e-12))
        return init

    rules: dict[int, tuple[str, Callable[[torch.Tensor, torch.Generator], None]]] = {}
    for mname, m in model.named_modules():
        prefix = f"{mname}." if mname else ""
        own = dict(m.named_parameters(recurse=False))
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            spec = {"weight": normal(math.sqrt(2.0 / fan_out)), "bias": fill(0.0)}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            spec = {"weight": fill(1.0), "bias": fill(0.0), "running_mean": fill(0.0),
                    "running_var": fill(1.0), "num_batches_tracked": fill(0)}
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.in_features) if m.in_features else 0.0
            proto = id(m.weight) in protos
            spec = {"weight": unit_rows(bound) if proto else uniform(bound), "bias": uniform(bound)}
        else:
            spec = {}
        for name, p in own.items():
            if name not in spec:
                raise ConfigError(f"meta init: no initialisation rule for parameter {prefix}{name} "
                                  f"({type(m).__name__}); build this model on a real device")
            rule = fill(0.0) if id(p) in last_bn else spec[name]
            rules[id(p)] = (prefix + name, rule)
        for name, b in m.named_buffers(recurse=False):
            if b is not None and id(b) not in rules:
                rules[id(b)] = (prefix + name, spec.get(name, fill(0)))
    return rules


@torch.no_grad()
def materialize_meta(model: nn.Module, device: Any, seed: int | None = None) -> nn.Module:
    """Allocate ``model``'s meta tensors on ``device`` (only the local shard of FSDP2 DTensors) and
    initialise them in place (see the module docstring). ``seed`` (default: drawn from the default
    generator, the same on every rank after ``torch.manual_seed``) is combined with the rank. Returns
    ``model``."""
    rules = _init_rules(model)  # checks coverage before any allocation
    named_rules = {}
    extras: dict[str, dict[str, Any]] = {}
    for mname, m in model.named_modules():
        prefix = f"{mname}." if mname else ""
        for name, t in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)):
            if t is not None and id(t) in rules:
                named_rules[prefix + name] = rules[id(t)][1]
                attrs = {k: v for k, v in vars(t).items() if k.startswith("_bigseer")}
                if attrs:
                    extras[prefix + name] = attrs
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, (1,)).item())
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed((seed + _SEED_STRIDE * (get_rank() + 1)) % 2 ** 63)
    model.to_empty(device=device)
    for mname, m in model.named_modules():
        prefix = f"{mname}." if mname else ""
        for name, t in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)):
            key = prefix + name
            if t is None or key not in named_rules:
                continue
            for k, v in extras.get(key, {}).items():
                setattr(t, k, v)
            named_rules.pop(key)(local_tensor(t), gen)
    return model
