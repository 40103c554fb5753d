"""`dpokit study disagreement`: annotators who disagree systematically (not Bradley–Terry as
a group), mixed in known proportions.

A panel of named annotators, each judging by one criterion (sentiment, brevity, formality;
dpokit.studies.raters) with Bradley–Terry noise at temperature T, votes on every
within-prompt pair of the reference's train samples. The mixture's proportions are the
panel's shares w_k; its ground truth is the expected utility U = Σ_k w_k z_k (standardised
scores) and the preference P_mix = Σ_k w_k P_k. Methods, at the same budget (steps, batch, lr):

    majority   DPO on the majority's label (the records' chosen side)
    soft       soft-label DPO on the vote share q = votes for chosen / n
    panel      panel DPO (dpokit.losses.panel_dpo_loss) on the unanimous records: split votes
               carry no loss under it, so they are not handed to the trainer
    utility    DPO on labels from U itself: the oracle that knows the mixture's own truth

Measured on held-out pairs (the study's calibration pairs: all within-prompt pairs of extra
reference samples per held-out prompt): how often the sign of each policy's implicit margin
βh agrees with each criterion, with U and with P_mix; Spearman ρ of βh with ΔU; mean
|σ(βh) − P_mix|. Alongside, exact and without training, the margin each objective reaches
at its optimum on the same pairs (dpokit.studies.agreement.targets).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from dpokit.config import SEED_RANGE, ConfigError, ranged
from dpokit.studies import agreement as ag
from dpokit.studies.common import StudyConfig, ci_text, fmt, md_table, open_study
from dpokit.studies.panel_data import (
    fit_standardizer,
    is_unanimous,
    panel_records,
    sample_rows,
    train_samples,
    utility_records,
    zs,
)
from dpokit.studies.raters import Panel, score_texts

TITLE = "Annotator disagreement: raters with different criteria in known proportions"
METHODS = ("majority", "soft", "panel", "utility")
LOSS = {"majority": "dpo", "soft": "soft", "panel": "panel", "utility": "dpo"}
OPTIMA = ("majority", "soft", "panel")  # the objectives whose optimum the panel alone fixes


@dataclass
class PanelCounts:
    """Annotators per criterion; the mixture's proportions are their shares."""

    sentiment: int = ranged(3, ge=0)
    brevity: int = ranged(1, ge=0)
    formality: int = ranged(1, ge=0)


@dataclass
class DisagreementStage:
    panel: PanelCounts = field(default_factory=PanelCounts)
    temperature: float = ranged(0.5, gt=0, note="Bradley–Terry noise of every annotator, on standardised scores")
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seed: int = ranged(0, **SEED_RANGE)  # the votes' draws


@dataclass
class DisagreementConfig(StudyConfig):
    disagreement: DisagreementStage = field(default_factory=DisagreementStage)

    def validate(self, given: set[str] | None = None) -> None:
        super().validate(given)
        d = self.disagreement
        bad = [m for m in d.methods if m not in METHODS]
        if bad or not d.methods:
            raise ConfigError(f"disagreement.methods: {bad or 'empty'}; valid: {', '.join(METHODS)}")
        if sum(dataclasses.asdict(d.panel).values()) < 1:
            raise ConfigError("disagreement.panel: at least one annotator (sentiment, brevity, formality counts)")
        if self.calibration.samples_per_prompt < 2:
            raise ConfigError("calibration.samples_per_prompt must be ≥ 2: the held-out pairs are where the study measures")


CONFIG = DisagreementConfig


def make_panel(d: DisagreementStage) -> Panel:
    counts = {c: n for c, n in dataclasses.asdict(d.panel).items() if n > 0}
    return Panel.from_counts(counts, d.temperature)


def heldout_targets(pairs: list[dict], panel: Panel, std) -> list[dict]:
    """targets() of every held-out pair (its "chosen" is sample a, "rejected" sample b)."""
    texts = list(dict.fromkeys(t for p in pairs for t in (p["chosen"], p["rejected"])))
    row = {"texts": texts, "scores": score_texts(texts, panel.criteria)}
    z = dict(zip(texts, zs(row, std)))
    return [ag.targets(panel, z[p["chosen"]], z[p["rejected"]]) for p in pairs]


def measure(margins_h: list[float | None] | None, beta: float, pair_targets: list[dict], panel: Panel) -> dict:
    """Agreement table, the criterion followed, Spearman ρ(βh, ΔU) and the calibration gap."""
    from dpokit.eval.calibration import spearman

    m = [None if h is None else beta * h for h in (margins_h or [None] * len(pair_targets))]
    table = ag.agreement_table(m, pair_targets, panel.criteria)
    kept = [(x, t["delta_u"]) for x, t in zip(m, pair_targets) if x is not None]
    rho = spearman([x for x, _ in kept], [u for _, u in kept]) if len(kept) > 2 else None
    return {"agreement": table, "followed": ag.followed(table, panel.criteria), "spearman_utility": rho,
            "calibration_gap": ag.calibration_gap(m, pair_targets)}


def optimum_rows(pair_targets: list[dict], panel: Panel) -> list[dict]:
    """Each objective's exact optimal margin on the held-out pairs, measured like a policy."""
    return [{"method": name, **measure([t["optimum"][name] for t in pair_targets], 1.0, pair_targets, panel)}
            for name in OPTIMA]


def run(cfg: DisagreementConfig, log=print, resume: bool = False) -> dict:
    from dpokit.data.audit import rater_stats
    from dpokit.data.normalize import load_pairs

    d = cfg.disagreement
    s = open_study(cfg, "disagreement", log, resume)
    panel = make_panel(d)
    rows = sample_rows(train_samples(s, cfg), panel.criteria)
    std = fit_standardizer(rows, panel.criteria)
    records, counts = panel_records(rows, panel, std, d.seed)
    s.stage(f"panel votes: {counts['pairs']} pairs, {counts['unanimous']} unanimous, {counts['ties_broken']} ties broken by a coin")
    votes_path = s.write_pairs(f"disagree-votes-seed{d.seed}", records)
    unanimous = [r for r in records if is_unanimous(r)]
    by_utility, utility_ties = utility_records(records)
    files = {"majority": votes_path, "soft": votes_path,
             "panel": s.write_pairs(f"disagree-unanimous-seed{d.seed}", unanimous) if unanimous else None,
             "utility": s.write_pairs("disagree-utility", by_utility) if by_utility else None}
    sizes = {"majority": len(records), "soft": len(records), "panel": len(unanimous), "utility": len(by_utility)}
    pair_targets = heldout_targets(s.calibration_pairs, panel, std)
    out_rows, skipped = [], {}
    for method in d.methods:
        if files[method] is None:
            skipped[method] = "no records to train on (no unanimous vote)" if method == "panel" else "no records (all U ties)"
            continue
        result = s.train(f"disagree-{method}", files[method], loss=LOSS[method], method=method, setting=f"T={d.temperature:g}")
        out_rows.append({"method": method, "loss": LOSS[method], "train_records": sizes[method], "point": result["point"],
                         "train_steps": result["train"]["steps"],
                         **measure(result["margins"], cfg.beta, pair_targets, panel)})
    pairs, _ = load_pairs(str(votes_path))
    extra = {"panel": panel.describe(), "standardizer": std.to_json(), "data": {**counts, "utility_ties": utility_ties},
             "rater_stats": rater_stats(pairs), "optimum": optimum_rows(pair_targets, panel), "reference": s.reference_point(),
             "heldout_pairs": len(pair_targets), "skipped_methods": skipped}
    files_out = s.finish(out_rows, title=TITLE, plot=lambda fig: plot(fig, out_rows, extra["optimum"], panel.criteria),
                         sections=[setup_md(extra, cfg), optimum_md(extra["optimum"], panel.criteria),
                                   trained_md(out_rows, panel.criteria, extra), findings_md(out_rows, panel)],
                         extra=extra)
    return {"rows": out_rows, **extra, "files": files_out}


TARGET_NAMES = {"utility": "U", "p_mix": "P_mix"}


def _share(a: dict, ci: bool = True) -> str:
    if a["share"] is None:
        return "n/a"
    return f"{a['share']:.2f}" + (f" [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}]" if ci and a["ci95"] else "")


def setup_md(extra: dict, cfg) -> str:
    p, data, rs = extra["panel"], extra["data"], extra["rater_stats"]
    weights = ", ".join(f"{c} {w:.2f}" for c, w in p["weights"].items())
    lines = ["## Setup", "",
             f"- Panel: {len(p['raters'])} annotators ({', '.join(r['name'] for r in p['raters'])}), temperature "
             f"{cfg.disagreement.temperature:g} on standardised scores; proportions {weights}.",
             f"- Train pairs: {data['pairs']} within-prompt pairs ({data['identical_skipped']} with identical text skipped), "
             f"{data['unanimous']} unanimous ({data['unanimous'] / max(1, data['pairs']):.0%}), {data['ties_broken']} ties broken by a coin.",
             f"- Held-out pairs: {extra['heldout_pairs']}; β = {cfg.beta:g} for every method's margin βh."]
    if rs:
        lines.append("- Each annotator's agreement with the majority label: " + "; ".join(
            f"{n} {d['with_majority']}/{d['decided']}" for n, d in rs["by_rater"].items()) + ".")
    return "\n".join(lines) + "\n"


def optimum_md(rows: list[dict], criteria: list[str]) -> str:
    cols = criteria + ["utility", "p_mix"]
    return ("## Each objective at its optimum (exact, from the panel; no training)\n\n"
            "Share of held-out pairs on which the sign of the optimal margin agrees with each target. Majority: "
            "σ(m*) = P(majority votes a); soft: σ(m*) = P_mix; panel: m* = mean annotator log-odds (= ΔU/T here).\n\n"
            + md_table(["objective"] + [TARGET_NAMES.get(c, c) for c in cols],
                       [[r["method"]] + [_share(r["agreement"][c], ci=False) for c in cols] for r in rows]))


def trained_md(rows: list[dict], criteria: list[str], extra: dict) -> str:
    cols = criteria + ["utility", "p_mix"]
    body = [[r["method"], r["train_records"]] + [_share(r["agreement"][c]) for c in cols]
            + [fmt(r["spearman_utility"], 2), fmt(r["calibration_gap"]["mean_abs"], 3), r["followed"]] for r in rows]
    points = [[r["method"], ci_text(r["point"]), fmt((r["point"] or {}).get("kl"), 2), fmt((r["point"] or {}).get("win_rate"), 2)]
              for r in rows]
    skipped = "".join(f"\n- {m}: not trained, {why}." for m, why in extra["skipped_methods"].items())
    return ("## Trained policies (measured on held-out pairs)\n\n"
            "Agreement of sign(βh) with each target [95% Wilson CI]; ρ = Spearman of βh with ΔU; "
            "σ gap = mean |σ(βh) − P_mix|.\n\n"
            + md_table(["method", "train records"] + [TARGET_NAMES.get(c, c) for c in cols] + ["ρ(βh, ΔU)", "σ gap", "follows"], body)
            + f"\nHeld-out sentiment reward [95% CI] (reference {ci_text(extra['reference'])}), KL(π‖π_ref), win rate:\n\n"
            + md_table(["method", "sentiment reward", "KL", "win"], points) + skipped + "\n")


def findings_md(rows: list[dict], panel: Panel) -> str:
    """Names the method most consistent with U (measured), and says whether its interval
    separates it from the next; no claim beyond that."""
    lines = ["## What it shows", ""]
    scored = sorted((r for r in rows if r["agreement"]["utility"]["share"] is not None),
                    key=lambda r: -r["agreement"]["utility"]["share"])
    if not scored:
        return "\n".join(lines + ["- No trained method had held-out margins."]) + "\n"
    best = scored[0]
    line = f"- Most consistent with the mixture's utility U: {best['method']} ({_share(best['agreement']['utility'])})"
    if len(scored) > 1:
        nxt = scored[1]
        overlap = best["agreement"]["utility"]["ci95"][0] <= nxt["agreement"]["utility"]["ci95"][1]
        line += f", next {nxt['method']} ({_share(nxt['agreement']['utility'])}): " + (
            "the intervals overlap (not separated at this size)." if overlap else "separated (no CI overlap).")
    lines.append(line)
    top = max(panel.weights, key=panel.weights.get)
    for r in rows:
        a = r["agreement"]
        if r["followed"] and a[r["followed"]]["share"] is not None and a["utility"]["share"] is not None:
            lines.append(f"- {r['method']}: follows {r['followed']} most ({a[r['followed']]['share']:.2f} vs U "
                         f"{a['utility']['share']:.2f})" + (f"; {top} is the panel's largest group." if r["followed"] == top else "."))
    return "\n".join(lines) + "\n"


def plot(fig, rows: list[dict], optimum: list[dict], criteria: list[str]) -> None:
    cols = criteria + ["utility"]
    fig.set_size_inches(11, 4)
    for k, (title, data, with_ci) in enumerate((("each objective's optimum (exact)", optimum, False),
                                               ("trained policies (held-out, 95% CI)", rows, True))):
        ax = fig.add_subplot(1, 2, k + 1)
        width = 0.8 / max(1, len(data))
        for i, r in enumerate(data):
            xs = [j + (i - (len(data) - 1) / 2) * width for j in range(len(cols))]
            ys = [r["agreement"][c]["share"] or 0.0 for c in cols]
            err = None
            if with_ci:
                err = [[max(0.0, y - (r["agreement"][c]["ci95"] or [y, y])[0]) for y, c in zip(ys, cols)],
                       [max(0.0, (r["agreement"][c]["ci95"] or [y, y])[1] - y) for y, c in zip(ys, cols)]]
            ax.bar(xs, ys, width, yerr=err, label=r["method"], capsize=2)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(cols)), [TARGET_NAMES.get(c, c) for c in cols])
        ax.set_ylim(0, 1)
        ax.set_ylabel("agreement of sign(margin) with the target")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
