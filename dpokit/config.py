"""One config object per run: dataclasses filled from YAML, then `key=value` overrides.

Unknown keys are rejected with the list of valid ones; values are checked against the field
types; the resolved config is written beside the run's checkpoints (`config.yaml`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class LoraConfig:
    r: int = 0  # LoRA rank; 0 trains the full model
    alpha: int = 16  # LoRA scaling numerator (scale = alpha / r)
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TrainConfig:
    # --- what to train -------------------------------------------------------------
    objective: str = "dpo"  # dpo (any pairwise loss below) | sft (NLL on the chosen completion)
    model: str = "smollm2-135m-instruct"  # local dir, locally cached hub id, or the bundled alias
    ref_model: str | None = None  # reference policy; None = the starting model
    dtype: str = "float32"  # float32 | bfloat16 (weights)
    autocast_bf16: bool = False  # bf16 autocast for matmuls, fp32 weights and log-softmax
    lora: LoraConfig = field(default_factory=LoraConfig)
    # --- data ------------------------------------------------------------------------
    data: str = "examples/pairs.jsonl"  # JSONL / JSON / Parquet / datasets dir
    split: str | None = None  # split of a datasets dir (default train)
    eval_data: str | None = None  # held-out file; None = carve eval_fraction out of `data`
    eval_fraction: float = 0.1
    on_malformed: str = "raise"  # raise | skip (counted)
    max_length: int = 512  # prompt + completion tokens
    max_prompt_length: int = 256  # longer prompts keep their end
    prompt_overflow: str = "truncate"  # truncate | skip
    # --- loss ------------------------------------------------------------------------
    loss: str = "dpo"  # dpo | cdpo | robust | ipo | hinge | soft | simpo | orpo (last two: no reference)
    beta: float = 0.1
    label_smoothing: float = 0.0  # ε of cdpo / robust
    average_logps: bool | None = None  # per-token mean log-probs in h; None = the loss's default
    rpo_alpha: float = 0.0  # weight of NLL(chosen)/|chosen| added to the pairwise loss (RPO)
    simpo_gamma: float = 0.5  # SimPO target margin γ in −log σ(βℓc − βℓr − γ); paper: β≈2–2.5, γ/β≈0.5
    orpo_lambda: float = 0.1  # ORPO weight λ of the odds-ratio term beside NLL(chosen)/|chosen| (0.1–0.25)
    reference: str = "cached"  # cached (on disk) | copy (frozen copy) | adapter (LoRA disabled)
    # --- optimisation ----------------------------------------------------------------
    optimizer: str = "adamw"  # adamw | rmsprop
    lr: float = 5e-6
    weight_decay: float = 0.0
    schedule: str = "linear"  # constant | linear | cosine (after warmup)
    warmup_steps: int = 0
    max_steps: int = 0  # optimizer steps; 0 = run `epochs`
    epochs: float = 1.0
    batch_size: int = 4  # pairs per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    microbatch_tokens: int = 0  # > 0: split each step's pairs into micro-batches of ≤ this many packed tokens
    max_grad_norm: float = 1.0  # 0 disables clipping
    max_consecutive_skips: int = 5  # stop the run after this many non-finite steps in a row (≥ 1)
    seed: int = 0
    # --- engine ----------------------------------------------------------------------
    packing: bool = True  # prompt encoded once per pair ([prompt|chosen|rejected], block mask)
    pack_tokens: int = 1024  # most tokens in one packed row; within it the cheapest layout (packing.plan_rows)
    chunk_size: int = 2048  # tokens per output-head chunk
    gradient_checkpointing: bool = False
    tune_malloc: bool = True  # keep freed memory in the process (glibc): +25% steps/s on CPU
    optimizer_in_backward: bool = False  # update each parameter in backward, free its gradient (needs max_grad_norm 0, grad_accum 1)
    # --- evaluation, logging, checkpoints --------------------------------------------
    eval_every: int = 0  # steps between held-out evaluations; 0 = only at the end
    log_every: int = 1
    save_every: int = 0  # steps between checkpoints; 0 = only the final model
    keep_checkpoints: int = 2
    output_dir: str = "runs/dpo"
    cache_dir: str | None = None  # default $DPOKIT_CACHE or ~/.cache/dpokit
    progress: bool = True


# ------------------------------------------------------------------------------------------
def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check / convert `value` to the annotated type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, key) for v in value]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "3e-5" (no dot) as a string; accept what float() accepts.
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from a nested dict; unknown keys raise with the valid list."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = _field_types(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        where = f" in '{prefix.rstrip('.')}'" if prefix else ""
        raise ConfigError(f"unknown config key(s){where}: {', '.join(unknown)}; valid keys: {', '.join(sorted(hints))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if _is_dataclass_type(tp):
            kwargs[name] = from_dict(tp, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def parse_overrides(pairs: list[str]) -> dict:
    """`["beta=0.1", "lora.r=8"]` → `{"beta": 0.1, "lora": {"r": 8}}` (values parsed as YAML)."""
    out: dict = {}
    for item in pairs:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None):
    """Defaults ← `base` ← YAML file ← CLI overrides, validated into `cls`."""
    data = dict(base or {})
    if path is not None:
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = deep_merge(data, loaded)
    data = deep_merge(data, parse_overrides(overrides or []))
    cfg = from_dict(cls, data)
    validate = getattr(cfg, "validate", None)
    if validate is None and isinstance(cfg, TrainConfig):
        validate_train_config(cfg)
    elif validate is not None:
        validate()
    return cfg


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


_CHOICES = {
    "objective": ("dpo", "sft"),
    "dtype": ("float32", "bfloat16"),
    "on_malformed": ("raise", "skip"),
    "prompt_overflow": ("truncate", "skip"),
    "reference": ("cached", "copy", "adapter"),
    "optimizer": ("adamw", "rmsprop"),
    "schedule": ("constant", "linear", "cosine"),
}


def validate_train_config(cfg: TrainConfig) -> None:
    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"{key}: {getattr(cfg, key)!r} is not one of {', '.join(choices)}")
    from dpokit.losses import get_loss

    try:
        get_loss(cfg.loss)
    except ValueError as e:
        raise ConfigError(f"loss: {e}") from None
    if cfg.beta <= 0:
        raise ConfigError("beta must be > 0")
    if not cfg.orpo_lambda >= 0:  # also rejects NaN
        raise ConfigError(f"orpo_lambda must be ≥ 0, got {cfg.orpo_lambda}")
    if not math.isfinite(cfg.simpo_gamma):
        raise ConfigError(f"simpo_gamma must be finite, got {cfg.simpo_gamma}")
    if cfg.loss == "orpo" and cfg.average_logps is False:
        # Its odds and its NLL/|chosen| are defined on per-token mean log-probs (Hong et al. 2024).
        raise ConfigError("loss=orpo needs per-token mean log-probs: leave average_logps unset (or true)")
    if cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise ConfigError("batch_size and grad_accum must be ≥ 1")
    if cfg.max_prompt_length >= cfg.max_length:
        raise ConfigError("max_prompt_length must be < max_length")
    if cfg.microbatch_tokens < 0:
        raise ConfigError("microbatch_tokens must be ≥ 0 (0 = micro-batches of batch_size pairs)")
    if cfg.optimizer_in_backward and (cfg.max_grad_norm > 0 or cfg.grad_accum > 1 or cfg.microbatch_tokens > 0):
        raise ConfigError(
            "optimizer_in_backward updates each parameter during the backward pass: it cannot clip by "
            "the global gradient norm or accumulate micro-batches; set max_grad_norm=0, grad_accum=1 "
            "and microbatch_tokens=0"
        )
    if cfg.reference == "adapter" and cfg.lora.r <= 0:
        raise ConfigError("reference=adapter needs LoRA (lora.r > 0)")
