"""PPO's config: one dataclass, loaded like every dpokit recipe (YAML, then `key=value`);
each numeric key declares its valid range beside it (`dpokit.config.ranged`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpokit.config import SEED_RANGE, ConfigError, LoraConfig, check_ranges, ranged


@dataclass
class PPOConfig:
    # --- models ----------------------------------------------------------------------------
    model: str = "smollm2-135m-instruct"  # policy's starting point and the reference π_ref
    reward: str = "model"  # model (reward_model's score) | sentiment (the ground truth itself: "PPO-GT")
    reward_model: str | None = None  # a Bradley–Terry reward model dir (`dpokit rm`); needed for reward=model
    value_model: str | None = None  # value model's start; None = reward_model, else the policy's backbone + a fresh head
    lora: LoraConfig = field(default_factory=LoraConfig)  # LoRA on the policy; the reference is its adapter disabled
    # --- prompts and sampling ----------------------------------------------------------------
    prompts: str = "sentiment"  # sentiment (the study's train prompts) | a file of {"prompt": text or [messages]} (dpokit.rlhf.ppo_run)
    n_prompts: int = ranged(0, ge=0, note="0 = all")
    max_new_tokens: int = ranged(32, ge=1)
    temperature: float = ranged(1.0, gt=0)
    # --- PPO -------------------------------------------------------------------------------
    steps: int = ranged(20, ge=1)  # rollout + update rounds
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
    kl_coef: float = ranged(0.05, ge=0)  # β of the per-token penalty −β·log π/π_ref; the adaptive controller's start
    kl_target: float = ranged(0.0, ge=0, note="> 0: adaptive controller (Ziegler et al. 2019) aiming at this KL per sample")
    kl_horizon: float = ranged(10000.0, gt=0)
    max_grad_norm: float = ranged(1.0, ge=0, note="0 = no clipping")
    # --- stops (dpokit.rlhf.online): TrainingDiverged, no final model ---------------------------
    max_kl: float = ranged(50.0, ge=0, note="mean KL to the reference per sample (nats) that stops the run; 0 = no limit")
    max_consecutive_skips: int = ranged(3, ge=1, note="rounds in a row whose every update had a non-finite loss or gradient")
    seed: int = ranged(0, **SEED_RANGE)
    # --- output ------------------------------------------------------------------------------
    output_dir: str = "runs/ppo"
    save_every: int = ranged(0, ge=0, note="rounds between checkpoints; 0 = only the final model")
    keep_checkpoints: int = ranged(2, ge=0, note="0 = keep all")
    progress: bool = True

    # Keys that change nothing a round computes: a resume may differ in them (the stops only
    # end a run; they change none of its numbers).
    NON_TRAJECTORY_KEYS = ("output_dir", "save_every", "keep_checkpoints", "progress", "steps", "max_kl", "max_consecutive_skips")

    def validate(self, given: set[str] | None = None) -> None:
        check_ranges(self)
        if self.reward not in ("model", "sentiment"):
            raise ConfigError(f"reward: {self.reward!r} is not one of model, sentiment")
        if self.reward == "model" and not self.reward_model:
            raise ConfigError("reward=model needs reward_model=DIR (train one with `dpokit rm`), or use reward=sentiment")
        for key in ("gamma", "lam"):
            if getattr(self, key) > 1:
                raise ConfigError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        if self.kl_target > 0 and self.kl_coef <= 0:
            raise ConfigError("kl_target > 0 (adaptive controller) needs a starting kl_coef > 0")
        if self.minibatch_size > self.rollout_size:
            raise ConfigError(f"minibatch_size ({self.minibatch_size}) must be ≤ rollout_size ({self.rollout_size})")
