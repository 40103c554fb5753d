"""PPO's config: one dataclass, loaded like every dpokit recipe (YAML, then `key=value`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dpokit.config import ConfigError, LoraConfig


@dataclass
class PPOConfig:
    # --- models ----------------------------------------------------------------------------
    model: str = "smollm2-135m-instruct"  # policy's starting point and the reference π_ref
    reward: str = "model"  # model (reward_model's score) | sentiment (the ground truth itself: "PPO-GT")
    reward_model: str | None = None  # a Bradley–Terry reward model dir (`dpokit rm`); needed for reward=model
    value_model: str | None = None  # value model's start; None = reward_model, else the policy's backbone + a fresh head
    lora: LoraConfig = field(default_factory=LoraConfig)  # LoRA on the policy; the reference is its adapter disabled
    # --- prompts and sampling ----------------------------------------------------------------
    prompts: str = "sentiment"  # sentiment (the study's train prompts) | a JSONL file of {"prompt": ...}
    n_prompts: int = 0  # 0 = all
    max_new_tokens: int = 32
    temperature: float = 1.0
    # --- PPO -------------------------------------------------------------------------------
    steps: int = 20  # rollout + update rounds
    rollout_size: int = 32  # completions per round
    ppo_epochs: int = 4  # passes over each rollout
    minibatch_size: int = 8
    lr: float = 1.41e-5
    value_lr: float = 0.0  # 0 = lr
    clip_eps: float = 0.2  # policy ratio clip ε
    value_clip_eps: float = 0.2
    value_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    kl_coef: float = 0.05  # β of the per-token penalty −β·log π/π_ref; the adaptive controller's start
    kl_target: float = 0.0  # > 0: adaptive controller (Ziegler et al. 2019) aiming at this KL (nats per sample)
    kl_horizon: float = 10000.0
    max_grad_norm: float = 1.0
    seed: int = 0
    # --- output ------------------------------------------------------------------------------
    output_dir: str = "runs/ppo"
    save_every: int = 0  # rounds between checkpoints; 0 = only the final model
    progress: bool = True

    def validate(self) -> None:
        if self.reward not in ("model", "sentiment"):
            raise ConfigError(f"reward: {self.reward!r} is not one of model, sentiment")
        if self.reward == "model" and not self.reward_model:
            raise ConfigError("reward=model needs reward_model=DIR (train one with `dpokit rm`), or use reward=sentiment")
        positive_ints = ("max_new_tokens", "steps", "rollout_size", "ppo_epochs", "minibatch_size")
        for key in positive_ints:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be ≥ 1, got {getattr(self, key)}")
        for key in ("n_prompts", "save_every", "seed"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be ≥ 0, got {getattr(self, key)}")
        _positive(self, ("lr", "temperature", "clip_eps", "value_clip_eps", "kl_horizon"))
        _non_negative(self, ("value_lr", "value_coef", "kl_coef", "kl_target", "max_grad_norm"))
        for key in ("gamma", "lam"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key}: must be in [0, 1], got {getattr(self, key)}")
        if self.kl_target > 0 and self.kl_coef <= 0:
            raise ConfigError("kl_target > 0 (adaptive controller) needs a starting kl_coef > 0")
        if self.lora.r < 0:
            raise ConfigError(f"lora.r: must be ≥ 0, got {self.lora.r}")


def _positive(cfg, keys) -> None:
    for key in keys:
        value = getattr(cfg, key)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{key}: must be > 0 and finite, got {value}")


def _non_negative(cfg, keys) -> None:
    for key in keys:
        value = getattr(cfg, key)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{key}: must be ≥ 0 and finite, got {value}")
