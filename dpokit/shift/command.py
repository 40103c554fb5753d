"""`dpokit inspect POLICY --ref REF --prompts FILE`: where a trained policy differs from its
reference (dpokit.shift), printed and optionally written as JSON."""

from __future__ import annotations

import json
from pathlib import Path


def read_prompts_and_completions(path: Path, tokenizer, limit: int) -> tuple[list[str], list[str] | None]:
    """The prompts of a prompt or pair file (validated as PPO's prompt files are: text the
    policy continues, chat templated), and, when every record has one, its completion
    ("completion", else "chosen"; text only) for activation patching."""
    from dpokit.data.formats import read_records
    from dpokit.rlhf.ppo_run import read_prompt_file

    prompts = read_prompt_file(path, tokenizer)[: limit or None]
    records = [raw for _, raw in read_records(path)][: len(prompts)]
    completions = [r.get("completion", r.get("chosen")) if isinstance(r, dict) else None for r in records]
    if not all(isinstance(c, str) and c.strip() for c in completions):
        return prompts, None
    return prompts, completions


def run_inspect(policy_path: str, ref_path: str | None, prompts_path: str, *, json_out: str | None = None,
                max_prompts: int = 64, max_length: int = 256, log=print) -> dict:
    from dpokit.config import ConfigError
    from dpokit.models import _adapter_base, load_model, resolve_model_path
    from dpokit.shift import format_report, inspect_shift

    if ref_path is None and _adapter_base(resolve_model_path(policy_path)) is None:  # checked before minutes of loading
        raise ConfigError("--ref is needed unless POLICY is a LoRA adapter (its base model is then the reference)")
    policy, tokenizer = load_model(policy_path)
    ref = load_model(ref_path)[0] if ref_path else None
    prompts, completions = read_prompts_and_completions(Path(prompts_path), tokenizer, max_prompts)
    report = inspect_shift(policy, ref, tokenizer, prompts, completions, max_length=max_length)
    report["settings"].update(policy=str(policy_path), ref=str(ref_path) if ref_path else "(adapter disabled)", prompts=str(prompts_path))
    log(format_report(report))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2))
        log(f"wrote {json_out}")
    return report
