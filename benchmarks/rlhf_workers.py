"""One configuration of the online-RL benchmark (`rlhf_speed.py`), run in a process of its own
(so its peak RSS is its own). A worker reads a spec (a dict) and returns a result dict.

Rollout workers time `warmup + calls` sampling calls of `prompts × generations` sequences;
call r samples the same prompts with the same seed in every engine. Step workers time
`warmup + steps` training steps (rollout, reward, reference, update) as wall clock between
consecutive step ends. Prompts: the sentiment study's training prompts (plain text, continued
verbatim), in the order dpokit's online trainers draw them (`round_prompts`).
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.bench_workers import (
    current_rss_mb,
    model_path,
    param_counts,
    peak_rss_mb,
    step_clock,
)


def bench_prompts(spec: dict, n: int, rnd: int) -> list[str]:
    """The `n` prompts dpokit's trainers draw in round `rnd` (seed = spec["seed"])."""
    from dpokit.rlhf.ppo import round_prompts
    from dpokit.rlhf.ppo_run import load_prompts
    from dpokit.rlhf.rloo_config import RLOOConfig

    return round_prompts(load_prompts(RLOOConfig(reward="sentiment")), n, spec["seed"], rnd)


def sentiment(prompts=None, completions=None, **_) -> list[float]:
    """dpokit's ground-truth reward (VADER compound) of the completions, in TRL's reward-
    function signature; dpokit's trainers call the same function on the same texts."""
    from dpokit.eval.rewards import sentiment_reward

    return sentiment_reward(list(completions))


def _offline_trl():
    """Nothing may reach a hub; TRL's progress bars stay quiet."""
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TQDM_DISABLE", "1")


# -- rollout: dpokit's sampler vs transformers generate as TRL's RLOOTrainer calls it -----------------
def run_dpokit_sampler(spec: dict) -> dict:
    import torch

    from dpokit.generate import sample_completions
    from dpokit.models import load_model

    torch.manual_seed(spec["seed"])
    model, tok = load_model(model_path(spec), dtype="float32")
    times, gen, prompt, rows = [], [], [], 0
    for call in range(spec["warmup"] + spec["calls"]):
        prompts = bench_prompts(spec, spec["prompts"], call)
        start = time.perf_counter()
        comps = sample_completions(model, tok, prompts, n_per_prompt=spec["generations"], max_new_tokens=spec["new_tokens"],
                                   batch_size=len(prompts) * spec["generations"], seed=spec["seed"] + call, progress=False)
        times.append(time.perf_counter() - start)
        gen.append(sum(len(c.token_ids) for row in comps for c in row))
        prompt.append(spec["generations"] * sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts))
        rows = len(prompts) * spec["generations"]
    return _rollout_result(times, gen, prompt, rows, spec, model)


def run_trl_generate(spec: dict) -> dict:
    """TRL 1.16's own generation path: an RLOOTrainer is built (untimed) and its `_generate`
    (tokenize, left-pad, `model.generate` with TRL's GenerationConfig under no_grad, cut at
    EOS, decode) is timed on the prompts repeated per generation as its RepeatSampler orders them.
    The model is in train mode with gradient checkpointing on, as during TRL training (TRL turns
    checkpointing off around generate itself)."""
    _offline_trl()
    import torch

    trainer = _trl_rloo_trainer(spec, batch=spec["prompts"] * spec["generations"], steps=1, prompts=["x"])
    trainer.model.train()
    times, gen, prompt, rows = [], [], [], 0
    for call in range(spec["warmup"] + spec["calls"]):
        batch = [p for p in bench_prompts(spec, spec["prompts"], call) for _ in range(spec["generations"])]
        torch.manual_seed(spec["seed"] + call)
        start = time.perf_counter()
        prompt_ids, completion_ids, _ = trainer._generate(batch)
        times.append(time.perf_counter() - start)
        gen.append(sum(len(c) for c in completion_ids))
        prompt.append(sum(len(p) for p in prompt_ids))
        rows = len(batch)
    return _rollout_result(times, gen, prompt, rows, spec, trainer.model)


def _rollout_result(times, gen, prompt, rows: int, spec: dict, model) -> dict:
    warm = spec["warmup"]
    seconds = sum(times[warm:])
    generated, prompt_tokens = sum(gen[warm:]), sum(prompt[warm:])
    calls = len(times) - warm
    return {
        "call_seconds": times[warm:], "warmup_seconds": times[:warm], "seconds_per_call": seconds / calls,
        "sequences_per_call": rows, "generated_tokens": generated, "prompt_tokens": prompt_tokens,
        "mean_completion_tokens": generated / (rows * calls), "mean_prompt_tokens": prompt_tokens / (rows * calls),
        "tokens_per_s": generated / seconds, "peak_rss_mb": peak_rss_mb(), **param_counts(model),
    }


# -- one RLOO step (and dpokit's PPO round) ------------------------------------------------------------
def run_dpokit_online(spec: dict) -> dict:
    """dpokit's RLOOTrainer.round (or PPOTrainer.round: `spec["method"] == "ppo"`), reward =
    sentiment, timed per round; the trainer draws its prompts with `round_prompts`."""
    import torch

    from dpokit.eval.rewards import sentiment_reward
    from dpokit.models import load_model
    from dpokit.rlhf.ppo_run import load_prompts
    from dpokit.rlhf.rloo_config import RLOOConfig

    torch.manual_seed(spec["seed"])
    model, tok = load_model(model_path(spec), dtype="float32")
    prompts = load_prompts(RLOOConfig(reward="sentiment"))
    out_dir = str(Path(spec["work_dir"]) / spec["name"])
    common = dict(reward="sentiment", max_new_tokens=spec["new_tokens"], lr=spec["lr"], seed=spec["seed"],
                  output_dir=out_dir, progress=False, **spec.get("options", {}))
    if spec["method"] == "ppo":
        from dpokit.rlhf.ppo import PPOConfig, PPOTrainer
        from dpokit.rlhf.reward_model import build_reward_model

        cfg = PPOConfig(rollout_size=spec["prompts"] * spec["generations"], **common)
        value = build_reward_model(model_path(spec))[0]
        trainer = PPOTrainer(cfg, policy=model, tokenizer=tok, value_model=value, prompts=prompts, reward_fn=sentiment_reward, log=lambda *a: None)
    else:
        from dpokit.rlhf.rloo import RLOOTrainer

        cfg = RLOOConfig(rollout_prompts=spec["prompts"], k=spec["generations"], **common)
        trainer = RLOOTrainer(cfg, policy=model, tokenizer=tok, prompts=prompts, reward_fn=sentiment_reward, log=lambda *a: None)
    times, lengths, last = [], [], time.perf_counter()
    for rnd in range(spec["warmup"] + spec["steps"]):
        metrics = trainer.round(rnd)
        now = time.perf_counter()
        times.append(now - last)
        last = now
        lengths.append(metrics["length"])
    phases = {"rollout_s": metrics["rollout_s"], "train_s": metrics["train_s"]}  # of the last round
    return _step_result(times, lengths, spec, model, last_round=phases, config=_jsonable(cfg))


def _trl_rloo_trainer(spec: dict, *, batch: int, steps: int, prompts: list[str], callbacks=()):
    """TRL's RLOOTrainer as a user builds it: the model by path (TRL loads the policy and, with
    β > 0, the reference in fp32), our reward function, TRL's defaults except fp32 (TRL
    defaults to bf16 autocast), CPU, the benchmark's batch, length, lr and prompt order, and
    no logging, eval or saving."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    path = model_path(spec)
    args = RLOOConfig(
        output_dir=str(Path(spec["work_dir"]) / f"trl-{spec['name']}"), per_device_train_batch_size=batch,
        num_generations=spec["generations"], max_completion_length=spec["new_tokens"], learning_rate=spec["lr"],
        max_steps=steps, seed=spec["seed"], bf16=False, use_cpu=True, report_to="none", save_strategy="no",
        eval_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        shuffle_dataset=False,  # the prompts come in dpokit's round order (below)
        **spec.get("options", {}),
    )
    return RLOOTrainer(model=path, reward_funcs=sentiment, args=args, processing_class=AutoTokenizer.from_pretrained(path),
                       train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]), callbacks=list(callbacks))


def run_trl_rloo(spec: dict) -> dict:
    """TRL's RLOOTrainer.train() for `warmup + steps` steps; step s uses dpokit's round-s prompts."""
    _offline_trl()
    import torch

    torch.manual_seed(spec["seed"])
    total = spec["warmup"] + spec["steps"]
    prompts = [p for rnd in range(total) for p in bench_prompts(spec, spec["prompts"], rnd)]
    stamps: list[float] = []

    trainer = _trl_rloo_trainer(spec, batch=spec["prompts"] * spec["generations"], steps=total, prompts=prompts,
                                callbacks=[step_clock(stamps)])
    lengths: list[float] = []
    generate = trainer._generate

    def counted(batch):  # TRL's metrics are emptied when training ends: note the lengths here
        out = generate(batch)
        lengths.append(sum(map(len, out[1])) / len(out[1]))
        return out

    trainer._generate = counted
    trainer.train()
    times = [b - a for a, b in itertools.pairwise(stamps)]
    return _step_result(times, lengths, spec, trainer.model, config={k: getattr(trainer.args, k) for k in TRL_ARGS})


# The TRL settings the report shows (what differs from dpokit's or matters for the cost).
TRL_ARGS = ("beta", "num_generations", "per_device_train_batch_size", "max_completion_length", "learning_rate",
            "gradient_checkpointing", "bf16", "temperature", "num_iterations", "max_grad_norm")


def _step_result(times: list[float], lengths: list[float], spec: dict, model, **extra) -> dict:
    warm = spec["warmup"]
    timed = times[warm:]
    return {
        "step_seconds": timed, "warmup_seconds": times[:warm], "seconds_per_step": sum(timed) / len(timed),
        "mean_completion_tokens": sum(lengths) / len(lengths) if lengths else None, "peak_rss_mb": peak_rss_mb(),
        "rss_after_steps_mb": current_rss_mb(), **param_counts(model), **extra,
    }


def _jsonable(cfg) -> dict:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(cfg).items() if isinstance(v, (int, float, str, bool, type(None)))}


RUNNERS = {"dpokit-sampler": run_dpokit_sampler, "trl-generate": run_trl_generate, "dpokit-online": run_dpokit_online,
           "trl-rloo": run_trl_rloo}


def main(spec_path: str, result_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory(prefix="dpokit-rlbench-") as tmp:
        spec.setdefault("work_dir", tmp)
        result = RUNNERS[spec["runner"]](spec)
    result.update(name=spec["name"], engine=spec["engine"], options=spec.get("options", {}))
    Path(result_path).write_text(json.dumps(result, default=str))
