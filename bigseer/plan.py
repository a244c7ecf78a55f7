"""Per-rank memory plan of a SwAV run before anything is allocated (meta-device model).

``plan_memory(...)`` builds the RegNetY trunk and a SwAV head (MLP dims, K prototypes) on the meta
device, runs one meta forward per crop resolution under a saved-tensor hook to get the exact tensors
autograd keeps (activations), takes the FSDP units from ``bigseer.parallel.fsdp.fsdp_units`` and
divides parameters, gradients and optimizer state by what each backend shards:

| backend            | params        | grads            | optimizer state (+ DeepSpeed fp32 master) |
|--------------------|---------------|------------------|--------------------------------------------|
| ddp                | full          | full             | full                                       |
| fsdp / fairscale   | 1/W           | 1/W              | 1/W                                        |
| deepspeed ZeRO-1   | full          | full             | 1/W (+ master 1/W)                         |
| deepspeed ZeRO-2   | full          | full (see below) | 1/W (+ master 1/W)                         |
| deepspeed ZeRO-3   | 1/W (+ small) | 1/W              | 1/W (+ master 1/W with DeepSpeed fp16)     |

ZeRO-3 keeps every parameter of at most ``stage3_param_persistence_threshold`` elements (``ds_persistence``,
DeepSpeed's default 1e5) whole on every rank beside its partition ("+ small"), and, without DeepSpeed's own
fp16, no separate fp32 master: the fp32 parameter partition is the master (``bigseer.parallel.deepspeed``
restores that alias, which DeepSpeed 0.19.8 intends but misses).

Activations: everything autograd saves (inputs of convs/BN/linear, masks, ...) for all crops of one
step, in the compute dtype (bf16/fp16 halve them); with activation checkpointing a checkpointed block
keeps only its input, and its internals exist while it is recomputed. The figure is the peak of those
saved bytes over the backward, which frees them in reverse forward order: without checkpointing all of
them at its start; with it, at some block: the inputs kept by the blocks before it plus its recomputed
internals (checked against the torch profiler's peak in ``benchmarks/bench_checkpointing.py``).

The peak is in the backward pass, so ``transient`` holds what is alive there on top of the above. Each term
is a mechanism in the named library whose size was measured as peak RSS growth of 2-rank gloo runs
(``benchmarks/bench_memory.py``, ``benchmarks/results/memory.md``); on NCCL the FSDP term is the mechanism's
upper estimate (not measured: no GPU was lent):

- every backend: the gradient of the largest saved activation and the gradient flowing into it (autograd
  holds one op's grad_output and grad_input at a time) = 2 x the largest saved tensor;
- FSDP2 (W > 1), u = largest unit. Mechanism: forward, the current + the prefetched unit's unsharded
  params plus the prefetched all-gather output (3u); backward, 2 unsharded units + the unit's reduce
  (unsharded grads + ``foreach_reduce``'s reduce-scatter input, 2u), which bounds NCCL runs at 4u.
  Measured on gloo (7 runs of 6M-142M params, one bf16): about 1u with one trunk call per step and 2u more
  per further call (SwAV calls the trunk once per crop resolution): ``(1 + 2 (calls - 1)) u``;
- ZeRO-2: with ``overlap_comm`` (the shipped configs) DeepSpeed double-buffers its ``ipg`` reduce bucket
  (``setup_buckets``: two ``torch.empty(reduce_bucket_size)``, switched when one is full). When the whole
  model fits in one bucket (n <= bucket) the measured peak has nothing on top of the full-size gradients;
  otherwise both buffers are touched: min(n, 2 x bucket) elements (``comm``);
- ZeRO-3: gathered parameters are kept while their next use is within ``stage3_max_reuse_distance``
  (default 1e9 elements), up to ``stage3_max_live_parameters``: max(2u, min(n, live, reuse)); for n
  below both the whole model stays gathered from forward into backward (n); its reduce ``torch.cat``s
  the bucket (min(bucket, n)) and reduce-scatters into partitions (min(bucket, n)/W), plus the persistent
  ``ipg`` bucket (``comm``: min(bucket, n)). Measured, the reduce adds 1.0-1.8 x the bucket: gloo's own
  copy of the collective's input is not at the peak, so it is not counted;
- DDP: nothing more (``bigseer.parallel.ddp`` uses ``gradient_as_bucket_view``: the grads are the
  reducer's buckets).

ZeRO-2 in DeepSpeed 0.19.8 fp32 keeps the gradients it averages (``averaged_gradients``, views of the
parameters' gradients) in a storage the size of the whole model at any W (measured at W = 2 and 4), so
its gradients are full-size.

``runtime`` is the memory of a process that is no tensor: the collectives' buffers and threads, oneDNN's
primitive cache, allocator arenas, DeepSpeed's engine. For CPU runs (``collectives="gloo"``, where the
plan is of RSS) it is measured once on a near-empty model (``bench_memory.py --runtime-probe``:
regnety_200mf, batch 1, 2x32, so that state and activations are a few MiB): 144 MiB for ddp/fsdp, 205 MiB
for DeepSpeed; the 149-166 MiB of non-tensor RSS read at step boundaries of larger runs agree. On GPUs
the CUDA context and NCCL's buffers live outside PyTorch's allocator and are not counted (0; not
measured here).

``measure_step_memory`` counts the same categories on a live ``Parallel`` (used to check the plan).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from bigseer.errors import ConfigError
from bigseer.models.regnet import build_regnet, count_params
from bigseer.parallel import BACKENDS  # the one list of backends (and of precisions below)
from bigseer.parallel.precision import PRECISIONS

COLLECTIVES = ("nccl", "gloo")
MIB = 2 ** 20
# per-process non-tensor RSS of CPU (gloo) runs, by engine: `bench_memory.py --runtime-probe` (module doc)
RUNTIME_GLOO = {"torch": 144 * MIB, "deepspeed": 205 * MIB}


class PlanHead(nn.Module):
    """Shape-only SwAV head: MLP ``[in, *dims]`` (Linear+bias, ReLU between) then prototypes
    ``Linear(dims[-1], K, bias=False)``; with no dims the prototypes act on the trunk features."""

    def __init__(self, in_dim: int, dims: Sequence[int], prototypes: int, device: Any = "meta") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for i, out in enumerate(dims):
            layers.append(nn.Linear(d, out, device=device))
            if i < len(dims) - 1:
                layers.append(nn.ReLU())
            d = out
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Linear(d, prototypes, bias=False, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(nn.functional.normalize(self.mlp(x), dim=1))


class PlanModel(nn.Module):
    def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head


def parse_crops(spec: str | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``"2x224+6x96"`` (the data pipeline's crop spec; ``,`` also separates) -> ``[(2, 224), (6, 96)]``."""
    if not isinstance(spec, str):
        return [(int(n), int(s)) for n, s in spec]
    from bigseer.data.multicrop import parse_crops as parse_crop_spec

    return [(g.count, g.size) for g in parse_crop_spec(spec.replace(",", "+"))]


@dataclass
class MemoryPlan:
    """Per-rank bytes by category (see the module docstring for what each counts)."""

    model: str
    backend: str
    precision: str
    world_size: int
    batch_per_gpu: int
    crops: list[tuple[int, int]]
    checkpointing: Any
    trunk_params: int
    head_params: int
    params: int
    grads: int
    optimizer: int
    activations: int
    buffers: int
    transient: int = 0  # peak temporaries: gathered FSDP/ZeRO-3 params, reduce buffers, activation grads, casts
    largest_unit: tuple[str, int] = ("", 0)  # (name, parameter elements) of the largest FSDP unit
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    comm: int = 0  # DeepSpeed's persistent ipg reduce bucket (touched part)
    runtime: int = 0  # per-process memory that is no tensor (CPU runs only; module doc)
    accumulate: int = 1  # micro-batches per step: activations are one micro-batch's, the codes all of them

    @property
    def global_batch(self) -> int:
        return self.batch_per_gpu * self.world_size * self.accumulate

    @property
    def total(self) -> int:
        return (self.params + self.grads + self.optimizer + self.activations + self.buffers + self.comm
                + self.transient + self.runtime)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total"] = self.total
        return d

    def table(self) -> str:
        gib = 1024 ** 3
        rows = [("parameters", self.params), ("gradients", self.grads), ("optimizer state", self.optimizer),
                ("activations", self.activations), ("buffers", self.buffers), ("comm buckets", self.comm),
                ("gathered/temps", self.transient), ("runtime", self.runtime), ("total", self.total)]
        head = (f"{self.model}: trunk {self.trunk_params:,} + head {self.head_params:,} params; backend "
                f"{self.backend}, {self.precision}, world {self.world_size}, batch/GPU {self.batch_per_gpu}"
                f"{f' x {self.accumulate} micro-batches' if self.accumulate > 1 else ''} (global {self.global_batch}), "
                f"crops {','.join(f'{n}x{s}' for n, s in self.crops)}, checkpointing {self.checkpointing}")
        lines = [head, f"{'per rank':<18}{'GiB':>10}{'bytes':>18}"]
        lines += [f"{name:<18}{b / gib:>10.3f}{b:>18,}" for name, b in rows]
        name, numel = self.largest_unit
        lines.append(f"largest FSDP unit: {name or '(root)'} with {numel:,} parameters")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _unit_sizes(model: nn.Module, threshold: int) -> list[tuple[str, int]]:
    """Parameter elements owned by each FSDP unit (a unit excludes the params of units nested inside)."""
    from bigseer.parallel.fsdp import fsdp_units

    seen: set[int] = set()
    sizes = []
    for name, module, _ in fsdp_units(model, threshold):  # innermost first
        n = 0
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        sizes.append((name, n))
    return sizes


def _activation_bytes(model: PlanModel, crops: list[tuple[int, int]], batch: int,
                      checkpointed: set[int]) -> tuple[int, int, int, int, int]:
    """(kept bytes, checkpointed-block input bytes, largest checkpointed block internals, largest saved
    tensor, peak of the saved bytes alive during the backward) for one step.

    The backward runs the step's graph in reverse forward order (one trunk call after the other, last
    created first): a segment's saved tensors are freed once its backward is done, and a checkpointed
    block's internals exist only while it is recomputed and differentiated. So at the backward of segment
    ``b`` what is alive is everything saved by the segments before it, plus ``b``'s own saved tensors (for a
    checkpointed block: its recomputed internals on top of its saved input); the peak is the largest such
    sum. Without checkpointing that is the whole kept total, at the start of the backward."""
    trunk, head = model.trunk, model.head
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    where: list[Any] = [None]  # (crop group index, block id) while inside a block, else None
    group: list[int] = [0]
    per_key: dict[Any, int] = {}
    largest = [0]
    block_inputs = 0
    seen: set[int] = set()
    keep: list[torch.Tensor] = []  # keeps storages alive so their ids stay unique
    # forward order: [saved bytes, input bytes kept by checkpointing (0: not checkpointed), checkpointed?]
    segments: list[list[Any]] = [[0, 0, False]]

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        if key not in params and key not in seen:
            seen.add(key)
            keep.append(t)
            per_key[where[0]] = per_key.get(where[0], 0) + t.untyped_storage().nbytes()
            largest[0] = max(largest[0], t.untyped_storage().nbytes())
            segments[-1][0] += t.untyped_storage().nbytes()
        return t

    def pre(block: nn.Module, args: tuple[Any, ...]) -> None:
        nonlocal block_inputs
        where[0] = (group[0], id(block))
        ckpt = id(block) in checkpointed
        size = args[0].numel() * args[0].element_size() if ckpt else 0
        block_inputs += size
        segments.append([0, size, ckpt])

    def post(block: nn.Module, args: Any, out: Any) -> None:
        where[0] = None
        segments.append([0, 0, False])  # what is saved outside the blocks until the next one

    handles = []
    for b in [trunk.stem, *trunk.blocks()]:  # the stem is a segment of its own (checkpointed under "all")
        handles.append(b.register_forward_pre_hook(pre))
        handles.append(b.register_forward_hook(post))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            feats = []
            for i, (n, s) in enumerate(crops):
                group[0] = i
                feats.append(trunk(torch.empty(n * batch, 3, s, s, device="meta")))
            head(torch.cat(feats))
    finally:
        for h in handles:
            h.remove()
    kept = sum(v for k, v in per_key.items() if k is None or k[1] not in checkpointed)
    inner = [v for k, v in per_key.items() if k is not None and k[1] in checkpointed]
    # backward in reverse forward order: alive = what the earlier segments keep (+ this one's own)
    alive = sum(size if ckpt else saved for saved, size, ckpt in segments)
    peak = 0
    for saved, size, ckpt in reversed(segments):
        peak = max(peak, alive + (saved if ckpt else 0))
        alive -= size if ckpt else saved
    return kept, block_inputs, max(inner, default=0), largest[0], peak


def plan_memory(model: str = "regnety_256gf", *, world_size: int = 1, backend: str = "fsdp",
                precision: str = "fp32", batch_per_gpu: int = 16, crops: str | Sequence[tuple[int, int]] = "2x224+6x96",
                checkpointing: Any = "none", head_dims: Sequence[int] = (8192, 8192, 256), prototypes: int = 16384,
                zero_stage: int = 2, optimizer_states: int = 1, large_unit_threshold: int = int(1e8),
                ds_bucket: int = int(5e7), collectives: str = "nccl", ds_max_live_parameters: int = int(1e9),
                ds_max_reuse_distance: int = int(1e9), ds_persistence: int = int(1e5),
                accumulate: int = 1) -> MemoryPlan:
    """Per-rank memory of one training step at its peak (no allocation: meta model). ``optimizer_states`` =
    tensors of optimizer state per parameter (LARS/SGD momentum: 1, Adam: 2); ``ds_bucket`` = DeepSpeed
    ``reduce_bucket_size`` (elements); ``collectives`` = ``"nccl"`` (GPU) or ``"gloo"`` (CPU runs);
    ``ds_max_*`` = ZeRO-3's ``stage3_max_live_parameters`` / ``stage3_max_reuse_distance``; ``ds_persistence`` =
    ZeRO-3's ``stage3_param_persistence_threshold``; ``accumulate`` = micro-batches per step (``batch_per_gpu``
    is one micro-batch: its activations are counted; the scores of all of them are held for the codes)."""
    t0 = time.perf_counter()
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is invalid: choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is invalid: choose one of {', '.join(PRECISIONS)}")
    if collectives not in COLLECTIVES:
        raise ConfigError(f"collectives={collectives!r} is invalid: choose one of {', '.join(COLLECTIVES)}")
    for name, v in (("world_size", world_size), ("batch_per_gpu", batch_per_gpu), ("prototypes", prototypes),
                    ("accumulate", accumulate)):
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name}={v!r} is invalid: must be a positive integer")
    for name, v in (("ds_bucket", ds_bucket), ("ds_max_live_parameters", ds_max_live_parameters),
                    ("ds_max_reuse_distance", ds_max_reuse_distance), ("ds_persistence", ds_persistence)):
        if not isinstance(v, int) or v < 0:
            raise ConfigError(f"{name}={v!r} is invalid: must be an integer >= 0")
    if backend == "deepspeed" and zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"zero_stage={zero_stage!r} is invalid: must be 0, 1, 2 or 3")
    crop_list = parse_crops(crops)
    trunk = build_regnet(model, device="meta")
    from bigseer.parallel.checkpointing import select_blocks

    chosen = {id(b) for b in select_blocks(trunk, checkpointing)}
    head = PlanHead(trunk.num_features, list(head_dims), prototypes)
    whole = PlanModel(trunk, head)
    n_trunk, n_head = count_params(trunk), count_params(head)
    n = n_trunk + n_head
    W = world_size
    f32 = 4
    low = precision != "fp32"
    compute = 2 if low else 4
    notes: list[str] = []

    sizes = _unit_sizes(whole, large_unit_threshold)
    largest = max(sizes, key=lambda s: s[1])
    unit = largest[1]
    kept, block_in, recompute, biggest_saved, peak_saved = _activation_bytes(whole, crop_list, batch_per_gpu, chosen)
    activations = peak_saved  # <= kept + block_in + recompute (module doc: the backward frees as it goes)
    act_grads = 2 * biggest_saved  # grad_output + grad_input of the op being differentiated
    if low:
        activations //= 2
        act_grads //= 2
        notes.append("activations halved for bf16/fp16 compute (BN statistics and the loss stay fp32)")

    transient = 0
    comm = 0
    shard = -(-n // W)
    if backend == "ddp":
        # grads are the reducer's bucket views (gradient_as_bucket_view=True in bigseer.parallel.ddp): no copy
        params, grads, opt = n * f32, n * f32, optimizer_states * n * f32
        if low:
            transient = n * compute  # autocast's cached low-precision weight copies
    elif backend in ("fsdp", "fairscale"):
        params = shard * f32
        grads = shard * f32
        opt = optimizer_states * shard * f32
        if W > 1:  # see the module docstring: FSDP2 all-gather / foreach_reduce buffers of the largest unit
            if collectives == "gloo":  # measured
                calls = len({size for _, size in crop_list})  # one trunk call per crop resolution
                transient = (1 + 2 * (calls - 1)) * unit * f32
            else:  # the mechanism's bound
                forward = 3 * unit * compute
                reduce = max(2 * unit, unit + -(-unit // W)) * f32
                transient = max(forward, 2 * unit * compute + reduce)
    else:
        ds_fp16 = precision == "fp16"  # DeepSpeed's own fp16 (GPU); bf16 runs as fp32 + autocast
        p_el = 2 if ds_fp16 else 4
        bucket = min(ds_bucket, n)
        params = n * p_el if zero_stage < 3 else shard * p_el
        opt = optimizer_states * shard * f32 + (shard * f32 if zero_stage >= 1 else 0)  # + fp32 master partition
        if zero_stage == 0:
            opt = optimizer_states * n * f32
        if zero_stage == 3:
            # small parameters stay whole on every rank; the fp32 partition is its own master unless fp16
            params += sum(q.numel() for q in whole.parameters() if q.numel() <= ds_persistence) * p_el
            if not ds_fp16:
                opt = optimizer_states * shard * f32
        if zero_stage <= 2:
            grads = n * p_el  # ZeRO-2: averaged_gradients live in a whole-model-size storage (module doc)
            if zero_stage == 2 and W > 1 and n > ds_bucket:
                comm = min(n, 2 * ds_bucket) * p_el  # overlap_comm's two ipg buffers, touched (module doc)
        else:
            grads = shard * p_el  # grad_partitions_flat_buffer
            if W > 1:
                comm = bucket * p_el
                # kept: params reused within the reuse distance, up to the live cap; at least the unit in use
                # and the prefetched one
                gathered = max(2 * unit, min(n, ds_max_live_parameters, ds_max_reuse_distance))
                reduce = bucket + -(-bucket // W)  # cat + partitions (gloo's copy: not at the peak, module doc)
                transient = (gathered + reduce) * p_el
        notes.append("deepspeed: fp32 master partition counted in optimizer state (ZeRO-3: only with DeepSpeed "
                     "fp16); ipg bucket of ds_bucket elements (touched part) in comm buckets")
    transient += act_grads
    runtime = 0
    if collectives == "gloo":
        runtime = RUNTIME_GLOO["deepspeed" if backend == "deepspeed" else "torch"]
        notes.append(f"runtime: {runtime // MIB} MiB of per-process non-tensor RSS (CPU runs, measured)")
    else:
        notes.append("runtime: the CUDA context and NCCL buffers are outside PyTorch's allocator, not counted")
    buffers = sum(b.numel() * b.element_size() for b in trunk.buffers())
    if accumulate > 1:  # bigseer.trainer.accumulated_swav_step: scores of 2 assignment crops x every micro-batch
        codes = 2 * accumulate * batch_per_gpu * prototypes * f32
        transient += codes + 2 * buffers  # and the BN statistics at the step's start and their running sum
        notes.append(f"accumulate {accumulate}: activations of one micro-batch of {batch_per_gpu}; the assignment "
                     f"scores of all {accumulate} micro-batches ({codes / MIB:.1f} MiB) in gathered/temps")
    return MemoryPlan(model=model, backend=backend if backend != "deepspeed" else f"deepspeed-zero{zero_stage}",
                      precision=precision, world_size=W, batch_per_gpu=batch_per_gpu, crops=crop_list,
                      checkpointing=checkpointing, trunk_params=n_trunk, head_params=n_head, params=params,
                      grads=grads, optimizer=opt, activations=activations, buffers=buffers, transient=transient,
                      largest_unit=largest, notes=notes, seconds=time.perf_counter() - t0, comm=comm,
                      runtime=runtime, accumulate=accumulate)


def _storage_bytes(tensors: Any) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        t = t.to_local() if hasattr(t, "to_local") else t
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def measure_step_memory(p: Any, run_forward: Callable[[], torch.Tensor]) -> dict[str, int]:
    """Bytes this rank holds in each plan category during one real step of ``Parallel`` ``p``: local
    parameter and gradient storages, optimizer state, buffers, and the activations autograd saved in the
    forward (``run_forward()`` returns the loss). Runs forward, backward and step."""
    model = p.unwrapped
    param_ptrs = set()
    for t in model.parameters():
        t = t.to_local() if hasattr(t, "to_local") else t
        param_ptrs.add(t.untyped_storage().data_ptr())
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_ptrs and not isinstance(t, nn.Parameter):
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = run_forward()
    activations = sum(saved.values())
    p.backward(loss)
    grads = _storage_bytes(t.grad for t in model.parameters())
    p.step()
    opt_tensors = [v for st in p.optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    return {"params": _storage_bytes(model.parameters()), "grads": grads, "optimizer": _storage_bytes(opt_tensors),
            "activations": activations, "buffers": _storage_bytes(model.buffers())}
