"""`dpokit run frontier`: DPO and the RLHF baseline it replaces on one reward–KL frontier.

    reference samples → pairs (as the sentiment study)        → Bradley–Terry reward model
    DPO at each β, Preferred-FT                                (the pairs, offline)
    PPO at each KL coefficient (+ PPO on the ground truth), RLOO at each KL coefficient
                                                               (online, reward = the reward model)
    Best-of-N from the reference, selected by the reward model and by the ground truth

Every trained policy is evaluated the same way, on the same held-out prompts with the same
sampling settings (`PointEvaluator`): ground-truth reward mean [95% CI], KL(π‖π_ref) from policy
samples, win rate against the reference; each run at several steps (intermediate points).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from dpokit.eval.calibration import margin_calibration, spearman
from dpokit.tasks import sentiment as st
from dpokit.tasks.frontier_config import FrontierConfig


class PointEvaluator:
    """Turns a policy into a frontier point; also the implicit-reward check of DPO points."""

    def __init__(self, cfg: FrontierConfig, ref_model, tokenizer, ref_samples, reward_fn, heldout, stage):
        from dpokit.eval import policy_eval as pe

        self.cfg, self.ref_model, self.tokenizer = cfg, ref_model, tokenizer
        self.ref_samples, self.reward_fn, self.heldout, self.stage = ref_samples, reward_fn, heldout, stage
        # log π_ref of the held-out reference samples, once: the implicit rewards' baseline.
        self.ref_sample_logps = pe.completion_logps(ref_model, tokenizer, ref_samples)

    def reference_point(self) -> dict:
        from dpokit.eval.stats import mean_ci95

        mean, ci = mean_ci95(self.ref_samples.flat_rewards())
        return _point("reference", "π_ref", 0, 0.0, mean, list(ci), 0.5, len(self.heldout), 0.0)

    def __call__(self, policy, method: str, setting: str, step: int, elapsed_s: float) -> dict:
        _, numbers = st.evaluate_policy(self.cfg, policy, self.ref_model, self.tokenizer, self.ref_samples,
                                        self.reward_fn, self.heldout, lambda *_: None)
        pol = numbers["policy"]
        point = _point(method, setting, step, numbers["kl"], pol["reward_mean"], pol["reward_ci95"],
                       numbers["win_rate"], numbers["n_heldout"], elapsed_s)
        self.stage(f"  {method} {setting} step {step}: reward {pol['reward_mean']:.3f}, KL {numbers['kl']:.2f}, "
                   f"win {numbers['win_rate']:.0%}")
        return point

    def implicit_reward_spearman(self, policy, beta: float) -> float | None:
        """Spearman ρ of β·(log π − log π_ref) with the ground truth, over the held-out
        reference samples: does the DPO policy work as a reward model of reference text?"""
        from dpokit.eval import policy_eval as pe

        logps = pe.completion_logps(policy, self.tokenizer, self.ref_samples)
        implicit = [beta * (a - b) for a, b in zip(logps, self.ref_sample_logps)]
        return spearman(implicit, self.ref_samples.flat_rewards())


def _point(method, setting, step, kl, reward_mean, ci, win_rate, n, elapsed_s) -> dict:
    return {"method": method, "setting": setting, "step": int(step), "kl": float(kl), "reward_mean": float(reward_mean),
            "reward_ci95": [float(c) for c in ci], "win_rate": win_rate, "n": int(n), "elapsed_s": float(elapsed_s)}


def _eval_steps(total: int, points: int) -> list[int]:
    """`points` steps evenly spaced in 1..total, the last one = total."""
    points = min(points, total)
    return sorted({max(1, round(total * (i + 1) / points)) for i in range(points)})


# -- offline methods --------------------------------------------------------------------------
def train_reward_model(cfg: FrontierConfig, run_dir: Path, heldout_pairs: list[dict], evaluator, stage):
    """The Bradley–Terry reward model on the study's pairs; returns (model dir, its report)."""
    from dpokit.rlhf.reward_model import load_reward_model, score_rows
    from dpokit.rlhf.rollout import build_rollout_batch
    from dpokit.train.loop import train

    stage("reward model (Bradley–Terry) on the pairs")
    rm_cfg = st.train_config_of(
        cfg, objective="rm", data=str(run_dir / "pairs.jsonl"), eval_data=str(run_dir / "heldout_pairs.jsonl") if heldout_pairs else None,
        eval_fraction=0.0, lr=cfg.rm.lr, epochs=cfg.rm.epochs, batch_size=cfg.rm.batch_size, max_steps=0,
        output_dir=str(run_dir / "rm"), save_every=0,
    )
    result = train(rm_cfg, log=stage, force=True)
    rm, _ = load_reward_model(result.final_dir)
    samples = evaluator.ref_samples
    prompt_ids = [evaluator.tokenizer(p, add_special_tokens=False)["input_ids"] for p, row in zip(samples.prompts, samples.completions) for _ in row]
    batch = build_rollout_batch(prompt_ids, [c.token_ids or [evaluator.tokenizer.eos_token_id] for row in samples.completions for c in row],
                                evaluator.tokenizer.eos_token_id)
    import torch

    with torch.no_grad():
        scores = score_rows(rm, batch.input_ids, batch.attention_mask, batch.attention_mask.sum(-1) - 1).tolist()
    gaps = [r["chosen_reward"] - r["rejected_reward"] for r in heldout_pairs]
    margins = _rm_margins(rm, evaluator.tokenizer, run_dir / "heldout_pairs.jsonl", rm_cfg) if heldout_pairs else []
    report = {
        "heldout_pair_accuracy": (result.summary.get("eval") or {}).get("rewards/accuracies"),
        "margin_calibration": margin_calibration(margins, gaps[: len(margins)]) if margins else None,
        "spearman_with_ground_truth": spearman(scores, samples.flat_rewards()),
        "train_seconds": result.summary["train_seconds"],
    }
    stage(f"reward model: held-out pair accuracy {report['heldout_pair_accuracy']}, Spearman with the ground truth "
          f"on held-out samples {report['spearman_with_ground_truth']}")
    return result.final_dir, rm, report


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


def dpo_points(cfg: FrontierConfig, run_dir: Path, n_pairs: int, evaluator, stage) -> tuple[list[dict], list[dict]]:
    """DPO at each β, evaluated at intermediate checkpoints and at the end; plus the implicit
    reward's Spearman ρ with the ground truth at every point."""
    from dpokit.models import load_model
    from dpokit.train.loop import train

    points, implicit = [], []
    steps_per_epoch = math.ceil(max(n_pairs, 1) / (cfg.batch_size * cfg.grad_accum))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    at = _eval_steps(total, cfg.dpo.points)
    for beta in cfg.dpo.betas:
        stage(f"DPO β={beta}")
        dpo_cfg = st.train_config_of(
            cfg, objective="dpo", beta=beta, data=str(run_dir / "pairs.jsonl"), eval_data=None, eval_fraction=0.0,
            output_dir=str(run_dir / f"dpo-beta{beta}"), save_every=at[0] if len(at) > 1 else 0, keep_checkpoints=0,
        )
        result = train(dpo_cfg, log=lambda *_: None, force=True)
        seconds, steps = result.summary["train_seconds"], result.summary["steps"]
        evaluated = [(int(ck.name.split("-")[1]), ck / "model") for ck in sorted(Path(dpo_cfg.output_dir).glob("checkpoint-*"))]
        for step, where in evaluated + [(steps, None)]:
            policy = result.model if where is None else load_model(where)[0]
            # Steps take near-equal time, so an intermediate point's cost is prorated.
            points.append(evaluator(policy, "dpo", f"β={beta}", step, seconds * step / steps))
            implicit.append({"beta": beta, "step": step, "spearman": evaluator.implicit_reward_spearman(policy, beta)})
        del result
    return points, implicit


def preferred_ft_point(cfg: FrontierConfig, run_dir: Path, evaluator, stage) -> dict:
    from dpokit.models import load_model

    final = Path(st.run_sft(cfg, run_dir, stage))
    summary = json.loads((final / "train_summary.json").read_text())
    return evaluator(load_model(final)[0], "preferred-ft", f"lr={cfg.sft.lr:g}", summary["steps"], summary["train_seconds"])


# -- online methods ---------------------------------------------------------------------------
def online_points(trainer, method: str, setting: str, steps: int, n_points: int, evaluator, run_dir: Path) -> list[dict]:
    """Run `steps` rounds of a PPO or RLOO trainer, evaluating its policy at evenly spaced
    rounds; the per-round metrics go to `run_dir/metrics.jsonl` (learned vs ground-truth reward)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    points, spent, rows = [], 0.0, []
    at = set(_eval_steps(steps, n_points))
    for rnd in range(steps):
        started = time.perf_counter()
        rows.append(trainer.round(rnd))
        spent += time.perf_counter() - started
        if rnd + 1 in at:
            points.append(evaluator(trainer.policy, method, setting, rnd + 1, spent))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if rows and "reward/model" in rows[0]:  # where the learned reward and the ground truth part
        from dpokit.eval.frontier_report import plot_reward_model_overoptimisation

        plot_reward_model_overoptimisation(rows, run_dir / "reward_vs_ground_truth.png")
    return points


def ppo_points(cfg: FrontierConfig, train_prompts, rm_dir: Path, rm, reward_fn, evaluator, run_dir: Path, stage) -> list[dict]:
    from dpokit.models import load_model
    from dpokit.rlhf.ppo import PPOTrainer
    from dpokit.rlhf.ppo_config import PPOConfig
    from dpokit.rlhf.reward_model import load_reward_model

    runs = [("ppo", "model", c) for c in cfg.ppo.kl_coefs]
    if cfg.ppo.ground_truth_kl_coef > 0:
        runs.append(("ppo-gt", cfg.reward, cfg.ppo.ground_truth_kl_coef))
    points = []
    for method, reward, coef in runs:
        stage(f"{method} kl_coef={coef}")
        p = cfg.ppo
        ppo_cfg = PPOConfig(
            model=cfg.model, reward=reward, reward_model=str(rm_dir), kl_coef=coef, steps=p.steps, rollout_size=p.rollout_size,
            ppo_epochs=p.ppo_epochs, minibatch_size=p.minibatch_size, lr=p.lr, max_new_tokens=cfg.pairs.max_new_tokens,
            temperature=cfg.pairs.temperature, seed=cfg.seed, output_dir=str(run_dir / f"{method}-kl{coef}"), progress=False,
        )
        policy, tokenizer = load_model(cfg.model, dtype=cfg.dtype)
        trainer = PPOTrainer(ppo_cfg, policy=policy, tokenizer=tokenizer, value_model=load_reward_model(rm_dir)[0],
                             prompts=train_prompts, reward_fn=reward_fn, reward_model=rm, log=lambda *_: None)
        points += online_points(trainer, method, f"kl_coef={coef}", p.steps, p.points, evaluator, Path(ppo_cfg.output_dir))
    return points


def rloo_points(cfg: FrontierConfig, train_prompts, rm_dir: Path, rm, reward_fn, evaluator, run_dir: Path, stage) -> list[dict]:
    from dpokit.models import load_model
    from dpokit.rlhf.rloo import RLOOTrainer
    from dpokit.rlhf.rloo_config import RLOOConfig

    points, r = [], cfg.rloo
    for coef in r.kl_coefs:
        stage(f"rloo kl_coef={coef}")
        rloo_cfg = RLOOConfig(
            model=cfg.model, reward="model", reward_model=str(rm_dir), kl_coef=coef, steps=r.steps, rollout_prompts=r.rollout_prompts,
            k=r.k, lr=r.lr, max_new_tokens=cfg.pairs.max_new_tokens, temperature=cfg.pairs.temperature, seed=cfg.seed,
            output_dir=str(run_dir / f"rloo-kl{coef}"), progress=False,
        )
        policy, tokenizer = load_model(cfg.model, dtype=cfg.dtype)
        trainer = RLOOTrainer(rloo_cfg, policy=policy, tokenizer=tokenizer, prompts=train_prompts, reward_fn=reward_fn,
                              reward_model=rm, log=lambda *_: None)
        points += online_points(trainer, "rloo", f"kl_coef={coef}", r.steps, r.points, evaluator, Path(rloo_cfg.output_dir))
    return points


def best_of_n_points(cfg: FrontierConfig, ref_model, tokenizer, heldout, reward_fn, rm, stage) -> list[dict]:
    """Best-of-N from the reference on the held-out prompts; its KL is the analytic
    log N − (N−1)/N (an upper bound), not measured."""
    from dpokit.rlhf.best_of_n import best_of_n_frontier

    stage(f"Best-of-N: {cfg.bon.m} reference samples per held-out prompt")
    started = time.perf_counter()
    raw = best_of_n_frontier(ref_model, tokenizer, heldout, reward_fn=reward_fn, reward_model=rm, m=cfg.bon.m, ns=cfg.bon.ns,
                             max_new_tokens=cfg.pairs.max_new_tokens, temperature=cfg.pairs.temperature,
                             batch_size=cfg.pairs.batch_size, seed=cfg.eval.seed, progress=cfg.progress)
    seconds = time.perf_counter() - started
    names = {"reward-model": "best-of-n (reward model)", "oracle": "best-of-n (oracle)"}
    return [_point(names[q["selector"]], f"N={q['n']}", 0, q["kl"], q["reward_mean"], q["reward_ci95"], None, len(heldout), seconds)
            for q in raw]


# -- the study --------------------------------------------------------------------------------
def run_frontier(cfg: FrontierConfig, log=print) -> dict:
    """Run every method and write frontier.json / .csv / .png and the report; returns the summary."""
    from dpokit.eval.frontier_report import write_frontier
    from dpokit.models import load_model, model_fingerprint

    stage, run_dir, cache_dir, reward_fn, train_prompts, heldout = st.study_setup(cfg, "frontier_config.yaml", log)

    stage(f"loading {cfg.model}")
    ref_model, tokenizer = load_model(cfg.model, dtype=cfg.dtype)
    fingerprint = model_fingerprint(ref_model)
    pair_counts = st.make_pairs(cfg, ref_model, tokenizer, fingerprint, train_prompts, reward_fn, run_dir, cache_dir, stage)
    ref_samples, heldout_pairs = st.reference_heldout(cfg, ref_model, tokenizer, fingerprint, heldout, reward_fn, run_dir, cache_dir, stage)
    evaluator = PointEvaluator(cfg, ref_model, tokenizer, ref_samples, reward_fn, heldout, stage)

    points = [evaluator.reference_point()]
    rm_dir, rm, rm_report = train_reward_model(cfg, run_dir, heldout_pairs, evaluator, stage)
    dpo, implicit = dpo_points(cfg, run_dir, pair_counts["pairs"], evaluator, stage)
    points += dpo
    if cfg.preferred_ft:
        points.append(preferred_ft_point(cfg, run_dir, evaluator, stage))
    points += ppo_points(cfg, train_prompts, rm_dir, rm, reward_fn, evaluator, run_dir, stage)
    points += rloo_points(cfg, train_prompts, rm_dir, rm, reward_fn, evaluator, run_dir, stage)
    points += best_of_n_points(cfg, ref_model, tokenizer, heldout, reward_fn, rm, stage)

    extra = {"reward_model": rm_report, "dpo_implicit_reward_spearman": implicit, "pairs": pair_counts,
             "elapsed_s": stage.elapsed()}
    files = write_frontier(run_dir, points, title="Reward–KL frontier: sentiment control", extra=extra)
    stage(f"frontier: {', '.join(str(f) for f in files.values())}")
    return {"points": points, **extra}
