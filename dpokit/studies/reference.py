"""`dpokit study reference`: the same pairs, DPO from references of different quality.

    base       the starting model itself (π_ref = π_base)
    sft        Preferred-FT: SFT on the pairs' chosen completions (the DPO paper's recipe)
    skewed     a deliberately bad reference: SFT on the pairs' rejected completions

For sft and skewed the policy starts from its reference (as in the DPO paper), then trains DPO
on the unchanged pairs at the same budget. Each reference is measured itself, and each DPO
policy twice over:

    reward     held-out ground-truth reward mean [95% CI]
    KL to base KL(π‖π_base), from policy samples: the common yardstick (how far from the
               starting model, whatever the reference)
    KL to own  KL(π‖π_ref) to the run's own reference: what DPO's constraint actually bounds
    win rate   against the base model's samples on the same prompts (the common yardstick)
    gain       reward(DPO policy) − reward(its reference): what DPO added on top

The base row's DPO run is the noise study's ε = 0 DPO run (same key: reused under --resume).
The study's own runs skip the calibration margins (margins=False): nothing here reads them, and
they would cost a policy and a reference pass over the calibration pairs per run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dpokit.config import ConfigError
from dpokit.studies.common import (
    StudyConfig,
    ci_errors,
    ci_text,
    fmt,
    md_table,
    open_study,
)

TITLE = "Reference quality: DPO from the base model, from Preferred-FT and from a skewed reference"
REFERENCES = ("base", "sft", "skewed")


@dataclass
class ReferenceStage:
    references: list[str] = field(default_factory=lambda: list(REFERENCES))


@dataclass
class ReferenceConfig(StudyConfig):
    study: ReferenceStage = field(default_factory=ReferenceStage)

    def validate(self, given: set[str] | None = None) -> None:
        super().validate(given)
        bad = [r for r in self.study.references if r not in REFERENCES]
        if bad or not self.study.references:
            raise ConfigError(f"study.references: {bad or 'empty'}; valid: {', '.join(REFERENCES)}")


def swap_sides(records: list[dict]) -> list[dict]:
    """Every pair with chosen and rejected exchanged (with their rewards and finished flags):
    SFT on the result's "chosen" trains on the original rejected completions."""
    from dpokit.studies.noise import flip_labels

    return flip_labels(records, 1.0, seed=0)[0]


def run(cfg: ReferenceConfig, log=print, resume: bool = False) -> dict:
    from dpokit.studies.noise import NoiseStage, noise_runs

    s = open_study(cfg, "reference", log, resume)
    base_point = s.reference_point()
    rows = []
    for name in cfg.study.references:
        ref_point, model = base_point, None
        if name != "base":
            data = s.pairs_path if name == "sft" else s.write_pairs("pairs-swapped", swap_sides(s.records))
            ref_run = s.train(f"ref-{name}", data, objective="sft", method="sft", margins=False,
                              setting="on chosen" if name == "sft" else "on rejected")
            ref_point, model = ref_run["point"], ref_run["final_dir"]
        if model is None:  # the noise study's ε = 0 DPO run (same settings, same key: one run for both)
            dpo = noise_runs(s, NoiseStage(eps=[0.0], methods=["dpo"], seed=0))[0]
        else:
            dpo = s.train(f"dpo-from-{name}-b{cfg.beta:g}", s.pairs_path, method="dpo", setting=f"ref={name}", loss="dpo",
                          model=model, margins=False)
        p = dpo["point"]
        rows.append({"reference": name, "reference_point": ref_point, "point": p,
                     "kl_to_base": p["kl"], "kl_to_own_reference": p["kl"] if model is None else dpo["kl_own_ref"],
                     "gain_over_reference": p["reward_mean"] - ref_point["reward_mean"], "run": dpo["run"]})
    files = s.finish(rows, title=TITLE, plot=lambda fig: plot_references(fig, rows),
                     sections=[table_md(rows), findings_md(rows)], extra={"base": base_point})
    return {"rows": rows, "files": files}


def table_md(rows: list[dict]) -> str:
    body = [[r["reference"], ci_text(r["reference_point"]), fmt(r["reference_point"]["kl"], 2), ci_text(r["point"]),
             fmt(r["kl_to_base"], 2), fmt(r["kl_to_own_reference"], 2), fmt(r["point"]["win_rate"], 2),
             f"{r['gain_over_reference']:+.3f}"] for r in rows]
    return ("## DPO by reference\n\nReference columns: the reference itself (its KL is to the base model). DPO columns: the "
            "policy after DPO on the same pairs; win rate against the base model's samples.\n\n"
            + md_table(["reference", "reference reward", "reference KL to base", "DPO reward", "DPO KL to base",
                        "DPO KL to own ref", "DPO win rate", "gain over own ref"], body))


def findings_md(rows: list[dict]) -> str:
    lines = ["## What it shows", ""]
    for r in rows:
        lines.append(f"- {r['reference']}: reference {ci_text(r['reference_point'])} → DPO {ci_text(r['point'])} "
                     f"({r['gain_over_reference']:+.3f}); KL to base {fmt(r['kl_to_base'], 2)}, to its own reference "
                     f"{fmt(r['kl_to_own_reference'], 2)}.")
    return "\n".join(lines) + "\n"


def plot_references(fig, rows: list[dict]) -> None:
    """Reward of each reference and of DPO from it (95% CI); KL of the DPO policy to base / own ref."""
    ax_r, ax_k = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    fig.set_size_inches(10, 4.2)
    xs = list(range(len(rows)))
    for shift, key, label in ((-0.15, "reference_point", "reference"), (0.15, "point", "after DPO")):
        ys = [r[key]["reward_mean"] for r in rows]
        ax_r.errorbar([x + shift for x in xs], ys, yerr=ci_errors([r[key] for r in rows]), fmt="o", capsize=3, label=label)
    ax_r.set_xticks(xs, [r["reference"] for r in rows])
    ax_r.set(ylabel="held-out ground-truth reward", title="reward (95% CI)")
    ax_r.legend(fontsize=7)
    ax_k.bar([x - 0.2 for x in xs], [r["kl_to_base"] for r in rows], width=0.4, label="KL to base")
    ax_k.bar([x + 0.2 for x in xs], [r["kl_to_own_reference"] or 0.0 for r in rows], width=0.4, label="KL to own reference")
    ax_k.set_xticks(xs, [r["reference"] for r in rows])
    ax_k.set(ylabel="KL (nats per completion)", title="DPO policy: KL")
    ax_k.legend(fontsize=7)


CONFIG = ReferenceConfig
