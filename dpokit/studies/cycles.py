"""`dpokit study cycles`: non-transitive preferences, rock-paper-scissors among three response
styles (A positive, B short, C formal) at known cycle rates ρ (dpokit.studies.cycles_data).

For each ρ the train prompts' samples become three multi-rater records per prompt (every pair
decided 2:1; on a fraction ρ of the prompts the majority cycles A≻B≻C≻A, on the others it is
A≻B≻C). `dpokit audit` must find exactly the planned cycles (checked and reported). Methods,
at the same budget:

    dpo    DPO on the majority labels (each pair as if decided)
    soft   soft-label DPO on the vote shares (2/3 on every pair)
    ipo    IPO, (h − 1/(2β))², on summed log-probs (average_logps=false) so that its margins
           are on the same scale as the others'

Panel DPO (loss=panel) is not run: no pair is unanimous, so it has no loss on this data (its
policy would stay the reference, every margin σ = ½).

Measured on held-out triples (the study's calibration samples, three per held-out prompt,
styled by the same rule): mean σ(βh) per cycle edge against the population's own preference
(2/3, 2/3, (1+ρ)/3), the implied order of the styles and the margins' confidence
(dpokit.studies.cycles_data.style_margins).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dpokit.config import SEED_RANGE, ConfigError, ranged
from dpokit.studies import cycles_data as cd
from dpokit.studies.common import StudyConfig, ci_text, fmt, md_table, open_study
from dpokit.studies.panel_data import sample_rows, train_samples
from dpokit.studies.raters import score_texts

TITLE = "Non-transitive preferences: rock-paper-scissors among three response styles"
METHODS = ("dpo", "soft", "ipo")
CHANGES = {"dpo": {"loss": "dpo"}, "soft": {"loss": "soft"}, "ipo": {"loss": "ipo", "average_logps": False}}
CRITERIA = ["sentiment", "brevity", "formality"]


@dataclass
class CyclesStage:
    rhos: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])  # share of prompts whose majority cycles
    methods: list[str] = field(default_factory=lambda: ["dpo", "soft"])
    seed: int = ranged(0, **SEED_RANGE)  # which prompts cycle


@dataclass
class CyclesConfig(StudyConfig):
    cycles: CyclesStage = field(default_factory=CyclesStage)

    def validate(self, given: set[str] | None = None) -> None:
        super().validate(given)
        c = self.cycles
        if not c.rhos or any(not 0.0 <= r <= 1.0 for r in c.rhos):
            raise ConfigError(f"cycles.rhos must be a non-empty list of rates in [0, 1], got {c.rhos}")
        bad = [m for m in c.methods if m not in METHODS]
        if bad or not c.methods:
            raise ConfigError(f"cycles.methods: {bad or 'empty'}; valid: {', '.join(METHODS)}")
        if self.calibration.samples_per_prompt != 3:
            raise ConfigError("calibration.samples_per_prompt must be 3: the held-out triples are the calibration "
                              f"samples of each held-out prompt, got {self.calibration.samples_per_prompt}")
        if self.pairs.samples_per_prompt < 3:
            raise ConfigError(f"pairs.samples_per_prompt must be ≥ 3 (three styles per prompt), got {self.pairs.samples_per_prompt}")


CONFIG = CyclesConfig


def heldout_styles(pairs: list[dict]) -> tuple[list[dict], list[dict | None], int]:
    """(triples, their style roles, prompts skipped) of the held-out calibration pairs."""
    triples, skipped = cd.heldout_triples(pairs)
    roles = [cd.assign_styles(t["texts"], score_texts(t["texts"], CRITERIA)) for t in triples]
    return triples, roles, skipped


def audit_counts(path) -> dict:
    from dpokit.data.audit import audit_pairs
    from dpokit.data.normalize import load_pairs

    pairs, report = load_pairs(str(path))
    a = audit_pairs(pairs, skip_report=report.to_dict())
    votes = a["summary"]["votes"].get("raters") or {}
    return {"cycles": a["cycles"]["count"], "prompts_with_cycles": a["summary"]["prompts_with_cycles"],
            "contradictions": a["contradictions"]["count"], "unanimous": votes.get("unanimous", 0),
            "records": a["summary"]["records"], "skipped": a["summary"]["skipped"]}


def run(cfg: CyclesConfig, log=print, resume: bool = False) -> dict:
    c = cfg.cycles
    s = open_study(cfg, "cycles", log, resume)
    rows_in = sample_rows(train_samples(s, cfg), CRITERIA)
    triples, roles, held_skipped = heldout_styles(s.calibration_pairs)
    reference = cd.style_margins(triples, roles, [0.0] * len(s.calibration_pairs), cfg.beta)
    rows, data = [], {}
    for rho in c.rhos:
        records, info = cd.build_cycle_data(rows_in, rho, c.seed)
        if not records:
            raise ConfigError(f"no prompt with three distinct samples among {len(rows_in)} train prompts: raise prompts.n_train")
        path = s.write_pairs(f"cycles-rho{rho:g}-seed{c.seed}", records)
        audit = audit_counts(path)
        data[f"{rho:g}"] = {**info, "audit": audit, "audit_matches": audit["prompts_with_cycles"] == info["planned_cycles"]}
        s.stage(f"ρ={rho:g}: {info['records']} records from {info['prompts']} prompts, {info['planned_cycles']} cyclic; "
                f"the audit finds {audit['cycles']} cycle groups")
        for method in c.methods:
            result = s.train(f"cycles-{method}-rho{rho:g}", path, method=method, setting=f"ρ={rho:g}", **CHANGES[method])
            rows.append({"rho": rho, "method": method, "records": info["records"], "point": result["point"],
                         "train_steps": result["train"]["steps"], "population": cd.population_preference(rho),
                         "styles": cd.style_margins(triples, roles, result["margins"] or [None] * len(s.calibration_pairs), cfg.beta)})
    extra = {"data": data, "heldout": {"triples": len(triples), "skipped": held_skipped,
                                       "unstyled": sum(r is None for r in roles)},
             "reference_styles": reference, "reference": s.reference_point(), "beta": cfg.beta}
    files = s.finish(rows, title=TITLE, plot=lambda fig: plot(fig, rows, c.methods),
                     sections=[data_md(data, extra), styles_md(rows), findings_md(rows)], extra=extra)
    return {"rows": rows, **extra, "files": files}


def data_md(data: dict, extra: dict) -> str:
    body = [[rho, d["prompts"], d["records"], d["planned_cycles"], d["audit"]["cycles"], d["audit"]["prompts_with_cycles"],
             d["audit"]["contradictions"], d["audit"]["unanimous"], "yes" if d["audit_matches"] else "NO"] for rho, d in data.items()]
    h = extra["heldout"]
    return ("## Data and what the audit finds\n\n"
            + md_table(["ρ", "prompts", "records", "planned cycles", "audit: cycle groups", "prompts with cycles",
                        "contradictions", "unanimous records", "audit = plan"], body)
            + f"\nHeld-out triples: {h['triples']} ({h['skipped']} prompts without three distinct samples skipped). "
              "No record is unanimous, so panel DPO has no loss here and is not run.\n")


def styles_md(rows: list[dict]) -> str:
    body = []
    for r in rows:
        st, pop = r["styles"], r["population"]
        if not st["triples"]:
            body.append([f"{r['rho']:g}", r["method"]] + ["n/a"] * 6)
            continue
        edges = [f"{st['edges'][e]['sigma_mean']:.3f} ({pop[e]:.2f})" for e in ("A>B", "B>C", "C>A")]
        body.append([f"{r['rho']:g}", r["method"], *edges, " ≻ ".join(st["order"]), fmt(st["confidence"], 3),
                     fmt(st["cycle_residual"], 4)])
    points = [[f"{r['rho']:g}", r["method"], ci_text(r["point"]), fmt((r["point"] or {}).get("kl"), 2)] for r in rows]
    return ("## What each method learns (held-out triples)\n\n"
            "Mean σ(βh) on each cycle edge (in brackets: the population's share of annotators preferring the first "
            "style); the styles ordered by mean implicit reward; confidence = mean |σ(βh) − ½|; the cycle residual "
            "mean |h_AB + h_BC + h_CA| is 0 for any reward (a check).\n\n"
            + md_table(["ρ", "method", "σ A≻B", "σ B≻C", "σ C≻A", "order", "confidence", "cycle residual"], body)
            + "\nHeld-out sentiment reward [95% CI] and KL(π‖π_ref):\n\n" + md_table(["ρ", "method", "reward", "KL"], points))


def findings_md(rows: list[dict]) -> str:
    lines = ["## What it shows", "",
             "- A reward cannot cycle: h_AB + h_BC + h_CA = 0 on every prompt, so at most two of the three edges can "
             "get σ(βh) > ½; under a pure cycle every DPO-family method's best is σ = ½ on all three, below the "
             "annotators' own 2/3."]
    for r in rows:
        st = r["styles"]
        if not st["triples"]:
            continue
        ca = st["edges"]["C>A"]["sigma_mean"]
        lines.append(f"- ρ={r['rho']:g}, {r['method']}: order {' ≻ '.join(st['order'])}; σ on C≻A {ca:.3f} vs the "
                     f"population's {r['population']['C>A']:.2f}; confidence {st['confidence']:.3f}.")
    return "\n".join(lines) + "\n"


def plot(fig, rows: list[dict], methods: list[str]) -> None:
    fig.set_size_inches(11, 4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    rhos = sorted({r["rho"] for r in rows})
    for e, style in zip(("A>B", "B>C", "C>A"), ("-", "--", ":")):
        ax1.plot(rhos, [cd.population_preference(x)[e] for x in rhos], color="grey", ls=style, lw=1)
        for m in methods:
            pts = [(r["rho"], r["styles"]["edges"][e]["sigma_mean"]) for r in rows if r["method"] == m and r["styles"]["triples"]]
            if pts:
                ax1.plot(*zip(*pts), marker="o", ls=style, label=f"{m} {e}")
    ax1.axhline(0.5, color="black", lw=0.6)
    ax1.set_xlabel("cycle rate ρ")
    ax1.set_ylabel("mean σ(βh) on held-out edges (grey: annotators)")
    ax1.legend(fontsize=7, ncol=2)
    for role, marker in zip(cd.ROLES, ("o", "s", "^")):
        for m in methods:
            pts = [(r["rho"], r["styles"]["reward"][role]) for r in rows if r["method"] == m and r["styles"]["triples"]]
            if pts:
                ax2.plot(*zip(*pts), marker=marker, label=f"{m} {role}")
    ax2.axhline(0.0, color="black", lw=0.6)
    ax2.set_xlabel("cycle rate ρ")
    ax2.set_ylabel("mean centred implicit reward β(r − r̄)")
    ax2.legend(fontsize=7, ncol=2)
