"""The sentiment-control case study, end to end on one model:

    prompts → K reference samples per train prompt → VADER scores → preference pairs
    → [SFT on the best completion] → DPO (any pairwise loss) → held-out evaluation
    (reward ± CI, win rate, KL, length, implicit accuracy) → plots → report.

Samples and reference log-probs are cached on disk, so a re-run or a β sweep samples once.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from dpokit.config import TrainConfig, save_config
from dpokit.eval import policy_eval as pe
from dpokit.eval.rewards import get_reward
from dpokit.models import default_cache_dir
from dpokit.tasks import sentiment_pairs as sp
from dpokit.tasks.sentiment_config import SentimentConfig
from dpokit.tasks.sentiment_prompts import build_prompts, split_prompts


class Stages:
    """Prints each stage with the elapsed time, so a user sees where the minutes go."""

    def __init__(self, log=print) -> None:
        self.start, self.log = time.time(), log

    def elapsed(self) -> float:
        return time.time() - self.start

    def __call__(self, text: str) -> None:
        m, s = divmod(int(self.elapsed()), 60)
        self.log(f"[{m:02d}:{s:02d}] {text}")


def train_config_of(cfg: SentimentConfig, **changes) -> TrainConfig:
    """The TrainConfig part of a SentimentConfig, with changes."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)}
    values.update(changes)
    return TrainConfig(**values)


def _eval_sampler(cfg: SentimentConfig, reward_fn, prompts):
    def run(model, tokenizer, desc):
        return pe.sample_and_score(
            model, tokenizer, prompts, reward_fn, n_per_prompt=cfg.eval.samples_per_prompt,
            max_new_tokens=cfg.pairs.max_new_tokens, temperature=cfg.pairs.temperature,
            batch_size=cfg.pairs.batch_size, seed=cfg.eval.seed, progress=cfg.progress, desc=desc,
        )
    return run


def make_pairs(cfg, model, tokenizer, model_fp, train_prompts, reward_fn, run_dir, cache_dir, stage) -> dict:
    stage(f"sampling {cfg.pairs.samples_per_prompt} completions for each of {len(train_prompts)} train prompts")
    key = sp.samples_key(model_fp, train_prompts, sp.sample_settings(cfg.pairs))
    samples = sp.cached_samples(
        cache_dir, "train", key,
        lambda: sp.sample_reference(model, tokenizer, train_prompts, reward_fn, cfg.pairs, cfg.progress), stage,
    )
    records, counts = sp.build_pairs(samples, per_prompt=cfg.pairs.per_prompt, min_gap=cfg.pairs.min_gap)
    sp.write_jsonl(records, run_dir / "pairs.jsonl")
    stage(f"pairs: {counts['pairs']} from {counts['prompts']} prompts ({counts['ties_dropped']} ties dropped) → {run_dir / 'pairs.jsonl'}")
    if cfg.objective == "kto":
        counts["kto_records"] = len(sp.write_jsonl(sp.kto_records(records), run_dir / "kto.jsonl").read_text().splitlines())
        stage(f"KTO: {counts['kto_records']} labelled completions from the pairs → {run_dir / 'kto.jsonl'}")
    elif cfg.objective == "rrhf":
        ranked, counts["rrhf_prompts_skipped"] = sp.ranked_records(samples, min_gap=cfg.pairs.min_gap)
        counts["rrhf_records"] = len(ranked)
        sp.write_jsonl(ranked, run_dir / "rrhf.jsonl")
        stage(f"RRHF: {len(ranked)} ranked prompts ({counts['rrhf_prompts_skipped']} skipped: all their samples tie) "
              f"→ {run_dir / 'rrhf.jsonl'}")
    return counts


# The training file of each objective the study trains (make_pairs writes it).
OBJECTIVE_DATA = {"dpo": "pairs.jsonl", "kto": "kto.jsonl", "rrhf": "rrhf.jsonl"}


def sft_config(cfg: SentimentConfig, run_dir: Path) -> TrainConfig:
    """SFT on the pairs' chosen completions (the sentiment study's reference; the frontier's
    Preferred-FT point)."""
    return train_config_of(
        cfg, objective="sft", data=str(run_dir / "pairs.jsonl"), eval_data=None, eval_fraction=0.0,
        lr=cfg.sft.lr, epochs=cfg.sft.epochs, max_steps=0, output_dir=str(run_dir / "sft"), lora=cfg.lora,
        save_every=0,
    )


def run_sft(cfg: SentimentConfig, run_dir: Path, stage, purpose: str = "to make the reference") -> str:
    """SFT on the pairs' chosen completions (`sft_config`); returns the trained model's dir."""
    from dpokit.train.loop import train

    stage(f"SFT (Preferred-FT on the best completion) {purpose}")
    if cfg.lora.r > 0:
        raise NotImplementedError("sft.enabled with LoRA: merge the adapter first (not supported yet)")
    result = train(sft_config(cfg, run_dir), log=stage, force=True)  # the study redoes its own stages on a rerun
    return str(result.final_dir)


def reference_heldout(cfg, ref_model, tokenizer, model_fp, heldout, reward_fn, run_dir, cache_dir, stage):
    """The reference's held-out samples (cached) and the held-out pairs built from them
    (written to run_dir/heldout_pairs.jsonl): the yardstick every policy is compared with."""
    stage(f"sampling the reference on {len(heldout)} held-out prompts")
    eval_settings = {"n": cfg.eval.samples_per_prompt, "max_new_tokens": cfg.pairs.max_new_tokens,
                     "temperature": cfg.pairs.temperature, "seed": cfg.eval.seed}
    ref_key = sp.samples_key(model_fp, heldout, eval_settings)
    ref_samples = sp.cached_samples(cache_dir, "heldout", ref_key, lambda: _eval_sampler(cfg, reward_fn, heldout)(ref_model, tokenizer, "reference samples"), stage)
    heldout_pairs, _ = sp.build_pairs(ref_samples, per_prompt=1, min_gap=cfg.pairs.min_gap)
    sp.write_jsonl(heldout_pairs, run_dir / "heldout_pairs.jsonl")
    return ref_samples, heldout_pairs


def evaluate_policy(cfg, policy, ref_model, tokenizer, ref_samples, reward_fn, heldout, stage):
    stage(f"sampling the policy on {len(heldout)} held-out prompts")
    pol_samples = _eval_sampler(cfg, reward_fn, heldout)(policy, tokenizer, "policy samples")
    stage("KL(π‖π_ref) from policy samples")
    policy_logps = pe.completion_logps(policy, tokenizer, pol_samples)
    ref_logps = pe.completion_logps(ref_model, tokenizer, pol_samples)
    return pol_samples, pe.compare(ref_samples, pol_samples, policy_logps, ref_logps)


def likelihood_change(cfg, eval_record: dict | None) -> dict | None:
    """Mean log π(y|x) − log π_ref(y|x) of held-out chosen and rejected completions, nats per
    completion, from the trainer's final eval (implicit reward / β). DPO only needs chosen to
    rise *relative* to rejected; both falling is likelihood displacement (Razin et al. 2024)."""
    from dpokit.losses import get_loss

    if not eval_record or get_loss(cfg.loss).reference_free or "rewards/chosen" not in eval_record:
        return None  # reference-free losses report β·ℓ, not a log-ratio
    return {"chosen": eval_record["rewards/chosen"] / cfg.beta, "rejected": eval_record["rewards/rejected"] / cfg.beta}


def heldout_calibration(cfg, dpo_cfg, policy, ref_model, tokenizer, records: list[dict], path: Path) -> dict:
    """Implicit margins β[(πc − rc) − (πr − rr)] (summed log-probs) of the held-out pairs
    against their ground-truth reward gaps (dpokit.eval.calibration)."""
    from dpokit.data.collate import resolve_pad_id
    from dpokit.data.normalize import load_pairs
    from dpokit.data.tokenize import tokenize_pairs
    from dpokit.eval.calibration import margin_calibration
    from dpokit.score import pair_logps
    from dpokit.train.prepare import tokenize_settings

    pairs, _ = load_pairs(str(path))
    items, _ = tokenize_pairs(pairs, tokenizer, tokenize_settings(dpo_cfg))
    if not items:
        return margin_calibration([], [])
    # Sources are "heldout_pairs.jsonl:LINE", one record per line: back to the record's rewards.
    rows = [records[int(pairs[it.index].source.rsplit(":", 1)[1]) - 1] for it in items]
    gaps = [r["chosen_reward"] - r["rejected_reward"] for r in rows]
    pad_id, batch = resolve_pad_id(tokenizer), cfg.batch_size
    pc, pr, _, _ = pair_logps(policy, items, pad_id, batch)
    rc, rr, _, _ = pair_logps(ref_model, items, pad_id, batch)
    margins = (cfg.beta * ((pc - rc) - (pr - rr))).tolist()
    return margin_calibration(margins, gaps)


def study_setup(cfg: SentimentConfig, config_name: str, log=print):
    """(stage printer, run dir, cache dir, ground-truth reward, train prompts, held-out prompts):
    what every study on the sentiment prompts starts from; writes the resolved config."""
    stage = Stages(log)
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / config_name)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    train_prompts, heldout = split_prompts(build_prompts(), cfg.prompts.n_heldout, cfg.prompts.seed)
    return stage, run_dir, cache_dir, get_reward(cfg.reward), train_prompts[: cfg.prompts.n_train], heldout


def run_sentiment(cfg: SentimentConfig, log=print) -> dict:
    """Run the whole study; returns summary.json's content."""
    from dpokit.models import load_model, model_fingerprint
    from dpokit.train.loop import train

    stage, run_dir, cache_dir, reward_fn, train_prompts, heldout = study_setup(cfg, "sentiment_config.yaml", log)
    stage(f"loading {cfg.model}")
    ref_model, tokenizer = load_model(cfg.model, dtype=cfg.dtype)
    pair_counts = make_pairs(cfg, ref_model, tokenizer, model_fingerprint(ref_model), train_prompts, reward_fn, run_dir, cache_dir, stage)
    ref_name = cfg.model
    if cfg.sft.enabled:
        ref_name = run_sft(cfg, run_dir, stage)
        ref_model, tokenizer = load_model(ref_name, dtype=cfg.dtype)

    ref_samples, heldout_pairs = reference_heldout(
        cfg, ref_model, tokenizer, model_fingerprint(ref_model), heldout, reward_fn, run_dir, cache_dir, stage)

    pairwise = cfg.objective == "dpo"  # the held-out pair file evaluates pairwise objectives only
    stage(f"{cfg.loss if pairwise else cfg.objective} training, β={cfg.beta}")
    dpo_cfg = train_config_of(
        cfg, model=ref_name, data=str(run_dir / OBJECTIVE_DATA[cfg.objective]),
        eval_data=str(run_dir / "heldout_pairs.jsonl") if heldout_pairs and pairwise else None, eval_fraction=0.0,
        output_dir=str(run_dir / "policy"),
    )
    result = train(dpo_cfg, log=stage, force=True)
    pol_samples, numbers = evaluate_policy(cfg, result.model, ref_model, tokenizer, ref_samples, reward_fn, heldout, stage)
    calibration = None
    if heldout_pairs and pairwise:
        stage("implicit margins vs ground-truth gaps on held-out pairs")
        calibration = heldout_calibration(cfg, dpo_cfg, result.model, ref_model, tokenizer, heldout_pairs, run_dir / "heldout_pairs.jsonl")

    summary = {
        "title": f"Sentiment control: {cfg.loss if pairwise else cfg.objective}, β={cfg.beta}",
        **numbers,
        "implicit_accuracy": (result.summary.get("eval") or {}).get("rewards/accuracies"),
        "margin_calibration": calibration,
        "likelihood_change": likelihood_change(cfg, result.summary.get("eval")),
        "beta": cfg.beta, "objective": cfg.objective, "loss": cfg.loss if pairwise else None, "pairs": pair_counts, "train_steps": result.summary["steps"],
        "skipped_steps": result.summary["skipped_steps"], "model": cfg.model, "reference": {**numbers["reference"], "model": ref_name},
    }
    summary["elapsed_s"] = stage.elapsed()
    write_outputs(run_dir, summary, ref_samples, pol_samples, cfg, stage)
    return summary


def write_outputs(run_dir: Path, summary: dict, ref_samples, pol_samples, cfg, stage) -> None:
    from dpokit import report

    plots = {
        "Training loss and reward margins": report.plot_training(run_dir / "policy" / "metrics.jsonl", run_dir / "training.png"),
        "Ground-truth reward, before vs after": report.plot_reward_distributions(
            ref_samples.flat_rewards(), pol_samples.flat_rewards(), run_dir / "rewards.png"),
        "Reward vs KL": report.plot_reward_vs_kl(
            [{"label": f"β={cfg.beta}", "kl": summary.get("kl"), "reward_mean": summary["policy"]["reward_mean"],
              "reward_ci95": summary["policy"]["reward_ci95"]}], run_dir / "reward_vs_kl.png"),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "heldout_samples.json").write_text(json.dumps({"reference": ref_samples.to_json(), "policy": pol_samples.to_json()}))
    md, html = report.write_report(run_dir, summary, plots, pe.side_by_side(ref_samples, pol_samples, cfg.eval.examples))
    for line in report.headline(summary):
        stage(line)
    stage(f"report: {html}  summary: {run_dir / 'summary.json'}")
