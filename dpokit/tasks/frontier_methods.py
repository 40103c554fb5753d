"""The frontier's runs, one function per method; each returns a JSON-able result (its frontier
points and any report) that `dpokit.tasks.frontier_runs.FinishedRuns` stores, so that a
resumed sweep reuses it. `Sweep` holds what every run shares."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from dpokit.eval.calibration import margin_calibration, spearman
from dpokit.tasks import sentiment as st
from dpokit.tasks.frontier_config import FrontierConfig
from dpokit.tasks.frontier_runs import FinishedRuns, file_digest, key_of, settings_of


@dataclass
class Sweep:
    """What the runs of one frontier share. `base` is what every run's result depends on
    besides its own settings (the model, the held-out prompts, how they are sampled and judged);
    `rm_key` joins it once the reward model exists."""

    cfg: FrontierConfig
    run_dir: Path
    evaluator: Any  # dpokit.tasks.frontier.PointEvaluator
    runs: FinishedRuns
    base: dict
    train_prompts: list[str]
    reward_fn: Any
    rm_dir: Path | None = None
    rm: Any = None
    rm_key: str | None = None

    @property
    def pairs(self) -> Path:
        return self.run_dir / "pairs.jsonl"


def point(method, setting, step, kl, reward_mean, ci, win_rate, n, elapsed_s, **extra) -> dict:
    return {"method": method, "setting": setting, "step": int(step), "kl": float(kl), "reward_mean": float(reward_mean),
            "reward_ci95": [float(c) for c in ci], "win_rate": win_rate, "n": int(n), "elapsed_s": float(elapsed_s), **extra}


def drop_weights(train_dir: str | Path) -> None:
    """`keep_weights: false`: delete a run's checkpoints and final model once its points are
    taken. Its result (frontier_run.json) is all that `--resume` reuses, so the sweep loses
    nothing; the run's metrics, config and summary files stay."""
    from dpokit.train.checkpoint import list_checkpoints

    for folder in [*list_checkpoints(Path(train_dir)), Path(train_dir) / "final"]:
        if folder.exists():
            shutil.rmtree(folder)


def eval_steps(total: int, points: int) -> list[int]:
    """`points` steps evenly spaced in 1..total, the last one = total."""
    points = min(points, total)
    return sorted({max(1, round(total * (i + 1) / points)) for i in range(points)})


# -- the reward model -------------------------------------------------------------------------
def reward_model(sw: Sweep, heldout_pairs: list[dict]) -> dict:
    """The Bradley–Terry reward model on the study's pairs; sets sw.rm_dir, sw.rm, sw.rm_key and
    returns its report (held-out pair accuracy, margin calibration, Spearman ρ, time)."""
    from dpokit.rlhf.reward_model import load_reward_model

    cfg, run_dir = sw.cfg, sw.run_dir
    rm_cfg = st.train_config_of(
        cfg, objective="rm", data=str(sw.pairs), eval_data=str(run_dir / "heldout_pairs.jsonl") if heldout_pairs else None,
        eval_fraction=0.0, lr=cfg.rm.lr, head_lr=cfg.rm.head_lr, epochs=cfg.rm.epochs, batch_size=cfg.rm.batch_size, max_steps=0,
        output_dir=str(run_dir / "rm"), save_every=0,
    )
    sw.rm_key = key_of(sw.base, settings_of(rm_cfg), file_digest(rm_cfg.data), heldout_pairs)
    done = sw.runs.run("rm", sw.rm_key, partial(_fit_reward_model, rm_cfg, heldout_pairs, sw.evaluator),
                       intact=lambda r: (Path(r["final_dir"]) / "config.json").exists())
    report = done["report"]
    sw.evaluator.stage(f"reward model: held-out pair accuracy {report['heldout_pair_accuracy']}, Spearman with the ground "
                       f"truth on held-out samples {report['spearman_with_ground_truth']}")
    sw.rm_dir = Path(done["final_dir"])
    sw.rm = load_reward_model(sw.rm_dir)[0]
    return report


def _fit_reward_model(rm_cfg, heldout_pairs: list[dict], evaluator) -> dict:
    from dpokit.rlhf.reward_model import load_reward_model, score_rows
    from dpokit.rlhf.rollout import build_rollout_batch
    from dpokit.train.loop import train

    evaluator.stage("reward model (Bradley–Terry) on the pairs")
    result = train(rm_cfg, log=evaluator.stage, force=True)
    rm, _ = load_reward_model(result.final_dir)
    samples = evaluator.ref_samples
    prompt_ids = [evaluator.tokenizer(p, add_special_tokens=False)["input_ids"] for p, row in zip(samples.prompts, samples.completions) for _ in row]
    batch = build_rollout_batch(prompt_ids, [c.token_ids or [evaluator.tokenizer.eos_token_id] for row in samples.completions for c in row],
                                evaluator.tokenizer.eos_token_id)
    import torch

    with torch.no_grad():
        scores = score_rows(rm, batch.input_ids, batch.attention_mask, batch.attention_mask.sum(-1) - 1).tolist()
    gaps = [r["chosen_reward"] - r["rejected_reward"] for r in heldout_pairs]
    margins = _rm_margins(rm, evaluator.tokenizer, Path(rm_cfg.eval_data), rm_cfg) if heldout_pairs else []
    report = {
        "heldout_pair_accuracy": (result.summary.get("eval") or {}).get("rewards/accuracies"),
        "margin_calibration": margin_calibration(margins, gaps[: len(margins)]) if margins else None,
        "spearman_with_ground_truth": spearman(scores, samples.flat_rewards()),
        "train_seconds": result.summary["train_seconds"],
    }
    return {"final_dir": str(result.final_dir), "report": report}


def _rm_margins(rm, tokenizer, path: Path, rm_cfg) -> list[float]:
    """r(chosen) − r(rejected) of the held-out pairs, in file order (skipped pairs dropped)."""
    import torch

    from dpokit.data.collate import resolve_pad_id
    from dpokit.data.normalize import load_pairs
    from dpokit.data.tokenize import tokenize_pairs
    from dpokit.rlhf.reward_model import pair_rewards
    from dpokit.train.prepare import tokenize_settings

    pairs, _ = load_pairs(str(path))
    items, _ = tokenize_pairs(pairs, tokenizer, tokenize_settings(rm_cfg))
    if len(items) != len(pairs):
        return []  # a margin per record, or none: the gaps are matched by position
    with torch.no_grad():
        chosen, rejected = pair_rewards(rm, items, resolve_pad_id(tokenizer))
    return (chosen - rejected).tolist()


# -- DPO and Preferred-FT (offline) ------------------------------------------------------------
def dpo_total_steps(cfg: FrontierConfig, n_pairs: int) -> int:
    steps_per_epoch = math.ceil(max(n_pairs, 1) / (cfg.batch_size * cfg.grad_accum))
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))


def dpo(sw: Sweep, beta: float, at: list[int], seed: int | None = None) -> dict:
    """DPO at `beta`, evaluated at the steps `at` (checkpoints; the last one = the end); with
    `seed`, a repeat of the run under that training seed (the stability study)."""
    name = f"dpo-beta{beta}" + ("" if seed is None else f"-seed{seed}")
    dpo_cfg = st.train_config_of(
        sw.cfg, objective="dpo", beta=beta, data=str(sw.pairs), eval_data=None, eval_fraction=0.0,
        output_dir=str(sw.run_dir / name), save_every=at[0] if len(at) > 1 else 0, keep_checkpoints=0,
        seed=sw.cfg.seed if seed is None else seed,
    )
    key = key_of(sw.base, settings_of(dpo_cfg), file_digest(dpo_cfg.data), at)
    return sw.runs.run(name, key, partial(_dpo_run, dpo_cfg, beta, sw.evaluator, sw.cfg.keep_weights))


def _dpo_run(dpo_cfg, beta: float, evaluator, keep_weights: bool = True) -> dict:
    from dpokit.models import load_model
    from dpokit.train.loop import train

    evaluator.stage(f"DPO β={beta}")
    result = train(dpo_cfg, log=lambda *_: None, force=True)
    seconds, steps = result.summary["train_seconds"], result.summary["steps"]
    evaluated = [(int(ck.name.split("-")[1]), ck / "model") for ck in sorted(Path(dpo_cfg.output_dir).glob("checkpoint-*"))]
    points, implicit = [], []
    for step, where in evaluated + [(steps, None)]:
        policy = result.model if where is None else load_model(where)[0]
        # Steps take near-equal time, so an intermediate point's cost is prorated.
        points.append(evaluator(policy, "dpo", f"β={beta}", step, seconds * step / steps))
        implicit.append({"beta": beta, "step": step, "spearman": evaluator.implicit_reward_spearman(policy, beta)})
    if not keep_weights:
        drop_weights(dpo_cfg.output_dir)
    return {"points": points, "implicit": implicit}


def preferred_ft(sw: Sweep) -> dict:
    sft_cfg = st.sft_config(sw.cfg, sw.run_dir)
    key = key_of(sw.base, settings_of(sft_cfg), file_digest(sft_cfg.data))
    return sw.runs.run("sft", key, partial(_preferred_ft_run, sw.cfg, sw.run_dir, sw.evaluator))["point"]


def _preferred_ft_run(cfg: FrontierConfig, run_dir: Path, evaluator) -> dict:
    from dpokit.models import load_model

    final = Path(st.run_sft(cfg, run_dir, evaluator.stage, purpose="as a frontier point"))
    summary = json.loads((final / "train_summary.json").read_text())
    point = evaluator(load_model(final)[0], "preferred-ft", f"lr={cfg.sft.lr:g}", summary["steps"], summary["train_seconds"])
    if not cfg.keep_weights:
        drop_weights(final.parent)
    return {"point": point}


# -- PPO, RLOO (online) and Best-of-N -----------------------------------------------------------
def ppo(sw: Sweep, method: str, reward: str, coef: float, n_points: int, seed: int | None = None) -> dict:
    """PPO (`reward="model"`) or PPO-GT (`reward=` the ground truth) at KL coefficient `coef`."""
    from dpokit.rlhf.ppo_config import PPOConfig

    cfg, p = sw.cfg, sw.cfg.ppo
    name = f"{method}-kl{coef}" + ("" if seed is None else f"-seed{seed}")
    ppo_cfg = PPOConfig(
        model=cfg.model, reward=reward, reward_model=str(sw.rm_dir), kl_coef=coef, steps=p.steps, rollout_size=p.rollout_size,
        ppo_epochs=p.ppo_epochs, minibatch_size=p.minibatch_size, lr=p.lr, max_new_tokens=cfg.pairs.max_new_tokens,
        temperature=cfg.pairs.temperature, seed=cfg.seed if seed is None else seed, output_dir=str(sw.run_dir / name),
        progress=False,
    )
    key = key_of(sw.base, settings_of(ppo_cfg), sw.rm_key, sw.train_prompts, n_points)
    return sw.runs.run(name, key, partial(_ppo_run, sw, ppo_cfg, method, coef, n_points))


def _ppo_run(sw: Sweep, ppo_cfg, method: str, coef: float, n_points: int) -> dict:
    from dpokit.models import load_model
    from dpokit.rlhf.ppo import PPOTrainer
    from dpokit.rlhf.reward_model import load_reward_model

    sw.evaluator.stage(f"{method} kl_coef={coef} (seed {ppo_cfg.seed})")
    policy, tokenizer = load_model(ppo_cfg.model, dtype=sw.cfg.dtype)
    trainer = PPOTrainer(ppo_cfg, policy=policy, tokenizer=tokenizer, value_model=load_reward_model(sw.rm_dir)[0],
                         prompts=sw.train_prompts, reward_fn=sw.reward_fn, reward_model=sw.rm, log=lambda *_: None)
    return online_points(trainer, method, f"kl_coef={coef}", ppo_cfg.steps, n_points, sw.evaluator, Path(ppo_cfg.output_dir))


def rloo(sw: Sweep, coef: float) -> dict:
    from dpokit.rlhf.rloo_config import RLOOConfig

    cfg, r = sw.cfg, sw.cfg.rloo
    rloo_cfg = RLOOConfig(
        model=cfg.model, reward="model", reward_model=str(sw.rm_dir), kl_coef=coef, steps=r.steps, rollout_prompts=r.rollout_prompts,
        k=r.k, lr=r.lr, max_new_tokens=cfg.pairs.max_new_tokens, temperature=cfg.pairs.temperature, seed=cfg.seed,
        output_dir=str(sw.run_dir / f"rloo-kl{coef}"), progress=False,
    )
    key = key_of(sw.base, settings_of(rloo_cfg), sw.rm_key, sw.train_prompts, r.points)
    return sw.runs.run(f"rloo-kl{coef}", key, partial(_rloo_run, sw, rloo_cfg, coef))


def _rloo_run(sw: Sweep, rloo_cfg, coef: float) -> dict:
    from dpokit.models import load_model
    from dpokit.rlhf.rloo import RLOOTrainer

    sw.evaluator.stage(f"rloo kl_coef={coef}")
    policy, tokenizer = load_model(rloo_cfg.model, dtype=sw.cfg.dtype)
    trainer = RLOOTrainer(rloo_cfg, policy=policy, tokenizer=tokenizer, prompts=sw.train_prompts, reward_fn=sw.reward_fn,
                          reward_model=sw.rm, log=lambda *_: None)
    return online_points(trainer, "rloo", f"kl_coef={coef}", rloo_cfg.steps, sw.cfg.rloo.points, sw.evaluator,
                         Path(rloo_cfg.output_dir))


def online_points(trainer, method: str, setting: str, steps: int, n_points: int, evaluator, run_dir: Path) -> dict:
    """Run `steps` rounds of a PPO or RLOO trainer, evaluating its policy at evenly spaced
    rounds; the per-round metrics go to `run_dir/metrics.jsonl` (learned vs ground-truth reward).
    A run stopped by its KL bound (TrainingDiverged) keeps the points it reached and says why
    under "stopped": one run's blow-up is a finding of the sweep, not the end of it."""
    from dpokit.train.loop import TrainingDiverged

    run_dir.mkdir(parents=True, exist_ok=True)
    points, spent, rows, stopped = [], 0.0, [], None
    at = set(eval_steps(steps, n_points))
    for rnd in range(steps):
        started = time.perf_counter()
        try:
            rows.append(trainer.round(rnd))
        except TrainingDiverged as e:
            stopped = f"round {rnd + 1}: {e}"
            evaluator.stage(f"  {method} {setting} stopped at {stopped}")
            break
        spent += time.perf_counter() - started
        if rnd + 1 in at:
            points.append(evaluator(trainer.policy, method, setting, rnd + 1, spent))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if rows and "reward/model" in rows[0]:  # where the learned reward and the ground truth part
        from dpokit.eval.frontier_report import plot_reward_model_overoptimisation

        plot_reward_model_overoptimisation(rows, run_dir / "reward_vs_ground_truth.png")
    return {"points": points, "stopped": stopped}


def best_of_n(sw: Sweep, ref_model, tokenizer, heldout) -> dict:
    """{"points": Best-of-N frontier points, "reward_model_on_samples": the reward model's
    within-prompt pairwise accuracy and Spearman ρ on the same samples}."""
    key = key_of(sw.base, dataclasses.asdict(sw.cfg.bon), sw.rm_key, sw.cfg.pairs.batch_size, sw.cfg.pairs.min_gap)
    run = partial(_best_of_n_run, sw.cfg, ref_model, tokenizer, heldout, sw.reward_fn, sw.rm, sw.runs.log)
    return sw.runs.run("best-of-n", key, run)


def _best_of_n_run(cfg: FrontierConfig, ref_model, tokenizer, heldout, reward_fn, rm, stage) -> dict:
    """Best-of-N from the reference on the held-out prompts; its KL is the analytic
    log N − (N−1)/N (an upper bound), not measured. The same M samples per prompt also measure
    the reward model far more tightly than the held-out pair file (one pair per prompt): every
    within-prompt pair with a ground-truth gap ≥ pairs.min_gap."""
    from dpokit.rlhf.best_of_n import (
        frontier_points,
        resolve_ns,
        sample_best_of_n,
        within_prompt_pair_accuracy,
    )

    stage(f"Best-of-N: {cfg.bon.m} reference samples per held-out prompt")
    started = time.perf_counter()
    ns = resolve_ns(cfg.bon.m, cfg.bon.ns)
    samples = sample_best_of_n(ref_model, tokenizer, heldout, reward_fn=reward_fn, reward_model=rm, m=cfg.bon.m,
                               max_new_tokens=cfg.pairs.max_new_tokens, temperature=cfg.pairs.temperature,
                               batch_size=cfg.pairs.batch_size, seed=cfg.eval.seed, progress=cfg.progress)
    raw = frontier_points(samples.truth, samples.rm_scores, ns)
    seconds = time.perf_counter() - started
    names = {"reward-model": "best-of-n (reward model)", "oracle": "best-of-n (oracle)"}
    rm_eval = within_prompt_pair_accuracy(samples.truth, samples.rm_scores, cfg.pairs.min_gap)
    rm_eval["spearman"] = spearman(samples.rm_scores.flatten().tolist(), samples.truth.flatten().tolist())
    rm_eval["prompts"], rm_eval["samples_per_prompt"] = len(heldout), cfg.bon.m
    stage(f"reward model on the Best-of-N samples: pairwise accuracy {rm_eval['accuracy']:.3f} over {rm_eval['pairs']} "
          f"within-prompt pairs, Spearman ρ {rm_eval['spearman']:.3f}")
    return {"points": [point(names[q["selector"]], f"N={q['n']}", 0, q["kl"], q["reward_mean"], q["reward_ci95"], None,
                             len(heldout), seconds) for q in raw], "reward_model_on_samples": rm_eval}
