"""`dpokit run frontier`: DPO and the RLHF baseline it replaces on one reward–KL frontier.

    reference samples → pairs (as the sentiment study)        → Bradley–Terry reward model
    DPO at each β, Preferred-FT                                (the pairs, offline)
    PPO at each KL coefficient (+ PPO on the ground truth), RLOO at each KL coefficient
                                                               (online, reward = the reward model)
    Best-of-N from the reference, selected by the reward model and by the ground truth

Every trained policy is evaluated the same way, on the same held-out prompts with the same
sampling settings (`PointEvaluator`): ground-truth reward mean [95% CI], KL(π‖π_ref) from policy
samples, win rate against the reference; each run at several steps (intermediate points).
The runs themselves are in `frontier_methods`; `--resume` reuses the finished ones
(`frontier_runs`). Stability: the DPO and PPO settings of `stability` repeated under more
training seeds, their final points' spread and how many collapsed.
"""

from __future__ import annotations

import dataclasses
import statistics

from dpokit.eval.calibration import spearman
from dpokit.tasks import frontier_implicit as fi
from dpokit.tasks import frontier_methods as fm
from dpokit.tasks import sentiment as st
from dpokit.tasks.frontier_config import FrontierConfig
from dpokit.tasks.frontier_runs import FinishedRuns


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
        return fm.point("reference", "π_ref", 0, 0.0, mean, list(ci), 0.5, len(self.heldout), 0.0)

    def __call__(self, policy, method: str, setting: str, step: int, elapsed_s: float) -> dict:
        _, numbers = st.evaluate_policy(self.cfg, policy, self.ref_model, self.tokenizer, self.ref_samples,
                                        self.reward_fn, self.heldout, lambda *_: None)
        pol = numbers["policy"]
        point = fm.point(method, setting, step, numbers["kl"], pol["reward_mean"], pol["reward_ci95"],
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


def stability(sw: fm.Sweep, reference: dict, dpo_at: list[int]) -> dict | None:
    """The DPO and PPO settings of `cfg.stability` trained once per seed: each run's final point,
    the spread (mean, sd, min, max of reward and KL) and the runs that collapsed (stopped by the
    KL bound, or final ground-truth reward below the reference's 95% CI)."""
    s = sw.cfg.stability
    if not s.seeds:
        return None
    out = {}
    for method in ("dpo", "ppo"):
        finals = []
        for seed in s.seeds:
            main = seed == sw.cfg.seed  # the frontier's own run, when it has this setting
            if method == "dpo":
                main = main and s.dpo_beta in sw.cfg.dpo.betas
                done = fm.dpo(sw, s.dpo_beta, dpo_at) if main else fm.dpo(sw, s.dpo_beta, dpo_at[-1:], seed=seed)
            else:
                main = main and s.ppo_kl_coef in sw.cfg.ppo.kl_coefs
                done = fm.ppo(sw, "ppo", "model", s.ppo_kl_coef, sw.cfg.ppo.points if main else 1, seed=None if main else seed)
            last = done["points"][-1] if done["points"] else None
            collapsed = done.get("stopped") is not None or last is None or last["reward_mean"] < reference["reward_ci95"][0]
            finals.append({"seed": seed, "reward_mean": last and last["reward_mean"], "kl": last and last["kl"],
                           "win_rate": last and last["win_rate"], "stopped": done.get("stopped"), "collapsed": collapsed})
        out[method] = {"setting": f"β={s.dpo_beta}" if method == "dpo" else f"kl_coef={s.ppo_kl_coef}", "runs": finals,
                       **{k: _spread([f[k] for f in finals if f[k] is not None]) for k in ("reward_mean", "kl")},
                       "collapsed": sum(f["collapsed"] for f in finals)}
    return out


def _reward_model_md(report: dict, implicit: list[dict]) -> str:
    """The reward model's report and the DPO implicit reward's rank correlation, in words."""
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}"
    lines = ["## Reward model and implicit reward", "",
             (f"- Reward model: held-out pair accuracy {fmt(report['heldout_pair_accuracy'])}, Spearman ρ with the ground "
              f"truth on held-out reference samples {fmt(report['spearman_with_ground_truth'])}, trained in "
              f"{report['train_seconds'] / 60:.1f} min.")]
    on = report.get("on_best_of_n_samples")
    if on:
        lines.append(f"- Reward model on the Best-of-N samples ({on['samples_per_prompt']} per held-out prompt, "
                     f"{on['prompts']} prompts): pairwise accuracy {fmt(on['accuracy'])} over {on['pairs']} within-prompt "
                     f"pairs (ground-truth gap ≥ min_gap), Spearman ρ {fmt(on['spearman'])}.")
    lines += [f"- DPO β={r['beta']} step {r['step']}: implicit reward β·log π/π_ref, Spearman ρ with the ground truth "
              f"{fmt(r['spearman'])}." for r in implicit]
    return "\n".join(lines) + "\n"


def _cost_md(extra: dict) -> str:
    runs = extra["run_wall_s"]
    lines = ["## Wall time", "", "| run | min |", "|---|---|"] + [f"| {k} | {v / 60:.1f} |" for k, v in runs.items()]
    lines += ["", (f"Runs: {sum(runs.values()) / 60:.1f} min in all (reused runs at the time they took); this invocation "
                  f"{extra['elapsed_s'] / 60:.1f} min, including sampling the pairs and the held-out reference.")]
    return "\n".join(lines) + "\n"


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "min": min(values), "max": max(values)}


# -- the study --------------------------------------------------------------------------------
def run_frontier(cfg: FrontierConfig, log=print, resume: bool = False) -> dict:
    """Run every method and write frontier.json / .csv / .png and the report; returns the summary.
    `resume`: reuse the runs a previous sweep in this directory finished with the same
    settings and inputs (dpokit.tasks.frontier_runs); redo the rest."""
    from dpokit.eval.frontier_report import stability_md, write_frontier
    from dpokit.models import load_model, model_fingerprint
    from dpokit.tasks.sentiment_pairs import sample_settings

    stage, run_dir, cache_dir, reward_fn, train_prompts, heldout = st.study_setup(cfg, "frontier_config.yaml", log)

    stage(f"loading {cfg.model}")
    ref_model, tokenizer = load_model(cfg.model, dtype=cfg.dtype)
    fingerprint = model_fingerprint(ref_model)
    pair_counts = st.make_pairs(cfg, ref_model, tokenizer, fingerprint, train_prompts, reward_fn, run_dir, cache_dir, stage)
    ref_samples, heldout_pairs = st.reference_heldout(cfg, ref_model, tokenizer, fingerprint, heldout, reward_fn, run_dir, cache_dir, stage)
    evaluator = PointEvaluator(cfg, ref_model, tokenizer, ref_samples, reward_fn, heldout, stage)
    base = {"model": fingerprint, "heldout": heldout, "eval": dataclasses.asdict(cfg.eval), "reward": cfg.reward,
            "sampling": sample_settings(cfg.pairs), "dtype": cfg.dtype}
    sw = fm.Sweep(cfg, run_dir, evaluator, FinishedRuns(run_dir, resume=resume, log=stage), base, train_prompts, reward_fn)

    reference = evaluator.reference_point()
    points = [reference]
    rm_report = fm.reward_model(sw, heldout_pairs)
    implicit = []
    dpo_at = fm.eval_steps(fm.dpo_total_steps(cfg, pair_counts["pairs"]), cfg.dpo.points)
    for beta in cfg.dpo.betas:
        done = fm.dpo(sw, beta, dpo_at)
        points += done["points"]
        implicit += done["implicit"]
    if cfg.preferred_ft:
        points.append(fm.preferred_ft(sw))
    online = [("ppo", "model", c) for c in cfg.ppo.kl_coefs]
    if cfg.ppo.ground_truth_kl_coef > 0:
        online.append(("ppo-gt", cfg.reward, cfg.ppo.ground_truth_kl_coef))
    stopped = {}
    for method, reward, coef in online:
        done = fm.ppo(sw, method, reward, coef, cfg.ppo.points)
        points += done["points"]
        stopped[f"{method} kl_coef={coef}"] = done["stopped"]
    for coef in cfg.rloo.kl_coefs:
        done = fm.rloo(sw, coef)
        points += done["points"]
        stopped[f"rloo kl_coef={coef}"] = done["stopped"]
    implicit_study = fi.implicit_study(sw)
    bon = fm.best_of_n(sw, ref_model, tokenizer, heldout)
    points += bon["points"]
    rm_report = {**rm_report, "on_best_of_n_samples": bon["reward_model_on_samples"]}

    extra = {"reward_model": rm_report, "dpo_implicit_reward_spearman": implicit, "pairs": pair_counts,
             "online_runs_stopped": {k: v for k, v in stopped.items() if v}, "stability": stability(sw, reference, dpo_at),
             "implicit_reward_study": implicit_study,
             "elapsed_s": stage.elapsed(), "reused_runs": sw.runs.reused, "run_wall_s": sw.runs.wall_s}
    files = write_frontier(run_dir, points, title="Reward–KL frontier: sentiment control", extra=extra,
                           sections=(_reward_model_md(rm_report, implicit), fi.implicit_md(implicit_study, rm_report["spearman_with_ground_truth"]),
                                     stability_md(extra["stability"]), _cost_md(extra)))
    fi.plot_implicit(implicit_study, rm_report["spearman_with_ground_truth"], run_dir / "implicit_reward.png")
    stage(f"frontier: {', '.join(str(f) for f in files.values())}")
    return {"points": points, **extra}
