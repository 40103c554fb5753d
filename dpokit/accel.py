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

Data parallelism is accelerate's DistributedDataParallel (FSDP / DeepSpeed launch configs are
refused by the trainer for now: dpokit.train.loop.check_data_parallel): gradients are reduced by
the engine, never here. dpokit's loss code
calls the model's body and head directly (the chunked head, the packed block mask), not the
model's own forward, so the policy is wrapped in `FunctionRunner` first: the engine's wrapper
then sees every forward pass, as it must to reduce that pass's gradients.
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


def _state():
    from accelerate import PartialState

    # cpu=True where there is no GPU: accelerate then runs several CPU processes over gloo
    # (without it, torchrun's ranks on a CPU-only machine would each think they are alone).
    return PartialState(cpu=not torch.cuda.is_available())


def launched_processes() -> int:
    """How many processes the launcher (accelerate launch, torchrun) started; 1 without one.
    Read from the environment, without starting a process group."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def current() -> Placement:
    """This process's device, rank and world size (initialises the process group once)."""
    state = _state()
    # A GPU rank keeps its index; accelerate gives CPU ranks index 0, but they share one device.
    device = state.device if state.device.type == "cuda" else torch.device(state.device.type)
    return Placement(device, state.process_index, state.num_processes, state.distributed_type.name)


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


def resolve(cfg, placement: Placement | None = None):
    """`cfg` with its precision decided for this placement: `autocast_bf16` set from
    `mixed_precision` (an explicit `autocast_bf16: true` is kept: it means bf16)."""
    placement = placement or current()
    bf16 = cfg.autocast_bf16 or bf16_autocast_wanted(cfg.mixed_precision, placement.device)
    return dataclasses.replace(cfg, autocast_bf16=bf16)


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
        return fn(self.model, *args, **kwargs)


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
