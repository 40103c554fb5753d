"""RLOO's config: the shared online settings (`OnlineConfig`) plus RLOO's own."""

from __future__ import annotations

from dataclasses import dataclass

from dpokit.config import ranged
from dpokit.rlhf.online_config import OnlineConfig


@dataclass
class RLOOConfig(OnlineConfig):
    rollout_prompts: int = ranged(16, ge=1)  # prompts per round
    k: int = ranged(4, ge=2, note="samples per prompt; the leave-one-out baseline needs 2")
    ppo_epochs: int = ranged(1, ge=1, note="1 = plain REINFORCE (Ahmadian et al.); > 1 = clipped sequence ratio")
    clip_eps: float = ranged(0.2, gt=0)  # ratio clip ε, used only when ppo_epochs > 1
    minibatch_size: int = ranged(16, ge=1, note="samples per forward pass; gradients accumulate over the round")
    # kl_coef: β of the sequence-level penalty r = score − β·Σ_t log π/π_ref
    # Rollouts (sampling only) under bf16 autocast: faster; other tokens than fp32 at the same seed.
    # Log-probs, KL and the update stay fp32 (dpokit.generate).
    rollout_bf16: bool = False
    output_dir: str = "runs/rloo"

    # Keys added after runs were stored, at the value that reproduces them: run keys
    # (tasks.frontier_runs.settings_of) and checkpoint identities leave them out at that value.
    LATER_DEFAULTS = {"rollout_bf16": False}

    @property
    def samples_per_round(self) -> int:
        """rollout_prompts × k."""
        return self.rollout_prompts * self.k
