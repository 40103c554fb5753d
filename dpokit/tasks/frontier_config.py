"""The reward–KL frontier's config: the sentiment study's (prompts, pairs, held-out evaluation,
and every TrainConfig key for the DPO runs) plus one section per method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from dpokit.config import ConfigError, ranged
from dpokit.tasks.sentiment_config import SentimentConfig


@dataclass
class RewardModelStage:
    lr: float = ranged(3.0e-5, gt=0)
    head_lr: float = ranged(1.0e-3, ge=0, note="the scalar head's learning rate; 0 = lr")
    epochs: float = ranged(2.0, gt=0)
    batch_size: int = ranged(8, ge=1)


@dataclass
class DPOStage:
    betas: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.5, 1.0])
    points: int = ranged(2, ge=1, note="evaluations per run: intermediate checkpoints + the final model")


@dataclass
class PPOStage:
    kl_coefs: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1, 0.2])  # fixed β of the per-token penalty
    ground_truth_kl_coef: float = ranged(0.05, ge=0, note="PPO on the ground truth itself (PPO-GT); 0 = not run")
    steps: int = ranged(30, ge=1)  # rounds
    rollout_size: int = ranged(32, ge=1)
    ppo_epochs: int = ranged(4, ge=1)
    minibatch_size: int = ranged(8, ge=1)
    lr: float = ranged(1.41e-5, gt=0)
    points: int = ranged(3, ge=1, note="evaluations per run, evenly spaced in rounds")


@dataclass
class RLOOStage:
    kl_coefs: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1])
    steps: int = ranged(30, ge=1)
    rollout_prompts: int = ranged(8, ge=1)
    k: int = ranged(4, ge=2)
    lr: float = ranged(1.0e-5, gt=0)
    points: int = ranged(3, ge=1)


@dataclass
class BestOfNStage:
    m: int = ranged(64, ge=1, note="samples per held-out prompt; the curve covers N ≤ m")
    ns: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])


@dataclass
class StabilityStage:
    seeds: list[int] = field(default_factory=list)  # training seeds of the repeats; [] = no stability study
    dpo_beta: float = ranged(0.1, gt=0)
    ppo_kl_coef: float = ranged(0.05, ge=0)


@dataclass
class ImplicitRewardStage:
    """When the implicit reward ranks by the ground truth (dpokit.tasks.frontier_implicit)."""

    pools: list[int] = field(default_factory=list)  # distinct pairs per run; [] = not run
    betas: list[float] = field(default_factory=lambda: [0.1])
    steps: int = ranged(135, ge=1, note="optimizer steps per run, at a constant learning rate")
    points: int = ranged(4, ge=1, note="checkpoints per run at which ρ is measured")


@dataclass
class FrontierConfig(SentimentConfig):
    rm: RewardModelStage = field(default_factory=RewardModelStage)
    dpo: DPOStage = field(default_factory=DPOStage)
    preferred_ft: bool = True  # SFT on the chosen completions (sft.lr, sft.epochs) as one more point
    ppo: PPOStage = field(default_factory=PPOStage)
    rloo: RLOOStage = field(default_factory=RLOOStage)
    bon: BestOfNStage = field(default_factory=BestOfNStage)
    stability: StabilityStage = field(default_factory=StabilityStage)
    implicit: ImplicitRewardStage = field(default_factory=ImplicitRewardStage)
    # false: a run that is only evaluated (DPO, Preferred-FT, the implicit-reward study) loses its
    # checkpoints and final model once its points are taken (~0.5 GB per model at 135M in fp32;
    # a checkpoint with its optimizer state ~1.6 GB). The reward model is kept: later runs load it.
    keep_weights: bool = True
    objectives: ClassVar[tuple[str, ...]] = ("dpo",)  # each run's objective is the sweep's to decide

    def validate(self, given: set[str] | None = None) -> None:
        super().validate(given)
        if self.sft.enabled:
            raise ConfigError("the frontier compares every method against the starting model: sft.enabled must stay false "
                              "(Preferred-FT is a point of its own: preferred_ft=true)")
        for key, values in (("dpo.betas", self.dpo.betas), ("ppo.kl_coefs", self.ppo.kl_coefs), ("rloo.kl_coefs", self.rloo.kl_coefs),
                            ("implicit.betas", self.implicit.betas)):
            if any(not (v >= 0 and v < float("inf")) for v in values):
                raise ConfigError(f"{key} must hold finite values ≥ 0, got {values}")
        for key, values in (("dpo.betas", self.dpo.betas), ("implicit.betas", self.implicit.betas)):
            if any(b <= 0 for b in values):
                raise ConfigError(f"{key} must be > 0, got {values}")
        if any(n < 1 for n in self.implicit.pools):
            raise ConfigError(f"implicit.pools must hold pair counts ≥ 1, got {self.implicit.pools}")
        if any(not 1 <= n <= self.bon.m for n in self.bon.ns):
            raise ConfigError(f"bon.ns must lie in [1, bon.m={self.bon.m}], got {self.bon.ns}")
        if self.ppo.minibatch_size > self.ppo.rollout_size:
            raise ConfigError(f"ppo.minibatch_size ({self.ppo.minibatch_size}) must be ≤ ppo.rollout_size ({self.ppo.rollout_size})")
