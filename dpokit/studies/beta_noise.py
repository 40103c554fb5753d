"""`dpokit study beta-noise`: β as a mechanism. DPO at each β in `betas` on the pairs with each
label-flip rate in `eps` (flips as in the noise study: nested, seeded, exactly ⌊ε·n + ½⌋).

β sets how far the implicit reward β·log π/π_ref may move before the loss −log σ(β h)
saturates: at small β the policy must move further (larger h) to reach the same loss, which
is also how far it moves to fit a flipped label. The question is whether small β overfits noisy
preferences more. Measured per (β, ε): held-out ground-truth reward [95% CI], KL(π‖π_ref), win
rate against the reference, and how far the run fit its training labels: the share of flipped
pairs it learned the wrong way (h > 0 on the flipped label) and of clean pairs it learned. The
summary per β: reward drop from ε = 0 to each ε, drop(ε) = reward(ε) − reward(0).

The runs are the noise study's DPO runs wherever (β, ε, seed) coincide: the same run keys, so
`--resume` reuses them instead of training again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dpokit.config import SEED_RANGE, ranged
from dpokit.studies.common import (
    StudyConfig,
    check_grid,
    ci_text,
    fmt,
    md_table,
    open_study,
)

TITLE = "β × label noise: does a small β overfit noisy preferences more?"


@dataclass
class BetaNoiseStage:
    betas: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.5])
    eps: list[float] = field(default_factory=lambda: [0.0, 0.4])
    seed: int = ranged(0, **SEED_RANGE)  # which pairs are flipped (= noise.seed)


@dataclass
class BetaNoiseConfig(StudyConfig):
    study: BetaNoiseStage = field(default_factory=BetaNoiseStage)

    def validate(self, given: set[str] | None = None) -> None:
        super().validate(given)
        check_grid("study", betas=self.study.betas, eps=self.study.eps)


def reward_drops(rows: list[dict]) -> dict[float, dict[float, float | None]]:
    """{β: {ε: reward(β, ε) − reward(β, 0)}} for the ε ≠ 0 of each β that has an ε = 0 run."""
    at = {(r["beta"], r["eps"]): r["point"]["reward_mean"] for r in rows if r["point"]}
    return {b: {e: v - at[b, 0.0] for (bb, e), v in at.items() if bb == b and e != 0.0}
            for b in sorted({r["beta"] for r in rows}) if (b, 0.0) in at}


def run(cfg: BetaNoiseConfig, log=print, resume: bool = False) -> dict:
    from dpokit.studies.noise import NoiseStage, noise_runs, plot_vs_eps

    s = open_study(cfg, "beta-noise", log, resume)
    reference = s.reference_point()
    rows = []
    for beta in cfg.study.betas:
        rows += noise_runs(s, NoiseStage(eps=list(cfg.study.eps), methods=["dpo"], seed=cfg.study.seed), beta=beta)
    for r in rows:
        r["beta_label"] = f"β={r['beta']:g}"
    drops = reward_drops(rows)
    files = s.finish(rows, title=TITLE, plot=lambda fig: plot_vs_eps(fig, rows, reference, group_key="beta_label"),
                     sections=[table_md(rows, reference), drops_md(drops)],
                     extra={"reference": reference, "reward_drops": drops, "study": vars(cfg.study)})
    return {"rows": rows, "reward_drops": drops, "files": files}


def table_md(rows: list[dict], reference: dict) -> str:
    body = [[f"{r['beta']:g}", f"{r['eps']:g} ({r['flipped']}/{r['pairs']})", ci_text(r["point"]),
             fmt(r["point"]["kl"], 2), fmt(r["point"]["win_rate"], 2), fmt(r["flipped_fit"], 2), fmt(r["clean_fit"], 2),
             fmt(r["heldout_pair_accuracy"], 2)] for r in rows]
    return (f"## DPO by β and flip rate\n\nReference: {ci_text(reference)}. flipped fit = share of flipped training pairs "
            "learned the wrong way (h > 0); clean fit = share of clean training pairs learned; held-out acc = implicit "
            "reward's accuracy on held-out pairs.\n\n"
            + md_table(["β", "ε (flipped/pairs)", "reward [95% CI]", "KL", "win rate", "flipped fit", "clean fit", "held-out acc"],
                       body))


def drops_md(drops: dict) -> str:
    lines = ["## Reward lost to noise, by β", "", "reward(β, ε) − reward(β, 0):", ""]
    for b, by_eps in drops.items():
        lines.append(f"- β={b:g}: " + ", ".join(f"ε={e:g}: {d:+.3f}" for e, d in sorted(by_eps.items())))
    return "\n".join(lines) + "\n"


CONFIG = BetaNoiseConfig
