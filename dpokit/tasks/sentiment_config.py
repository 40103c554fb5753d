"""The sentiment case study's config: every training key of TrainConfig (beta, lr, lora.r ...)
at the top level, plus the sections that only this study has."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from dpokit.config import SEED_RANGE, ConfigError, TrainConfig, ranged, validate_train_config

# TrainConfig keys the study sets itself: it trains on the data it builds and evaluates on
# held-out prompts, so a value given for these would be silently overwritten.
STUDY_SETS = ("data", "split", "eval_data", "eval_fraction")


@dataclass
class PromptsConfig:
    n_train: int = ranged(320, ge=1)  # training prompts (pairs are built from their samples)
    n_heldout: int = ranged(100, ge=1)  # held-out prompts for evaluation
    seed: int = ranged(0, **SEED_RANGE)  # train / held-out split


@dataclass
class PairsConfig:
    samples_per_prompt: int = ranged(4, ge=2, note="two samples make one pair")  # K completions sampled from the reference per train prompt
    per_prompt: int = ranged(2, ge=0, note="0 = all")  # ordered pairs kept per prompt, largest reward gap first
    min_gap: float = ranged(0.05, ge=0)  # reward differences below this are ties: dropped and counted
    max_new_tokens: int = ranged(40, ge=1)
    temperature: float = ranged(1.0, gt=0)
    batch_size: int = ranged(32, ge=1)  # sequences per generate() call
    seed: int = ranged(1, **SEED_RANGE)


@dataclass
class SftStage:
    enabled: bool = False  # Preferred-FT on the best completion first; the result is the reference
    lr: float = ranged(1.0e-5, gt=0)
    epochs: float = ranged(1.0, gt=0)


@dataclass
class EvalConfig:
    samples_per_prompt: int = ranged(2, ge=1)  # per held-out prompt, for reference and policy alike
    seed: int = ranged(2, **SEED_RANGE)
    examples: int = ranged(6, ge=0)  # side-by-side examples in the report


@dataclass
class SentimentConfig(TrainConfig):
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    sft: SftStage = field(default_factory=SftStage)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reward: str = "sentiment"  # ground truth (dpokit.eval.rewards)
    # What the study trains from its samples: pairs (DPO and its losses), the pairs as labelled
    # completions (KTO), or each prompt's ranked samples (RRHF). A study built on this config
    # that decides the objective of each of its runs itself (the frontier) narrows this to one,
    # and `objective` then joins the keys it sets itself.
    objectives: ClassVar[tuple[str, ...]] = ("dpo", "kto", "rrhf")

    def validate(self, given: set[str] = frozenset()) -> None:
        """`given`: the keys the user's file and overrides name (load_config)."""
        from dpokit.eval.rewards import REWARDS
        from dpokit.tasks.sentiment_prompts import build_prompts

        sets = ("objective",) * (len(self.objectives) == 1) + STUDY_SETS
        fixed = [key for key in sets if key in (given or ())]
        if fixed:
            raise ConfigError(f"{', '.join(fixed)}: set by the sentiment study itself (it trains on the pairs it "
                              "builds, evaluates on held-out prompts); remove from the config")
        if self.objective not in self.objectives:
            raise ConfigError(f"objective: the sentiment study trains one of {', '.join(self.objectives)}, got {self.objective!r}")
        validate_train_config(self)  # every field's range too, these sections' included
        n_prompts = len(build_prompts())
        if self.prompts.n_heldout >= n_prompts:
            raise ConfigError(f"prompts.n_heldout must be < {n_prompts} (the study has {n_prompts} prompts), "
                              f"got {self.prompts.n_heldout}")
        if self.reward not in REWARDS:
            raise ConfigError(f"reward: {self.reward!r} is not one of {', '.join(sorted(REWARDS))}")
        if self.sft.enabled and self.lora.r > 0:
            # The SFT stage's result would be a LoRA adapter, and the DPO stage loads its reference
            # as a full model: merging the adapter first is not supported yet.
            raise ConfigError("sft.enabled=true with LoRA (lora.r > 0) is not supported: set lora.r=0 or sft.enabled=false")
