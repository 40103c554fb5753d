"""When does DPO's implicit reward rank text by the ground truth?

Rafailov et al. 2023 (§5, "your language model is secretly a reward model"): a DPO policy
defines r̂(x, y) = β·log π(y|x)/π_ref(y|x) (up to a per-prompt constant). On the frontier's
DPO points r̂ ranks the held-out reference samples only weakly by the ground truth (Spearman ρ
0.2–0.3), and the default sentiment run gives ρ ≈ 0 while its ground-truth reward rises. This
study varies what the question names — β, the number of distinct pairs, and epochs over them —
and measures ρ along each run.

Design: a run trains on a pool of P pairs (a seeded subset of the sweep's pairs) for a fixed
number of optimizer steps at a *constant* learning rate, saving checkpoints every steps/points.
With a constant rate, the checkpoint after s steps of a run is the run that stopped at s, so
one run gives the whole curve. Runs with different pools share the step axis: at equal steps
(equal pairs seen), a pool of 270 has repeated each pair 4× where a pool of 1,080 has seen each
once — the epochs-vs-distinct-pairs contrast. At each point:

    ρ        = Spearman(Σ_t β·log π/π_ref over the completion's tokens, ground truth)
    ρ_token  = Spearman(the same sum / completion length, ground truth)

over the held-out reference samples (the frontier's own `PointEvaluator`). ρ is invariant to β's
scale, so β enters only through training. No sampling: a point costs one forward over the
held-out samples, so the study costs little more than its training steps.
"""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path

from dpokit.eval.calibration import spearman
from dpokit.tasks import sentiment as st
from dpokit.tasks.frontier_methods import drop_weights
from dpokit.tasks.frontier_runs import file_digest, key_of, settings_of


def subset_pairs(src: Path, n: int, seed: int, dst: Path) -> Path:
    """Write a seeded sample of `n` records of the JSONL file `src` (in their file order) to
    `dst`; n ≥ the record count writes them all. Blank lines are not records."""
    lines = [line for line in Path(src).read_text(encoding="utf-8").splitlines() if line.strip()]
    keep = sorted(random.Random(seed).sample(range(len(lines)), n)) if n < len(lines) else range(len(lines))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_text("".join(lines[i] + "\n" for i in keep), encoding="utf-8")
    tmp.replace(dst)
    return dst


def per_token(values: list[float], lengths: list[int]) -> list[float]:
    """values[i] / max(lengths[i], 1): a sum over a completion's tokens as a per-token mean."""
    return [v / max(n, 1) for v, n in zip(values, lengths)]


def implicit_spearman(policy_logps: list[float], ref_logps: list[float], lengths: list[int],
                      truth: list[float]) -> dict:
    """{"spearman", "spearman_per_token"} of the log-ratio (summed, and per token) with the truth."""
    ratio = [a - b for a, b in zip(policy_logps, ref_logps)]
    return {"spearman": spearman(ratio, truth), "spearman_per_token": spearman(per_token(ratio, lengths), truth)}


def implicit_study(sw) -> list[dict] | None:
    """Every (β, pool) run of `cfg.implicit`, resumable like the frontier's runs; one row per
    checkpoint: beta, pairs (pool), step, pairs_seen, epochs, spearman, spearman_per_token."""
    s = sw.cfg.implicit
    if not s.pools:
        return None
    rows = []
    for beta in s.betas:
        for pool in s.pools:
            name = f"implicit-beta{beta}-pairs{pool}"
            data = subset_pairs(sw.pairs, pool, sw.cfg.seed, sw.run_dir / name / "pairs.jsonl")
            cfg = st.train_config_of(
                sw.cfg, objective="dpo", beta=beta, data=str(data), eval_data=None, eval_fraction=0.0,
                output_dir=str(sw.run_dir / name / "train"), max_steps=s.steps, schedule="constant",
                save_every=max(1, s.steps // s.points), keep_checkpoints=0,
            )
            key = key_of(sw.base, settings_of(cfg), file_digest(data))
            done = sw.runs.run(name, key, partial(_implicit_run, cfg, beta, pool, sw.evaluator, sw.cfg.keep_weights))
            rows += done["rows"]
    return rows


def _implicit_run(cfg, beta: float, pool: int, evaluator, keep_weights: bool = True) -> dict:
    from dpokit.eval import policy_eval as pe
    from dpokit.models import load_model
    from dpokit.train.loop import train

    evaluator.stage(f"implicit reward: DPO β={beta} on {pool} pairs, {cfg.max_steps} steps at a constant lr")
    result = train(cfg, log=lambda *_: None, force=True)
    steps = result.summary["steps"]
    found = [(int(ck.name.split("-")[1]), ck / "model") for ck in sorted(Path(cfg.output_dir).glob("checkpoint-*"))]
    samples = evaluator.ref_samples
    rows = []
    for step, where in [(s, w) for s, w in found if s < steps] + [(steps, None)]:
        policy = result.model if where is None else load_model(where)[0]
        rho = implicit_spearman(pe.completion_logps(policy, evaluator.tokenizer, samples), evaluator.ref_sample_logps,
                                samples.lengths(), samples.flat_rewards())
        seen = step * cfg.batch_size * cfg.grad_accum
        rows.append({"beta": beta, "pairs": pool, "step": step, "pairs_seen": seen, "epochs": seen / pool, **rho})
        evaluator.stage(f"  β={beta} pool {pool} step {step} ({seen / pool:.2f} epochs): ρ {_fmt(rho['spearman'])}, "
                        f"per token {_fmt(rho['spearman_per_token'])}")
    if not keep_weights:
        drop_weights(cfg.output_dir)
    return {"rows": rows}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def implicit_md(rows: list[dict] | None, rm_spearman: float | None) -> str:
    """The study as a markdown section: one line per (β, pool) with ρ at each checkpoint."""
    if not rows:
        return ""
    lines = ["## When does the implicit reward rank by the ground truth?", "",
             "Spearman ρ of β·log π/π_ref (summed over the completion, and per token) with the ground truth on "
             "the held-out reference samples, along DPO runs at a constant learning rate (pairs seen = steps × batch). "
             f"The reward model's ρ on the same samples: {_fmt(rm_spearman)}.", "",
             "| β | pool (pairs) | step | pairs seen | epochs | ρ | ρ per token |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['beta']} | {r['pairs']} | {r['step']} | {r['pairs_seen']} | {r['epochs']:.2f} | {_fmt(r['spearman'])} | "
              f"{_fmt(r['spearman_per_token'])} |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_implicit(rows: list[dict] | None, rm_spearman: float | None, out_png) -> Path | None:
    """ρ vs pairs seen, one line per (β, pool); the reward model's ρ as a dashed line."""
    if not rows:
        return None
    from dpokit.report import _figure, _save

    fig, (ax,) = _figure(width=7.0, height=4.0)
    runs = sorted({(r["beta"], r["pairs"]) for r in rows})
    for beta, pool in runs:
        pts = [r for r in rows if (r["beta"], r["pairs"]) == (beta, pool) and r["spearman"] is not None]
        ax.plot([r["pairs_seen"] for r in pts], [r["spearman"] for r in pts], marker="o", label=f"β={beta}, pool {pool}")
        ax.plot([r["pairs_seen"] for r in pts], [r["spearman_per_token"] for r in pts], marker="x", ls=":", alpha=0.6,
                label=f"β={beta}, pool {pool} (per token)")
    if rm_spearman is not None:
        ax.axhline(rm_spearman, color="k", ls="--", lw=1, label="reward model")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("pairs seen (steps × batch)")
    ax.set_ylabel("Spearman ρ with the ground truth")
    ax.set_title("DPO's implicit reward on held-out reference samples")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out_png)

