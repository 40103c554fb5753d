"""FSDP checkpoints: the sharded layout of dpokit.train.checkpoint, written and restored by
every rank together (collectives).

    <run>/checkpoint-000040/
        model/                  tokenizer and model config only (for people)
        model-shards/           the weights, one safetensors file per rank
        optimizer-shards/       the optimizer's tensors, one safetensors file per rank
        optimizer.json          the optimizer settings by parameter name ({"by_name": ...})
        scheduler.json, rng.*, state.json ("layout": "sharded", "processes": N), config.yaml
                                as in the full layout

The shards are torch.distributed.checkpoint's safetensors storage: each shard's offsets are
JSON in its file's header, so any number of ranks can read them back (resume on another
process count). Checking a checkpoint before restoring stays in
`dpokit.train.checkpoint.read_checkpoint(..., sharded=True)`; the same atomic write (temp
directory, fsync, rename) and pickle refusal apply.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dpokit.config import save_config
from dpokit.train.checkpoint import (
    OPTIMIZER_JSON,
    PREFIX,
    SHARDED,
    SHARDED_MODEL,
    SHARDED_OPTIMIZER,
    Checkpoint,
    CheckpointError,
    _commit,
    _fresh_temp,
    _restore_scheduler_and_rng,
    _same_kind,
    _write_json,
    _write_run_state,
    atomic_directory,
)


def save_sharded_checkpoint(run_dir: Path, step: int, *, model, tokenizer, optimizer, scheduler, state: dict, cfg, place) -> Path:
    """FSDP: checkpoint-<step> with the weights and optimizer tensors as shards, one safetensors
    file per rank in SHARDED_MODEL / SHARDED_OPTIMIZER (torch.distributed.checkpoint, offsets in
    each file's JSON header); rank 0 writes the JSON files (optimizer.json: the settings by
    parameter name), the tokenizer and model config (model/, for people). Every rank calls it:
    the shards are gathered by no one. Readable on any number of processes (`restore_sharded`)."""
    from dpokit import accel

    final = Path(run_dir) / f"{PREFIX}{step:06d}"
    pid = accel.broadcast_int(os.getpid(), place)  # rank 0's pid names the one temp dir
    tmp = _fresh_temp(final, pid) if place.is_main else final.parent / f".{final.name}.tmp-{pid}"
    accel.barrier(place)
    weights = accel.model_state(model)
    for name, value in weights.items():
        if not torch.isfinite(value.to_local() if hasattr(value, "to_local") else value).all():
            raise FloatingPointError(f"parameter {name} holds NaN/inf; not saving a checkpoint")
    opt_tensors, opt_rest = accel.optimizer_state(model, optimizer)
    accel.save_shards(weights, tmp / SHARDED_MODEL)
    accel.save_shards(opt_tensors, tmp / SHARDED_OPTIMIZER)
    if place.is_main:
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        model.config.save_pretrained(tmp / "model")
        _write_json(tmp / OPTIMIZER_JSON, {"by_name": opt_rest})
        _write_run_state(tmp, scheduler=scheduler, state={**state, "layout": SHARDED, "processes": place.world_size}, cfg=cfg, step=step)
    accel.barrier(place)
    if place.is_main:
        _commit(tmp, final, pid)
    accel.barrier(place)
    return final


def save_full_model_sharded(model, tokenizer, out_dir: Path, cfg, extra_files: dict, place) -> Path:
    """FSDP: the final model as `save_final_model` writes it, from the whole weights gathered on
    rank 0 (a collective: every rank calls it, rank 0 writes)."""
    from dpokit import accel

    weights = accel.model_state(model, full=True)
    if not place.is_main:
        return Path(out_dir)
    for name, value in weights.items():
        if not torch.isfinite(value).all():
            raise FloatingPointError(f"parameter {name} holds NaN/inf; not saving a checkpoint")

    def write(tmp: Path) -> None:
        # Both transformers and peft take the state dict; peft keeps only the adapter from it.
        model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_config(cfg, tmp / "dpokit_config.yaml")
        for name, content in extra_files.items():
            (tmp / name).write_text(content)

    return atomic_directory(out_dir, write)


def restore_sharded(ck: Checkpoint, *, model, optimizer, scheduler) -> None:
    """FSDP: `restore_checkpoint` for the sharded layout; every rank reads the slices of the
    shards it holds (any number of ranks may have written them). Collective."""
    from dpokit import accel

    current = accel.optimizer_state(model, optimizer)[1]
    rest = {}
    for key, value in current.items():  # JSON made tuples (betas) lists
        saved = ck.optimizer.get(key)
        if key not in ck.optimizer or not _same_kind(saved, value):
            raise CheckpointError(f"{ck.path / OPTIMIZER_JSON}: {key!r} missing or not like this run's optimizer setting")
        rest[key] = tuple(saved) if isinstance(value, tuple) else saved
    try:
        accel.load_sharded_state(model, optimizer, ck.path / SHARDED_MODEL, ck.path / SHARDED_OPTIMIZER, rest)
    except Exception as e:  # torch.distributed.checkpoint raises its own CheckpointException
        raise CheckpointError(f"{ck.path}: shards do not fit this model ({str(e).strip().splitlines()[-1][:300]})") from None
    _restore_scheduler_and_rng(ck, scheduler)
