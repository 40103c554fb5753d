"""Where a run computes: the one place that decides device, precision and process layout.

Device and processes come from accelerate's `PartialState`, which reads what `accelerate
launch` or `torchrun` put in the environment: one process on CUDA when a GPU is present, else
on the CPU; with `accelerate launch --num_processes N` / `torchrun --nproc_per_node N`, N
data-parallel ranks (NCCL on GPUs, gloo on CPUs). Nothing else in dpokit names a device.

Precision: `mixed_precision` in the config. "auto" (the default) is bf16 autocast on a CUDA
device that supports it and fp32 on the CPU, where bf16 is faster on some cores but moves
per-pair log-probs by up to ~1.4 nats (measured on the 135M model): opt-in there; "bf16" or
"no" force it. Weights stay in the config's `dtype` (float32 by default) and log-softmax always
runs in fp32 (dpokit.logprobs), so autocast touches the matmuls only.

Data parallelism: accelerate's DistributedDataParallel, or FSDP2 (torch's `fully_shard`) when
the launch config asks for FSDP; DeepSpeed launch configs are refused by the trainer
(dpokit.train.loop.check_data_parallel). Gradients are reduced by the engine, never here.
dpokit's loss code calls the model's body and head directly (the chunked head, the packed block
mask), not the model's own forward, so the policy is wrapped in `FunctionRunner` first: the
engine's wrapper then sees every forward pass, as it must to reduce that pass's gradients.

Why dpokit calls `fully_shard` itself: accelerate 1.15 turns an FSDP launch config into its FSDP
engine only for accelerator devices (`AcceleratorState.__init__` switches to FSDP inside the
`distributed_type in [MULTI_GPU, MULTI_NPU, ...]` branch; MULTI_CPU is not in it), so on CPU
processes its Accelerator silently hands back DDP. torch's FSDP2 itself runs on a CPU mesh over
gloo. So the FSDP path reads the launch config's fsdp_* settings through accelerate's own
`FullyShardedDataParallelPlugin`, picks the wrapped layers with accelerate's own policy function
(`fsdp2_prepare_auto_wrap_policy`: one unit per decoder layer, `_no_split_modules`), and calls
torch's `fully_shard` as accelerate does, the same way on CPU and GPU. Checkpoints go through
torch.distributed.checkpoint with its safetensors storage (`HuggingFaceStorageWriter`): every
rank writes its shard, offsets in the file's JSON header; accelerate's `save_state` is not used
because its DCP files need `pickle.load` to read back (`FileSystemReader.read_metadata`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass

import torch

MIXED_PRECISION = ("auto", "no", "bf16")


@dataclass(frozen=True)
class Placement:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    kind: str = "NO"  # accelerate's DistributedType name: NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.kind not in ("NO",)

    @property
    def fsdp(self) -> bool:
        return self.kind == "FSDP"


def _state():
    from accelerate import PartialState

    # cpu=True where there is no GPU: accelerate then runs several CPU processes over gloo
    # (without it, torchrun's ranks on a CPU-only machine would each think they are alone).
    return PartialState(cpu=not torch.cuda.is_available())


def launched_processes() -> int:
    """How many processes the launcher (accelerate launch, torchrun) started; 1 without one.
    Read from the environment, without starting a process group."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def requested_engine() -> str | None:
    """"FSDP" or "DEEPSPEED" when the launcher was given such a config (`accelerate launch`
    writes ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED), else None. Read here because
    `PartialState` reports MULTI_CPU for both on CPU processes: without this, an FSDP or
    DeepSpeed launch would silently train as DDP."""
    for kind, var in (("FSDP", "ACCELERATE_USE_FSDP"), ("DEEPSPEED", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(var, "false").lower() == "true":
            return kind
    return None


def current() -> Placement:
    """This process's device, rank and world size (initialises the process group once)."""
    state = _state()
    # A GPU rank keeps its index; accelerate gives CPU ranks index 0, but they share one device.
    device = state.device if state.device.type == "cuda" else torch.device(state.device.type)
    kind = state.distributed_type.name
    if kind != "NO" and requested_engine():
        kind = requested_engine()
    return Placement(device, state.process_index, state.num_processes, kind)


def bf16_autocast_wanted(setting: str, device: torch.device) -> bool:
    """Whether a run with `mixed_precision=setting` on `device` computes under bf16 autocast.
    "auto": on CUDA devices with bf16 support, or when `accelerate launch` was told bf16."""
    if setting not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, not {setting!r}")
    if setting != "auto":
        return setting == "bf16"
    if os.environ.get("ACCELERATE_MIXED_PRECISION") == "bf16":
        return True
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def config_wants_bf16(cfg, device: torch.device | None = None) -> bool:
    """Whether a config (its `mixed_precision`, or the older `autocast_bf16: true`, which means
    bf16) computes under bf16 autocast on `device` (this process's device when None). Training
    (`resolve`) and the instructions study's sampling both ask this."""
    return bool(cfg.autocast_bf16) or bf16_autocast_wanted(cfg.mixed_precision, device or current().device)


def resolve(cfg, placement: Placement | None = None):
    """`cfg` with its precision decided for this placement: `autocast_bf16` set from
    `mixed_precision` (an explicit `autocast_bf16: true` is kept: it means bf16)."""
    placement = placement or current()
    return dataclasses.replace(cfg, autocast_bf16=config_wants_bf16(cfg, placement.device))


def autocast(enabled: bool, device: torch.device | str | None = None):
    """bf16 autocast on `device`'s type (this process's device when None), or nothing."""
    if not enabled:
        return contextlib.nullcontext()
    device_type = torch.device(device).type if device is not None else current().device.type
    return torch.autocast(device_type, dtype=torch.bfloat16)


class FunctionRunner(torch.nn.Module):
    """Holds a model and runs `fn(model, *args)` as its forward (see module docstring)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return _own(fn(self.model, *args, **kwargs))


def _own(out):
    """Outputs that are views (slices of one tensor) as tensors of their own: FSDP2 hooks the
    root's outputs for its backward, and warns that an in-place op on a view would lose the hook.
    The outputs are a few numbers per pair; the copy costs nothing measurable."""
    if isinstance(out, (tuple, list)):
        return type(out)(_own(o) for o in out)
    return out.clone() if torch.is_tensor(out) and out._base is not None else out


def call(model, fn, *args, **kwargs):
    """fn(model, *args, **kwargs) — through the engine's wrapper when `model` is one around a
    FunctionRunner, so that the engine sees the forward pass."""
    inner = getattr(model, "module", None)
    if isinstance(model, FunctionRunner) or isinstance(inner, FunctionRunner):
        return model(fn, *args, **kwargs)
    return fn(model, *args, **kwargs)


def shard(items: list, placement: Placement) -> list:
    """This rank's contiguous share of `items` (sizes differ by at most one; a rank may get
    none when there are fewer items than ranks)."""
    n, w, r = len(items), placement.world_size, placement.rank
    per, extra = divmod(n, w)
    start = r * per + min(r, extra)
    return items[start : start + per + (1 if r < extra else 0)]


def sum_across(values: torch.Tensor, placement: Placement) -> torch.Tensor:
    """Elementwise sum of a float64 vector over all ranks (the vector itself in one process).
    Tensors only: nothing is pickled between ranks."""
    if placement.world_size == 1:
        return values
    total = values.to(device=placement.device, dtype=torch.float64).clone()
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return total.cpu()


def all_true(flag: bool, placement: Placement) -> bool:
    """True when `flag` holds on every rank (a non-finite loss on one rank skips the step on all)."""
    if placement.world_size == 1:
        return bool(flag)
    votes = sum_across(torch.tensor([0.0 if flag else 1.0], dtype=torch.float64), placement)
    return float(votes[0]) == 0.0


def barrier(placement: Placement) -> None:
    if placement.world_size > 1:
        _state().wait_for_everyone()


def make_accelerator():
    """accelerate's Accelerator for a data-parallel run (reads the launch config: DDP, FSDP,
    DeepSpeed). Single-process runs do not need one: the model is moved to the device only."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # No buffer broadcast in forward: it is a collective in every DDP forward, so ranks with
    # different numbers of micro-batches (or of evaluation batches) would wait on each other
    # forever. The buffers of these models (rotary frequencies) are the same on every rank.
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    return Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])


# -- FSDP2 (see the module docstring for why dpokit calls fully_shard) ---------------------------
def fsdp_settings():
    """The launch config's fsdp_* settings, as accelerate reads them from the environment."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin()


def shard_model(runner: FunctionRunner) -> torch.nn.Module:
    """`runner` sharded by FSDP2 as accelerate's `fsdp2_prepare_model` shards a model: each layer
    its policy selects (the decoder layers) is its own unit, bottom-up, then the root (embeddings,
    final norm, tied head) with torch's default of keeping the root gathered until backward.
    Weights stay in their dtype (bf16 comes from autocast, as on one device)."""
    from accelerate.utils import get_module_children_bottom_up
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.fsdp import FSDPModule, fully_shard

    plugin, model = fsdp_settings(), runner.model
    plugin.set_auto_wrap_policy(model)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    for module in get_module_children_bottom_up(model)[:-1] if policy else []:
        if policy(module) and not isinstance(module, FSDPModule):
            fully_shard(module, reshard_after_forward=plugin.reshard_after_forward)
    fully_shard(runner)
    return runner


def no_sync(accelerator, engine, placement: Placement):
    """Accumulate this backward's gradients locally (no reduction): DDP's no_sync, or FSDP2's
    `set_requires_gradient_sync(False)` (what accelerate's no_sync does for FSDP2)."""
    if not placement.fsdp:
        return accelerator.no_sync(engine)

    @contextlib.contextmanager
    def unsynced():
        engine.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            engine.set_requires_gradient_sync(True)

    return unsynced()


def to_float(value) -> float:
    """A norm from torch's clipping as a float; a DTensor (FSDP) is gathered first."""
    return float(value.full_tensor() if hasattr(value, "full_tensor") else value)


def total_grad_norm(parameters) -> float:
    """L2 norm of all gradients, FSDP's sharded ones included (gathered, one collective)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return to_float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def max_across(value: int, placement: Placement) -> int:
    """The largest `value` over all ranks."""
    if placement.world_size == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=placement.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def broadcast_int(value: int, placement: Placement) -> int:
    """Rank 0's `value` on every rank (a tensor: nothing pickled)."""
    if placement.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=placement.device)
    torch.distributed.broadcast(t, src=0)
    return int(t.item())


def _aliases(model) -> set[str]:
    """Names under which a parameter appears a second time (tied input/output embeddings): a
    state dict keeps it once, as `named_parameters` does."""
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return every - {name for name, _ in model.named_parameters()}


def model_state(model, *, full: bool = False) -> dict:
    """The model's state dict under FSDP: this rank's shards (DTensors), or with `full` the
    whole tensors on rank 0's CPU (empty on the other ranks). Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=full, cpu_offload=full))
    aliases = _aliases(model)
    return {k: v for k, v in state.items() if k not in aliases}


def optimizer_state(model, optimizer) -> tuple[dict, dict]:
    """(tensors, the rest) of the optimizer's state under FSDP, keyed by parameter name
    ("state.<name>.exp_avg", "param_groups.<name>.lr"): torch's flattened layout, whose keys do
    not depend on how the parameters are sharded. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    flat = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(flatten_optimizer_state_dict=True))
    tensors = {k: v for k, v in flat.items() if torch.is_tensor(v)}
    return tensors, {k: v for k, v in flat.items() if not torch.is_tensor(v)}


def save_shards(tensors: dict, folder) -> None:
    """Every rank writes its shards of `tensors` to one safetensors file in `folder`
    (torch.distributed.checkpoint; each shard's offsets are JSON in the file's header)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=True))


def load_shards(tensors: dict, folder) -> None:
    """Fill `tensors` in place from the shards in `folder`, whatever number of ranks wrote them
    (each rank reads the slices it holds)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(folder)))


def load_sharded_state(model, optimizer, model_dir, optimizer_dir, optimizer_rest: dict) -> None:
    """Weights and optimizer state of a sharded checkpoint into the FSDP model and its optimizer.
    `optimizer_rest`: the non-tensor entries (learning rates, betas) as `optimizer_state` gave
    them. Raises ValueError naming what does not fit."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    weights = model_state(model)
    load_shards(weights, model_dir)
    result = set_model_state_dict(model, weights, options=StateDictOptions(strict=False))
    missing = set(result.missing_keys) - _aliases(model)
    if missing or result.unexpected_keys:
        raise ValueError(f"weights do not match the model (missing {sorted(missing)[:3]}, unexpected {result.unexpected_keys[:3]})")
    tensors, rest = optimizer_state(model, optimizer)
    if set(optimizer_rest) != set(rest):
        raise ValueError(f"optimizer settings are for other parameters ({sorted(set(rest) ^ set(optimizer_rest))[:3]})")
    load_shards(tensors, optimizer_dir)
    set_optimizer_state_dict(model, optimizer, {**tensors, **optimizer_rest},
                             options=StateDictOptions(flatten_optimizer_state_dict=True))
