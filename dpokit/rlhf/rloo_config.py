"""RLOO's config: one dataclass, loaded like every dpokit recipe (YAML, then `key=value`);
each numeric key declares its valid range beside it (`dpokit.config.ranged`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpokit.config import SEED_RANGE, ConfigError, LoraConfig, check_ranges, ranged


@dataclass
class RLOOConfig:
    # --- models ----------------------------------------------------------------------------
    model: str = "smollm2-135m-instruct"  # policy's starting point and the reference π_ref
    reward: str = "model"  # model (reward_model's score) | sentiment (the ground truth itself)
    reward_model: str | None = None  # a Bradley–Terry reward model dir (`dpokit rm`); needed for reward=model
    lora: LoraConfig = field(default_factory=LoraConfig)  # LoRA on the policy; the reference is its adapter disabled
    # --- prompts and sampling ----------------------------------------------------------------
    prompts: str = "sentiment"  # sentiment (the study's train prompts) | a JSONL file of {"prompt": ...}
    n_prompts: int = ranged(0, ge=0, note="0 = all")
    max_new_tokens: int = ranged(32, ge=1)
    temperature: float = ranged(1.0, gt=0)
    # --- RLOO ------------------------------------------------------------------------------
    steps: int = ranged(20, ge=1)  # rollout + update rounds
    rollout_prompts: int = ranged(16, ge=1)  # prompts per round
    k: int = ranged(4, ge=2, note="samples per prompt; the leave-one-out baseline needs 2")
    ppo_epochs: int = ranged(1, ge=1, note="1 = plain REINFORCE (Ahmadian et al.); > 1 = clipped sequence ratio")
    clip_eps: float = ranged(0.2, gt=0)  # ratio clip ε, used only when ppo_epochs > 1
    minibatch_size: int = ranged(16, ge=1, note="samples per forward pass; gradients accumulate over the round")
    lr: float = ranged(1e-5, gt=0)
    kl_coef: float = ranged(0.05, ge=0)  # β of the sequence-level penalty r = score − β·Σ_t log π/π_ref
    max_grad_norm: float = ranged(1.0, ge=0, note="0 = no clipping")
    seed: int = ranged(0, **SEED_RANGE)
    # --- output ------------------------------------------------------------------------------
    output_dir: str = "runs/rloo"
    progress: bool = True

    @property
    def samples_per_round(self) -> int:
        """rollout_prompts × k."""
        return self.rollout_prompts * self.k

    def validate(self, given: set[str] | None = None) -> None:
        check_ranges(self)
        if self.reward not in ("model", "sentiment"):
            raise ConfigError(f"reward: {self.reward!r} is not one of model, sentiment")
        if self.reward == "model" and not self.reward_model:
            raise ConfigError("reward=model needs reward_model=DIR (train one with `dpokit rm`), or use reward=sentiment")
