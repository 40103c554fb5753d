"""Checkpoints written atomically: everything goes to a temporary directory that is renamed
into place only when complete, so a crash never leaves a half checkpoint.

    <run>/checkpoint-000040/
        model/          safetensors weights (full model, or the LoRA adapter) + tokenizer
        optimizer.pt    optimizer state
        scheduler.pt    LR scheduler state
        rng.pt          torch / python / numpy RNG states
        state.json      step, skipped steps, data fingerprint ...
        config.yaml     the resolved run config
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from dpokit.config import save_config

PREFIX = "checkpoint-"


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def assert_finite_parameters(model) -> None:
    """Refuse to save weights that contain NaN or inf."""
    for name, p in model.named_parameters():
        if p.requires_grad and not torch.isfinite(p).all():
            raise FloatingPointError(f"parameter {name} holds NaN/inf; not saving a checkpoint")


def atomic_directory(final: Path, write) -> Path:
    """Call `write(tmp_dir)`, then move tmp_dir to `final` (replacing an older one)."""
    final = Path(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def save_final_model(model, tokenizer, out_dir: Path, cfg=None, extra_files: dict | None = None) -> Path:
    """The trained model, loadable with plain `from_pretrained` (or peft for an adapter)."""
    from dpokit.models import save_model

    assert_finite_parameters(model)

    def write(tmp: Path) -> None:
        save_model(model, tokenizer, tmp)
        if cfg is not None:
            save_config(cfg, tmp / "dpokit_config.yaml")
        for name, content in (extra_files or {}).items():
            (tmp / name).write_text(content)

    return atomic_directory(out_dir, write)


def save_checkpoint(run_dir: Path, step: int, *, model, tokenizer, optimizer, scheduler, state: dict, cfg) -> Path:
    from dpokit.models import save_model

    assert_finite_parameters(model)

    def write(tmp: Path) -> None:
        save_model(model, tokenizer, tmp / "model")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(
            {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
            tmp / "rng.pt",
        )
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        save_config(cfg, tmp / "config.yaml")

    return atomic_directory(Path(run_dir) / f"{PREFIX}{step:06d}", write)


def list_checkpoints(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").exists())


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)


def load_trainable_state(model, model_dir: Path) -> None:
    """Load weights saved by `save_model` into an already-built model (same architecture,
    same LoRA settings)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {model_dir}")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    if is_peft(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, state)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{model_dir}: adapter weights do not match the model: {unexpected[:3]}")
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"{model_dir}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_checkpoint(ckpt: Path, *, model, optimizer, scheduler) -> dict:
    """Restore model, optimizer, scheduler and RNG state; return state.json."""
    ckpt = Path(ckpt)
    load_trainable_state(model, ckpt / "model")
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    rng = torch.load(ckpt / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return json.loads((ckpt / "state.json").read_text())
