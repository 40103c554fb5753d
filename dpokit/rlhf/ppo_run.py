"""`dpokit ppo`: build policy, reference, value model, reward and prompts from a PPOConfig, run
the rounds, save the policy and the value model."""

from __future__ import annotations

import json
from pathlib import Path

from dpokit.config import ConfigError
from dpokit.rlhf.ppo_config import PPOConfig


def load_prompts(cfg) -> list[str]:
    """The prompts a PPO or RLOO config (`prompts`, `n_prompts`) names. `sentiment`: the sentiment study's train prompts (its held-out prompts are never used
    here); otherwise a JSONL file with one {"prompt": str} per line."""
    if cfg.prompts == "sentiment":
        from dpokit.tasks.sentiment_config import PromptsConfig
        from dpokit.tasks.sentiment_prompts import build_prompts, split_prompts

        split = PromptsConfig()
        prompts, _ = split_prompts(build_prompts(), split.n_heldout, split.seed)
    else:
        prompts = _read_prompt_file(Path(cfg.prompts))
    return prompts[: cfg.n_prompts] if cfg.n_prompts else prompts


def _read_prompt_file(path: Path) -> list[str]:
    from dpokit.data.records import DataError

    if not path.is_file():
        raise DataError(str(path), "no such prompt file (expected `sentiment` or a JSONL file of {\"prompt\": ...})")
    prompts = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path.name}:{lineno}", "invalid JSON", detail=e.msg) from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise DataError(f"{path.name}:{lineno}", "expected a non-empty string", "prompt")
        prompts.append(record["prompt"])
    if not prompts:
        raise DataError(path.name, "no prompts")
    return prompts


def build_value_model(cfg: PPOConfig):
    """The value model: a copy of the reward model (InstructGPT's choice) unless `value_model`
    names another; with neither, the policy's backbone with a fresh scalar head."""
    from dpokit.rlhf.reward_model import build_reward_model, load_reward_model

    start = cfg.value_model or cfg.reward_model
    return load_reward_model(start)[0] if start else build_reward_model(cfg.model)[0]


def run_ppo(cfg: PPOConfig, log=print, *, resume=None, force: bool = False) -> dict:
    from dpokit.eval.rewards import get_reward
    from dpokit.models import load_model, save_model
    from dpokit.rlhf.ppo import PPOTrainer
    from dpokit.rlhf.reward_model import load_reward_model

    run_dir = Path(cfg.output_dir)
    prompts = load_prompts(cfg)
    policy, tokenizer = load_model(cfg.model, lora=cfg.lora)
    reward_model = None
    if cfg.reward == "model":
        reward_model, rm_tokenizer = load_reward_model(cfg.reward_model)
        if rm_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ConfigError(f"reward_model {cfg.reward_model} has another vocabulary than {cfg.model}: its scores would read other tokens")
    log(f"PPO: {len(prompts)} prompts, {cfg.steps} rounds of {cfg.rollout_size} samples, reward={cfg.reward}")
    trainer = PPOTrainer(cfg, policy=policy, tokenizer=tokenizer, value_model=build_value_model(cfg),
                         prompts=prompts, reward_fn=get_reward("sentiment"), reward_model=reward_model, log=log)
    summary = trainer.fit(resume=resume, force=force)
    save_model(trainer.policy, tokenizer, run_dir / "final")
    save_model(trainer.value_model, tokenizer, run_dir / "value")
    log(f"saved {run_dir / 'final'} (policy) and {run_dir / 'value'} (value model)")
    return summary
