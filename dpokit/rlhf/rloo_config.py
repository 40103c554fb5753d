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
    output_dir: str = "runs/rloo"

    @property
    def samples_per_round(self) -> int:
        """rollout_prompts × k."""
        return self.rollout_prompts * self.k
