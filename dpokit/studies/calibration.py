"""`dpokit study calibration`: are DPO's implicit preference probabilities calibrated, and does
the policy claim a confident margin between two responses that are both bad?

Under the Bradley–Terry model behind DPO, a trained policy states, for two completions a, b of
the same prompt, the probability  p = σ(β·h),  h = (log π(a) − log π_ref(a)) − (log π(b) −
log π_ref(b))  (summed log-probs), that a is preferred. Held-out calibration pairs: all
within-prompt pairs of extra reference samples (their order is random with respect to the
reward), with the outcome y = 1 if the ground truth prefers a (r(a) − r(b) ≥ min_gap), 0 if it
prefers b, and ties (|gap| < min_gap) left out and counted.

    reliability diagram   pairs binned by p into `bins` equal-width bins on [0, 1]; per bin the
                          mean p (confidence) against the share of y = 1 (frequency)
    ECE                   Σ_b (n_b / N) · |freq_b − conf_b|  (Naeini et al. 2015; Guo et al.
                          2017, eq. 5), in [0, 1]; 0 = calibrated
    confidence            max(p, 1 − p): how sure the model is of its preferred side
    overconfidence        mean confidence − accuracy (accuracy = share of pairs whose preferred
                          side is the ground truth's)
    both-bad pairs        both rewards ≤ bad_threshold (VADER's "negative" cut, −0.05, by
                          default): the ground truth still orders them, but neither is good;
                          a Bradley–Terry model has no notion of "both bad", so the question is
                          whether its confidence there is as high as elsewhere

The runs are DPO at each β in `betas` on the pairs with each flip rate in `eps` (the
beta-noise study's grid: under --resume they are its runs, reused, no training here). IPO is
not included: its h has no Bradley–Terry probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dpokit.config import SEED_RANGE, ConfigError, ranged
from dpokit.studies.common import StudyConfig, check_grid, fmt, md_table, open_study

TITLE = "Overconfident margins: calibration of σ(β·h) against the held-out ground truth"


@dataclass
class CalibrationStage:
    betas: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.5])
    eps: list[float] = field(default_factory=lambda: [0.0, 0.4])  # label-flip rates of the runs' pairs
    noise_seed: int = ranged(0, **SEED_RANGE)  # which pairs are flipped (= noise.seed of the noise studies)
    bins: int = ranged(10, ge=1)
    bad_threshold: float = ranged(-0.05, note="a response is bad when its reward ≤ this")


@dataclass
class CalibrationConfig(StudyConfig):
    study: CalibrationStage = field(default_factory=CalibrationStage)

    def validate(self, given: set[str] | None = None) -> None:
        super().validate(given)
        check_grid("study", betas=self.study.betas, eps=self.study.eps)
        if self.calibration.samples_per_prompt < 2:
            raise ConfigError("calibration.samples_per_prompt must be ≥ 2: the study measures the calibration pairs")


# -- pure parts -------------------------------------------------------------------------------------
def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def outcomes(margins, pairs: list[dict], min_gap: float) -> tuple[list[float], list[int], list[int], dict]:
    """(h, y, pair index) for the pairs with a margin and a ground-truth order (|gap| ≥ min_gap),
    and the counts left out: {"ties": …, "unscored": …}."""
    hs, ys, idx, left = [], [], [], {"ties": 0, "unscored": 0}
    for i, (h, p) in enumerate(zip(margins, pairs)):
        gap = p["a_reward"] - p["b_reward"]
        if h is None:
            left["unscored"] += 1
        elif abs(gap) < min_gap or gap == 0:
            left["ties"] += 1
        else:
            hs.append(h)
            ys.append(1 if gap > 0 else 0)
            idx.append(i)
    return hs, ys, idx, left


def pair_accuracy(margins, pairs: list[dict], min_gap: float) -> float | None:
    """Share of ordered calibration pairs whose margin sign is the ground truth's (h = 0 counts ½);
    None when there are none (no calibration pairs, or no margins)."""
    if not margins or not pairs:
        return None
    hs, ys, _, _ = outcomes(margins, pairs, min_gap)
    if not hs:
        return None
    return sum(0.5 if h == 0 else float((h > 0) == (y == 1)) for h, y in zip(hs, ys)) / len(hs)


def reliability(probs: list[float], ys: list[int], bins: int) -> tuple[list[dict], float | None]:
    """Equal-width bins on [0, 1] (p = 1 falls in the last): per non-empty bin {lo, hi, n,
    confidence (mean p), frequency (share of y = 1)}, and ECE = Σ n_b/N · |freq_b − conf_b|."""
    if len(probs) != len(ys):
        raise ValueError("probs and outcomes must have the same length")
    if not probs:
        return [], None
    groups: dict[int, list[int]] = {}
    for k, p in enumerate(probs):
        groups.setdefault(min(int(p * bins), bins - 1), []).append(k)
    out, ece = [], 0.0
    for b in sorted(groups):
        ks = groups[b]
        conf = sum(probs[k] for k in ks) / len(ks)
        freq = sum(ys[k] for k in ks) / len(ks)
        out.append({"lo": b / bins, "hi": (b + 1) / bins, "n": len(ks), "confidence": conf, "frequency": freq})
        ece += len(ks) / len(probs) * abs(freq - conf)
    return out, ece


def confidence_summary(probs: list[float], ys: list[int]) -> dict:
    """{n, accuracy, mean_confidence, overconfidence, confident_share (confidence > 0.9)}."""
    if not probs:
        return {"n": 0, "accuracy": None, "mean_confidence": None, "overconfidence": None, "confident_share": None}
    conf = [max(p, 1 - p) for p in probs]
    acc = sum(0.5 if p == 0.5 else float((p > 0.5) == (y == 1)) for p, y in zip(probs, ys)) / len(probs)
    mean_conf = sum(conf) / len(conf)
    return {"n": len(probs), "accuracy": acc, "mean_confidence": mean_conf, "overconfidence": mean_conf - acc,
            "confident_share": sum(c > 0.9 for c in conf) / len(conf)}


def calibration_of(margins, pairs: list[dict], beta: float, *, min_gap: float, bins: int, bad_threshold: float) -> dict:
    """Everything the study reports for one run's margins (module docstring)."""
    hs, ys, idx, left = outcomes(margins, pairs, min_gap)
    probs = [sigmoid(beta * h) for h in hs]
    bins_out, ece = reliability(probs, ys, bins)
    bad = [k for k, i in enumerate(idx) if max(pairs[i]["a_reward"], pairs[i]["b_reward"]) <= bad_threshold]
    rest = sorted(set(range(len(idx))) - set(bad))
    pick = lambda ks, xs: [xs[k] for k in ks]
    gap = lambda ks: (sum(abs(pairs[idx[k]]["a_reward"] - pairs[idx[k]]["b_reward"]) for k in ks) / len(ks)) if ks else None
    return {"pairs": len(hs), "left_out": left, "ece": ece, "bins": bins_out, **confidence_summary(probs, ys),
            "both_bad": {**confidence_summary(pick(bad, probs), pick(bad, ys)), "mean_abs_gap": gap(bad)},
            "others": {**confidence_summary(pick(rest, probs), pick(rest, ys)), "mean_abs_gap": gap(rest)}}


# -- the study --------------------------------------------------------------------------------------
def run(cfg: CalibrationConfig, log=print, resume: bool = False) -> dict:
    from dpokit.studies.noise import NoiseStage, noise_runs

    s = open_study(cfg, "calibration", log, resume)
    c = cfg.study
    rows = []
    for beta in c.betas:
        grid = NoiseStage(eps=list(c.eps), methods=["dpo"], seed=c.noise_seed)
        for r in noise_runs(s, grid, beta=beta, keep_margins=True):
            cal = calibration_of(r.pop("margins"), s.calibration_pairs, beta, min_gap=cfg.pairs.min_gap, bins=c.bins,
                                 bad_threshold=c.bad_threshold)
            rows.append({**r, "calibration": cal})
    bad_pairs = sum(max(p["a_reward"], p["b_reward"]) <= c.bad_threshold for p in s.calibration_pairs)
    extra = {"calibration_pairs": len(s.calibration_pairs), "both_bad_pairs": bad_pairs, "study": vars(c)}
    files = s.finish(rows, title=TITLE, plot=lambda fig: plot_calibration(fig, rows),
                     sections=[table_md(rows, len(s.calibration_pairs), bad_pairs, c), findings_md(rows)], extra=extra)
    return {"rows": rows, "files": files}


def table_md(rows: list[dict], n_pairs: int, n_bad: int, c: CalibrationStage) -> str:
    body = []
    for r in rows:
        cal, bad, oth = r["calibration"], r["calibration"]["both_bad"], r["calibration"]["others"]
        body.append([f"{r['beta']:g}", f"{r['eps']:g}", cal["pairs"], fmt(cal["accuracy"], 2), fmt(cal["mean_confidence"], 2),
                     fmt(cal["ece"], 3), fmt(cal["overconfidence"], 2),
                     f"{bad['n']}: conf {fmt(bad['mean_confidence'], 2)}, acc {fmt(bad['accuracy'], 2)}, sure {fmt(bad['confident_share'], 2)}",
                     f"conf {fmt(oth['mean_confidence'], 2)}, acc {fmt(oth['accuracy'], 2)}, sure {fmt(oth['confident_share'], 2)}"])
    return (f"## Calibration of σ(β·h) on {n_pairs} held-out pairs ({n_bad} both bad: both rewards ≤ {c.bad_threshold:g})\n\n"
            "Pairs with a ground-truth tie are left out. conf = mean max(p, 1−p); overconfidence = conf − accuracy; "
            "sure = share of pairs with confidence above 0.9.\n\n"
            + md_table(["β", "ε", "pairs", "accuracy", "confidence", "ECE", "overconf.", "both bad", "others"], body))


def findings_md(rows: list[dict]) -> str:
    lines = ["## What it shows", ""]
    for r in rows:
        cal, bad, oth = r["calibration"], r["calibration"]["both_bad"], r["calibration"]["others"]
        if cal["ece"] is None:
            continue
        side = "over" if (cal["overconfidence"] or 0) > 0 else "under"
        text = (f"- β={r['beta']:g}, ε={r['eps']:g}: ECE {cal['ece']:.3f}, {side}confident by "
                f"{abs(cal['overconfidence']):.2f}")
        if bad["n"] and oth["n"]:
            text += (f"; both-bad pairs: confidence {bad['mean_confidence']:.2f} (accuracy {bad['accuracy']:.2f}, "
                     f"mean |gap| {bad['mean_abs_gap']:.2f}) vs {oth['mean_confidence']:.2f} elsewhere "
                     f"(accuracy {oth['accuracy']:.2f}, mean |gap| {oth['mean_abs_gap']:.2f})")
        lines.append(text + ".")
    return "\n".join(lines) + "\n"


def plot_calibration(fig, rows: list[dict]) -> None:
    """Reliability diagram (one line per run) and confidence on both-bad pairs vs the rest."""
    ax_rel, ax_bad = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    fig.set_size_inches(11, 4.4)
    ax_rel.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="calibrated")
    for r in rows:
        b = r["calibration"]["bins"]
        ax_rel.plot([x["confidence"] for x in b], [x["frequency"] for x in b], marker="o", ms=3,
                    label=f"β={r['beta']:g} ε={r['eps']:g} (ECE {fmt(r['calibration']['ece'], 2)})")
    ax_rel.set(xlabel="σ(β·h): stated P(a ≻ b)", ylabel="ground truth: share a ≻ b", title="reliability", xlim=(0, 1), ylim=(0, 1))
    ax_rel.legend(fontsize=6)
    labels = [f"β={r['beta']:g}\nε={r['eps']:g}" for r in rows]
    xs = range(len(rows))
    conf = lambda part: [r["calibration"][part]["mean_confidence"] or 0.0 for r in rows]
    ax_bad.bar([x - 0.2 for x in xs], conf("both_bad"), width=0.4, label="both bad")
    ax_bad.bar([x + 0.2 for x in xs], conf("others"), width=0.4, label="others")
    ax_bad.set_xticks(list(xs), labels, fontsize=6)
    ax_bad.set(ylabel="mean confidence max(p, 1−p)", title="confidence on both-bad pairs", ylim=(0.5, 1))
    ax_bad.legend(fontsize=7)


CONFIG = CalibrationConfig
