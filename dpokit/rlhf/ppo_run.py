"""`dpokit ppo` (and what `dpokit rloo` shares with it): prompts, policy, reward and value model
from a config, the rounds, the saved models.

Prompt files (`prompts=FILE`: .jsonl, .json, .parquet or a datasets directory, read by
dpokit.data.formats) hold one record per prompt:

    {"prompt": "text"}                          used verbatim (no BOS is added)
    {"prompt": [{"role": "user", ...}, ...]}    messages, rendered with the tokenizer's chat
                                                template and its generation prompt

Each record is checked as pair data is (dpokit.data.normalize), and any failure is a
`DataError` naming file:line and field, so the command ends with one line and exit 2:
invalid JSON or UTF-8, not an object, no prompt, a prompt that is neither text nor messages,
a lone surrogate, no visible text (empty, whitespace or invisible characters only), a last
message by the assistant (the policy writes that one), and special-token text such as
`<|im_end|>`, which the tokenizer would turn into a control token (dpokit.data.tokenize). There
is no skipping: a prompt set is small enough to fix.
"""

from __future__ import annotations

from pathlib import Path

from dpokit.config import ConfigError
from dpokit.data.records import DataError
from dpokit.rlhf.ppo_config import PPOConfig


def load_prompts(cfg, tokenizer=None, log=None) -> list[str]:
    """The prompts a PPO or RLOO config (`prompts`, `n_prompts`) names, as the strings the
    policy continues. `sentiment`: the sentiment study's train prompts (its held-out prompts are
    never used here); otherwise a prompt file (module docstring), checked with `tokenizer`
    (default: `cfg.model`'s). `log` hears how many were read."""
    if cfg.prompts == "sentiment":
        from dpokit.tasks.sentiment_config import PromptsConfig
        from dpokit.tasks.sentiment_prompts import build_prompts, split_prompts

        split = PromptsConfig()
        prompts, _ = split_prompts(build_prompts(), split.n_heldout, split.seed)
    else:
        if tokenizer is None:
            from dpokit.models import load_tokenizer

            tokenizer = load_tokenizer(cfg.model)
        prompts = read_prompt_file(Path(cfg.prompts), tokenizer)
    used = prompts[: cfg.n_prompts] if cfg.n_prompts else prompts
    if log is not None:
        log(f"prompts: {len(prompts)} read from {cfg.prompts}" + (f", the first {len(used)} used (n_prompts)" if len(used) < len(prompts) else ""))
    return used


def read_prompt_file(path: Path, tokenizer) -> list[str]:
    """Every prompt of a prompt file, checked (module docstring); DataError on the first bad one."""
    from dpokit.data.formats import read_records
    from dpokit.data.tokenize import special_texts

    if not path.exists():
        raise DataError(str(path), "no such prompt file (prompts= takes `sentiment` or a file of {\"prompt\": ...})")
    specials = special_texts(tokenizer)
    prompts = [_prompt(raw, source, tokenizer, specials) for source, raw in read_records(path)]
    if not prompts:
        raise DataError(path.name, "holds no prompts")
    return prompts


def _prompt(raw, source: str, tokenizer, specials: list[str]) -> str:
    """One record's prompt as the text the policy continues; DataError when it is malformed."""
    # The pair-data rules, applied to a prompt alone.
    from dpokit.data.normalize import _check_unicode, _is_empty, _messages, _type_name
    from dpokit.data.tokenize import _strings

    if not isinstance(raw, dict):
        raise DataError(source, f"expected a JSON object, got {_type_name(raw)}")
    value = raw.get("prompt")
    if value is None:
        raise DataError(source, "missing", "prompt")
    if isinstance(value, str):
        _check_unicode(value, source, "prompt")
    elif isinstance(value, list):
        value = _messages(value, source, "prompt")
        if value and value[-1]["role"] == "assistant":
            raise DataError(source, "the last message must not be the assistant's (the policy writes that one)", "prompt")
    else:
        raise DataError(source, f"expected a string or a list of messages, got {_type_name(value)}", "prompt")
    if _is_empty(value):
        raise DataError(source, "no visible text (empty, whitespace or invisible characters only)", "prompt")
    for field, text in _strings(value, "prompt"):
        for token in specials:
            if token in text:
                raise DataError(source, f"holds special-token text {token!r}, which the tokenizer would turn into a control token", field)
    if isinstance(value, str):
        return value
    return tokenizer.apply_chat_template(value, tokenize=False, add_generation_prompt=True)


def load_online_run(cfg, log=print) -> tuple:
    """(prompts, policy, tokenizer, reward model or None, ground-truth reward function) of a
    PPO or RLOO config; the prompts are read and checked before any model is loaded."""
    from dpokit.eval.rewards import get_reward
    from dpokit.models import load_model
    from dpokit.rlhf.reward_model import load_reward_model

    prompts = load_prompts(cfg, log=log)  # loads only the tokenizer
    policy, tokenizer = load_model(cfg.model, lora=cfg.lora)
    reward_model = None
    if cfg.reward == "model":
        reward_model, rm_tokenizer = load_reward_model(cfg.reward_model)
        if rm_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ConfigError(f"reward_model {cfg.reward_model} has another vocabulary than {cfg.model}: its scores would read other tokens")
    return prompts, policy, tokenizer, reward_model, get_reward("sentiment")


def build_value_model(cfg: PPOConfig):
    """The value model: a copy of the reward model (InstructGPT's choice) unless `value_model`
    names another; with neither, the policy's backbone with a fresh scalar head, drawn from
    `cfg.seed` (not from whatever the global RNG holds), so two runs of one config agree."""
    import torch

    from dpokit.rlhf.reward_model import build_reward_model, load_reward_model

    start = cfg.value_model or cfg.reward_model
    if start:
        return load_reward_model(start)[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_reward_model(cfg.model)[0]


def run_ppo(cfg: PPOConfig, log=print, *, resume=None, force: bool = False) -> dict:
    """The rounds (dpokit.rlhf.ppo), then the policy under `output_dir/final` and the value
    model under `output_dir/value` (not after a stop: dpokit.rlhf.online)."""
    from dpokit.rlhf.ppo import PPOTrainer
    from dpokit.train.checkpoint import save_final_model

    run_dir = Path(cfg.output_dir)
    prompts, policy, tokenizer, reward_model, reward_fn = load_online_run(cfg, log)
    log(f"PPO: {len(prompts)} prompts, {cfg.steps} rounds of {cfg.rollout_size} samples, reward={cfg.reward}")
    trainer = PPOTrainer(cfg, policy=policy, tokenizer=tokenizer, value_model=build_value_model(cfg),
                         prompts=prompts, reward_fn=reward_fn, reward_model=reward_model, log=log)
    summary = trainer.fit(resume=resume, force=force)
    # Atomic, and refused if NaN: a kill mid-write never leaves a half model under final/.
    save_final_model(trainer.policy, tokenizer, run_dir / "final", cfg)
    save_final_model(trainer.value_model, tokenizer, run_dir / "value", cfg)
    log(f"saved {run_dir / 'final'} (policy) and {run_dir / 'value'} (value model)")
    return summary
