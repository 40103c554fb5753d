"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math

import torch


def build_optimizer(params, cfg, head=None) -> torch.optim.Optimizer:
    """The optimizer of `params`; with `head` (a reward model's scalar head) and cfg.head_lr > 0,
    the head's parameters form a second group at head_lr (the schedule scales both)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    if head is not None and getattr(cfg, "head_lr", 0) > 0:
        head_ids = {id(p) for p in head.parameters()}
        params = [{"params": [p for p in params if id(p) not in head_ids]},
                  {"params": [p for p in params if id(p) in head_ids], "lr": cfg.head_lr}]
    if cfg.optimizer == "adamw":
        return adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw8bit":
        return adamw8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        # The DPO paper's choice (Rafailov et al. 2023, App. B).
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: adamw, adamw8bit, rmsprop")


def adamw8bit(params, **kwargs) -> torch.optim.Optimizer:
    """AdamW with both moments stored in 8 bits (torchao's AdamW8bit: block-wise dynamic
    quantisation, blocks of 256 values with one scale each; tensors under 4096 values stay
    fp32): about 2 bytes per parameter of optimizer state instead of 8. The update runs in
    fp32 from the dequantised moments, compiled by torch.compile on first use (about a minute
    on 2 CPU cores). Opt-in; its effect on the loss curve is measured in benchmarks/README.md."""
    import logging

    from dpokit.config import ConfigError

    # torchao reports its missing CUDA-only kernels as warnings on import; they are not used here.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        from torchao.optim import AdamW8bit
    except ImportError:
        raise ConfigError("optimizer=adamw8bit needs torchao: pip install torchao==0.18.0 (or pip install -e '.[lowmem]')") from None
    return AdamW8bit(params, **kwargs)


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW, fused where torch has the kernel: it does the whole update in one pass per tensor
    (measured 0.20 s -> 0.06 s per step for the 135M model on 2 cores; the same update up to float
    rounding). `params`: tensors or param-group dicts."""
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    return torch.optim.AdamW(params, fused=_fused_ok(tensors), **kwargs)


def _fused_ok(params) -> bool:
    """torch's fused AdamW takes floating tensors on CPU/CUDA (and a few other devices)."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based):
    linear warmup over `warmup_steps`, then constant, linear decay to 0 or cosine decay to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}; valid: constant, linear, cosine")


def build_scheduler(optimizer, cfg, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, warmup_steps=cfg.warmup_steps, total_steps=total_steps, schedule=cfg.schedule),
    )
