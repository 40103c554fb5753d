"""What PPO's and RLOO's configs share: models, prompts, sampling, the stops and the output
(each numeric key with its valid range beside it, `dpokit.config.ranged`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpokit.config import SEED_RANGE, ConfigError, LoraConfig, check_ranges, ranged


@dataclass
class OnlineConfig:
    # --- models ----------------------------------------------------------------------------
    model: str = "smollm2-135m-instruct"  # policy's starting point and the reference π_ref
    reward: str = "model"  # model (reward_model's score) | sentiment (the ground truth itself: "PPO-GT")
    reward_model: str | None = None  # a Bradley–Terry reward model dir (`dpokit rm`); needed for reward=model
    lora: LoraConfig = field(default_factory=LoraConfig)  # LoRA on the policy; the reference is its adapter disabled
    # --- prompts and sampling ----------------------------------------------------------------
    prompts: str = "sentiment"  # sentiment (the study's train prompts) | a file of {"prompt": text or [messages]} (dpokit.rlhf.ppo_run)
    n_prompts: int = ranged(0, ge=0, note="0 = all")
    max_new_tokens: int = ranged(32, ge=1)
    temperature: float = ranged(1.0, gt=0)
    # --- optimisation ------------------------------------------------------------------------
    steps: int = ranged(20, ge=1)  # rollout + update rounds
    lr: float = ranged(1e-5, gt=0)
    kl_coef: float = ranged(0.05, ge=0)  # β of the KL penalty to the reference
    max_grad_norm: float = ranged(1.0, ge=0, note="0 = no clipping")
    seed: int = ranged(0, **SEED_RANGE)
    # --- stops (dpokit.rlhf.online): TrainingDiverged, no final model ---------------------------
    max_kl: float = ranged(50.0, ge=0, note="mean KL to the reference per sample (nats) that stops the run; 0 = no limit")
    max_consecutive_skips: int = ranged(3, ge=1, note="rounds in a row whose every update had a non-finite loss or gradient")
    # --- output ------------------------------------------------------------------------------
    output_dir: str = "runs/online"
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
