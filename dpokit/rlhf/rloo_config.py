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
    prompts: str = "sentiment"  # sentiment (the study's train prompts) | a file of {"prompt": text or [messages]} (dpokit.rlhf.ppo_run)
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
    # --- stops (dpokit.rlhf.online): TrainingDiverged, no final model ---------------------------
    max_kl: float = ranged(50.0, ge=0, note="mean KL to the reference per sample (nats) that stops the run; 0 = no limit")
    max_consecutive_skips: int = ranged(3, ge=1, note="rounds in a row whose every update had a non-finite loss or gradient")
    seed: int = ranged(0, **SEED_RANGE)
    # --- output ------------------------------------------------------------------------------
    output_dir: str = "runs/rloo"
    save_every: int = ranged(0, ge=0, note="rounds between checkpoints; 0 = only the final model")
    keep_checkpoints: int = ranged(2, ge=0, note="0 = keep all")
    progress: bool = True

    # Keys that change nothing a round computes: a resume may differ in them (the stops only
    # end a run; they change none of its numbers).
    NON_TRAJECTORY_KEYS = ("output_dir", "save_every", "keep_checkpoints", "progress", "steps", "max_kl", "max_consecutive_skips")

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
