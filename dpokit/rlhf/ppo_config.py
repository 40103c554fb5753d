"""PPO's config: the shared online settings (`OnlineConfig`) plus PPO's own."""

from __future__ import annotations

from dataclasses import dataclass

from dpokit.config import ConfigError, ranged
from dpokit.rlhf.online_config import OnlineConfig


@dataclass
class PPOConfig(OnlineConfig):
    value_model: str | None = None  # value model's start; None = reward_model, else the policy's backbone + a fresh head
    rollout_size: int = ranged(32, ge=1)  # completions per round
    ppo_epochs: int = ranged(4, ge=1)  # passes over each rollout
    minibatch_size: int = ranged(8, ge=1)
    lr: float = ranged(1.41e-5, gt=0)
    value_lr: float = ranged(0.0, ge=0, note="0 = lr")
    clip_eps: float = ranged(0.2, gt=0)  # policy ratio clip ε
    value_clip_eps: float = ranged(0.2, gt=0)
    value_coef: float = ranged(0.1, ge=0)
    gamma: float = ranged(1.0, ge=0)  # ≤ 1 too (checked in validate)
    lam: float = ranged(0.95, ge=0)  # ≤ 1 too
    whiten_advantages: bool = True
    # kl_coef: β of the per-token penalty −β·log π/π_ref; the adaptive controller's start
    kl_target: float = ranged(0.0, ge=0, note="> 0: adaptive controller (Ziegler et al. 2019) aiming at this KL per sample")
    kl_horizon: float = ranged(10000.0, gt=0)
    output_dir: str = "runs/ppo"

    def validate(self, given: set[str] | None = None) -> None:
        super().validate(given)
        for key in ("gamma", "lam"):
            if getattr(self, key) > 1:
                raise ConfigError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        if self.kl_target > 0 and self.kl_coef <= 0:
            raise ConfigError("kl_target > 0 (adaptive controller) needs a starting kl_coef > 0")
        if self.minibatch_size > self.rollout_size:
            raise ConfigError(f"minibatch_size ({self.minibatch_size}) must be ≤ rollout_size ({self.rollout_size})")
