"""`dpokit study noise`: DPO and its noise-aware relatives on pairs with flipped labels.

A fraction ε of the sentiment pairs has its label flipped (chosen ↔ rejected): exactly
k = ⌊ε·n + ½⌋ of the n pairs, the first k of one seeded permutation, so the flipped sets are
nested (ε = 0.2 flips the pairs of ε = 0.1 and more) and levels differ only by the added noise.
Each method trains on the same noisy file at the same budget (steps, batch, lr) and is evaluated
on held-out prompts against the ground truth (VADER), never against the noisy labels:

    dpo          −log σ(βh)                                    (ignores the noise)
    cdpo         −(1−ε̂) log σ(βh) − ε̂ log σ(−βh),  ε̂ = ε       (told the true flip rate)
    soft         −q log σ(βh) − (1−q) log σ(−βh),  q = 1 − ε̂   soft labels with the true rate:
                 with one q for every pair this IS cdpo with ε̂ = 1 − q (same loss, pair by pair;
                 tested), so it shares cdpo's run
    robust       [−(1−ε̂) log σ(βh) + ε̂ log σ(−βh)] / (1−2ε̂),  ε̂ = ε   (unbiased under flips)
    ipo          (h − 1/(2β))²                                 (bounded target margin)
    soft-guess   soft labels from a wrong guess ε̂ = guess_scale·ε (default half the true rate),
                 trained through the soft loss with the votes written into the pair file

where h = (πc − rc) − (πr − rr). Where ε̂ = 0 a method is plain DPO and is that run (the ε = 0
row of cdpo, robust, soft, soft-guess is the dpo run; the run keys are equal). Measured per
(ε, method): held-out ground-truth reward mean [95% CI], KL(π‖π_ref), win rate against the
reference, and the implicit reward's accuracy on held-out calibration pairs (sign of h against
the ground truth), and how far it fit its own training labels, on a probe of `probe_pairs`
training pairs (the first and last of the flip permutation: flipped first and never): the share
of flipped pairs whose margin h > 0 sides with the wrong label (memorised noise) and of clean
pairs with h > 0.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from dpokit.config import SEED_RANGE, ConfigError, ranged
from dpokit.studies.common import (
    StudyConfig,
    check_grid,
    ci_errors,
    ci_text,
    fmt,
    md_table,
    open_study,
)

TITLE = "Label noise: DPO and noise-aware losses on flipped preference labels"
METHODS = ("dpo", "cdpo", "soft", "robust", "ipo", "soft-guess")
VOTE_SCALE = 1000  # votes [for chosen, for rejected] out of 1000: q = 1 − ε̂ exactly for ε̂ with ≤ 3 decimals


@dataclass
class NoiseStage:
    eps: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4])  # true flip rates
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    guess_scale: float = ranged(0.5, ge=0, note="soft-guess assumes ε̂ = guess_scale·ε")
    seed: int = ranged(0, **SEED_RANGE)  # which pairs are flipped
    probe_pairs: int = ranged(64, ge=2, note="training pairs each run is scored on (label_fit)")


@dataclass
class NoiseConfig(StudyConfig):
    noise: NoiseStage = field(default_factory=NoiseStage)

    def validate(self, given: set[str] | None = None) -> None:
        super().validate(given)
        check_noise_stage(self.noise, "noise")


def check_noise_stage(n: NoiseStage, section: str) -> None:
    check_grid(section, eps=n.eps)
    bad = [m for m in n.methods if m not in METHODS]
    if bad or not n.methods:
        raise ConfigError(f"{section}.methods: {bad or 'empty'}; valid: {', '.join(METHODS)}")
    if "soft-guess" in n.methods and any(n.guess_scale * e >= 0.5 for e in n.eps):
        raise ConfigError(f"{section}.guess_scale={n.guess_scale} makes a guessed flip rate ≥ 0.5 for eps {n.eps}")


# -- pure parts -------------------------------------------------------------------------------------
def flip_count(eps: float, n: int) -> int:
    """k = ⌊ε·n + ½⌋ (half rounds up, unlike Python's round)."""
    return math.floor(eps * n + 0.5)


def flip_labels(records: list[dict], eps: float, seed: int) -> tuple[list[dict], list[int]]:
    """(records with exactly flip_count(eps, n) labels flipped, the flipped indices, sorted).
    A flip swaps chosen/rejected and everything attached to them (rewards, finished flags)
    and marks the record "flipped": true; the others are unchanged. The flipped set is the
    first k of a permutation seeded by `seed` alone, so it is nested across eps."""
    n = len(records)
    order = random.Random(seed).sample(range(n), n)
    flipped = sorted(order[: flip_count(eps, n)])
    out = [dict(r) for r in records]
    for i in flipped:
        r = out[i]
        for a, b in (("chosen", "rejected"), ("chosen_reward", "rejected_reward"), ("chosen_finished", "rejected_finished")):
            if a in r or b in r:
                r[a], r[b] = r.get(b), r.get(a)
        r["flipped"] = True
    return out, flipped


def with_votes(records: list[dict], q: float) -> list[dict]:
    """Each record with votes [round(q·1000), 1000 − that]: soft label q = P(chosen ≻ rejected)."""
    for_chosen = round(q * VOTE_SCALE)
    return [{**r, "votes": [for_chosen, VOTE_SCALE - for_chosen]} for r in records]


def assumed_eps(method: str, eps: float, guess_scale: float) -> float | None:
    """The flip rate a method is told (None: it takes none)."""
    if method in ("cdpo", "soft", "robust"):
        return eps
    if method == "soft-guess":
        return round(guess_scale * eps, 6)
    return None


def run_plan(method: str, eps: float, guess_scale: float) -> tuple[str, dict, float | None]:
    """(run label, TrainConfig changes, soft label q or None) of `method` at true flip rate eps.
    Methods whose assumed flip rate is 0 are plain DPO; soft with the true rate is cdpo."""
    e = assumed_eps(method, eps, guess_scale)
    if method == "dpo" or e == 0:
        return "dpo", {"loss": "dpo"}, None
    if method == "ipo":
        return "ipo", {"loss": "ipo"}, None
    if method in ("cdpo", "soft"):
        return f"cdpo-ls{e:g}", {"loss": "cdpo", "label_smoothing": e}, None
    if method == "robust":
        return f"robust-ls{e:g}", {"loss": "robust", "label_smoothing": e}, None
    return f"soft-q{1 - e:g}", {"loss": "soft"}, 1 - e


# -- the study --------------------------------------------------------------------------------------
def probe_indices(n: int, seed: int, size: int) -> list[int]:
    """The training pairs a run is scored on (sorted): the first and the last m = min(size//2,
    n//2) of the flip permutation, i.e. the pairs flipped first (at any ε with k ≥ m) and those
    flipped last (at none with k ≤ n − m). The same pair identities at every ε, at a fraction
    of the cost of scoring every training pair."""
    order = random.Random(seed).sample(range(n), n)
    m = min(size // 2, n // 2)
    return sorted(order[:m] + order[n - m:])


def label_fit(margins: list[float | None], flipped: list[bool]) -> dict:
    """How far a run learned the labels it was given: share of scored pairs with h > 0 (the
    given label's side), separately for flipped pairs (memorised noise) and clean pairs."""
    share = lambda xs: (sum(h > 0 for h in xs) / len(xs)) if xs else None
    scored = [(f, h) for f, h in zip(flipped, margins or []) if h is not None]
    return {"flipped_fit": share([h for f, h in scored if f]), "clean_fit": share([h for f, h in scored if not f])}


def noise_runs(s, n: NoiseStage, beta: float | None = None, keep_margins: bool = False) -> list[dict]:
    """Train every (ε, method) of `n` on the study's pairs; one row per (ε, method). `beta`:
    the runs' β (default: the config's). Each run is also scored on `probe_pairs` of its own
    training pairs (label_fit). Used by the beta-noise and calibration studies, whose runs
    coincide with these wherever the settings do."""
    from dpokit.studies.calibration import pair_accuracy

    beta = s.cfg.beta if beta is None else beta
    rows = []
    for eps in n.eps:
        noisy, flipped = flip_labels(s.records, eps, n.seed)
        data = s.pairs_path if not flipped else s.write_pairs(f"flip-eps{eps:g}-seed{n.seed}", noisy)
        probe = probe_indices(len(noisy), n.seed, n.probe_pairs)
        probe_path = s.write_pairs(f"probe-eps{eps:g}-seed{n.seed}", [noisy[i] for i in probe])
        probe_flipped = [i in set(flipped) for i in probe]
        for method in n.methods:
            label, changes, q = run_plan(method, eps, n.guess_scale)
            path = data if q is None else s.write_pairs(f"flip-eps{eps:g}-seed{n.seed}-q{q:g}", with_votes(noisy, q))
            run = s.train(f"{label}-eps{eps:g}-b{beta:g}", path, beta=beta, method=changes["loss"], setting=f"ε={eps:g}",
                          score={"probe": probe_path}, **changes)
            row = {"eps": eps, "method": method, "assumed_eps": assumed_eps(method, eps, n.guess_scale), "beta": beta,
                   "loss": changes["loss"], "flipped": len(flipped), "pairs": len(noisy),
                   "heldout_pair_accuracy": pair_accuracy(run["margins"], s.calibration_pairs, s.cfg.pairs.min_gap),
                   **label_fit(run["scores"]["probe"], probe_flipped), "point": run["point"],
                   "train_steps": run["train"]["steps"], "run": run["run"]}
            if keep_margins:
                row["margins"] = run["margins"]
            rows.append(row)
    return rows


def run(cfg: NoiseConfig, log=print, resume: bool = False) -> dict:
    s = open_study(cfg, "noise", log, resume)
    reference = s.reference_point()
    rows = noise_runs(s, cfg.noise)
    files = s.finish(rows, title=TITLE, plot=lambda fig: plot_vs_eps(fig, rows, reference),
                     sections=[table_md(rows, cfg.noise.methods, reference), findings_md(rows)],
                     extra={"reference": reference, "noise": vars(cfg.noise)})
    return {"rows": rows, "reference": reference, "files": files}


def table_md(rows: list[dict], methods: list[str], reference: dict) -> str:
    eps = sorted({r["eps"] for r in rows})
    at = {(r["eps"], r["method"]): r for r in rows}
    cell = lambda r: "" if r is None else f"{ci_text(r['point'])}; win {fmt(r['point']['win_rate'], 2)}; KL {fmt(r['point']['kl'], 2)}"
    body = [[f"{e:g} ({at[e, methods[0]]['flipped']}/{at[e, methods[0]]['pairs']})"] + [cell(at.get((e, m))) for m in methods]
            for e in eps]
    return ("## Held-out ground-truth reward [95% CI], win rate against the reference, KL(π‖π_ref)\n\n"
            f"Reference: {ci_text(reference)}. Rows: true flip rate ε (flipped pairs / pairs).\n\n"
            + md_table(["ε"] + methods, body)
            + "\nImplicit-reward accuracy on held-out pairs (sign of h vs the ground truth):\n\n"
            + md_table(["ε"] + methods, [[f"{e:g}"] + [fmt((at.get((e, m)) or {}).get("heldout_pair_accuracy"), 2)
                                                       for m in methods] for e in eps])
            + "\nFit to the training labels (on the probe pairs): share of flipped pairs learned the wrong way "
              "(h > 0) / of clean pairs learned (h > 0):\n\n"
            + md_table(["ε"] + methods, [[f"{e:g}"] + [_fit(at.get((e, m)) or {}) for m in methods] for e in eps]))


def _fit(r: dict) -> str:
    return f"{fmt(r.get('flipped_fit'), 2)} / {fmt(r.get('clean_fit'), 2)}" if r else ""


def findings_md(rows: list[dict]) -> str:
    """Per ε: the best method by reward and whether its CI overlaps DPO's (no claim beyond that)."""
    lines = ["## What it shows", ""]
    for eps in sorted({r["eps"] for r in rows}):
        mine = [r for r in rows if r["eps"] == eps and r["point"]]
        if not mine:
            continue
        best = max(mine, key=lambda r: r["point"]["reward_mean"])
        dpo = next((r for r in mine if r["method"] == "dpo"), None)
        if dpo is None or best is dpo or best["run"] == dpo["run"]:
            lines.append(f"- ε={eps:g}: DPO is (one of) the best, reward {ci_text(dpo['point'] if dpo else best['point'])}.")
            continue
        overlap = best["point"]["reward_ci95"][0] <= dpo["point"]["reward_ci95"][1]
        lines.append(f"- ε={eps:g}: best {best['method']} {ci_text(best['point'])} vs DPO {ci_text(dpo['point'])}: "
                     + ("the intervals overlap (not separated at this size)." if overlap else "separated (no CI overlap)."))
    return "\n".join(lines) + "\n"


def plot_vs_eps(fig, rows: list[dict], reference: dict, x_key: str = "eps", group_key: str = "method",
                xlabel: str = "true flip rate ε") -> None:
    """Two panels: held-out reward (95% CI) and win rate against `x_key`, one line per group."""
    ax_r, ax_w = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    fig.set_size_inches(11, 4.2)
    for g in dict.fromkeys(r[group_key] for r in rows):
        mine = sorted((r for r in rows if r[group_key] == g and r["point"]), key=lambda r: r[x_key])
        xs = [r[x_key] for r in mine]
        ys = [r["point"]["reward_mean"] for r in mine]
        ax_r.errorbar(xs, ys, yerr=ci_errors([r["point"] for r in mine]), marker="o", ms=4, capsize=2, label=str(g))
        ax_w.plot(xs, [r["point"]["win_rate"] for r in mine], marker="o", ms=4, label=str(g))
    ax_r.axhline(reference["reward_mean"], color="gray", ls="--", lw=1, label="reference")
    ax_w.axhline(0.5, color="gray", ls="--", lw=1)
    ax_r.set(xlabel=xlabel, ylabel="held-out ground-truth reward", title="reward (95% CI)")
    ax_w.set(xlabel=xlabel, ylabel="win rate vs reference", title="win rate")
    ax_r.legend(fontsize=7)


CONFIG = NoiseConfig
