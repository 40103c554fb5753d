"""The sentiment case study's config: every training key of TrainConfig (beta, lr, lora.r ...)
at the top level, plus the sections that only this study has."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpokit.config import ConfigError, TrainConfig, validate_train_config


@dataclass
class PromptsConfig:
    n_train: int = 320  # training prompts (pairs are built from their samples)
    n_heldout: int = 100  # held-out prompts for evaluation
    seed: int = 0  # train / held-out split


@dataclass
class PairsConfig:
    samples_per_prompt: int = 4  # K completions sampled from the reference per train prompt
    per_prompt: int = 2  # ordered pairs kept per prompt, largest reward gap first; 0 = all
    min_gap: float = 0.05  # reward differences below this are ties: dropped and counted
    max_new_tokens: int = 40
    temperature: float = 1.0
    batch_size: int = 32  # sequences per generate() call
    seed: int = 1


@dataclass
class SftStage:
    enabled: bool = False  # Preferred-FT on the best completion first; the result is the reference
    lr: float = 1.0e-5
    epochs: float = 1.0


@dataclass
class EvalConfig:
    samples_per_prompt: int = 2  # per held-out prompt, for reference and policy alike
    seed: int = 2
    examples: int = 6  # side-by-side examples in the report


@dataclass
class SentimentConfig(TrainConfig):
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    sft: SftStage = field(default_factory=SftStage)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reward: str = "sentiment"  # ground truth (dpokit.eval.rewards)

    def validate(self) -> None:
        validate_train_config(self)
        if self.pairs.samples_per_prompt < 2:
            raise ConfigError("pairs.samples_per_prompt must be ≥ 2 to form pairs")
        if self.eval.samples_per_prompt < 1:
            raise ConfigError("eval.samples_per_prompt must be ≥ 1")
