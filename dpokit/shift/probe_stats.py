"""The low-rank study's numbers: each probe's share of the full fine-tune's reward gain, the
verdict "localised or spread", and the headline of the full fine-tune's shift report.

Share of gain. Every policy is evaluated on the same n held-out prompts; per prompt i, x_i is
the mean ground-truth reward of that policy's samples. With a_i = probe_i − ref_i and
b_i = full_i − ref_i (the probe's and the full fine-tune's gain on prompt i):

    share = ā / b̄

and its 95% interval is Fieller's (Fieller 1954, J. R. Stat. Soc. B 16:175, the interval of
a ratio of two correlated means), paired over prompts:

    { ρ : (ā − ρ b̄)² ≤ t² (v_aa − 2ρ v_ab + ρ² v_bb) }

with v_xy = cov(x, y)/n (sample covariance, n − 1 in its denominator) and t = t_{0.975, n−1}.
Written as A ρ² + B ρ + C ≤ 0 with A = b̄² − t² v_bb, B = −2(ā b̄ − t² v_ab),
C = ā² − t² v_aa, the set is the bounded interval [(−B − √D)/2A, (−B + √D)/2A], D = B² − 4AC,
exactly when A > 0, i.e. when the full fine-tune's gain b̄ differs from 0 by more than t
standard errors. Otherwise the interval is unbounded and the share is not reported (a share of
a gain that may be zero means nothing); so is a share of a significant loss (b̄ < 0).

Pairing matters: the reference's rewards enter both a and b, and prompts differ in how
positive their completions can be; both cancel in a paired interval and not in one built from
the three means' separate intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dpokit.eval.stats import t_quantile_975
from dpokit.shift.probe import third

DEFAULT_THRESHOLD = 0.8


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _cov(xs: Sequence[float], ys: Sequence[float]) -> float:
    mx, my = _mean(xs), _mean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (len(xs) - 1)


def share_of_gain(ref: Sequence[float], probe: Sequence[float], full: Sequence[float]) -> dict:
    """The probe's share of the full fine-tune's gain over the reference, with Fieller's 95%
    interval (module docstring). Inputs: per-prompt mean rewards, the same prompts in the
    same order. Returns {share, ci95, probe_gain, full_gain, full_gain_ci95, n, note}; share
    and ci95 are None (note says why) unless the full gain is significantly > 0."""
    n = len(ref)
    if n < 2 or len(probe) != n or len(full) != n:
        raise ValueError(f"share_of_gain needs ≥ 2 prompts and equal lengths, got {n}, {len(probe)}, {len(full)}")
    a = [p - r for p, r in zip(probe, ref)]
    b = [f - r for f, r in zip(full, ref)]
    a_bar, b_bar = _mean(a), _mean(b)
    v_aa, v_bb, v_ab = _cov(a, a) / n, _cov(b, b) / n, _cov(a, b) / n
    t = t_quantile_975(n - 1)
    out = {"share": None, "ci95": None, "probe_gain": a_bar, "full_gain": b_bar,
           "full_gain_ci95": [b_bar - t * math.sqrt(v_bb), b_bar + t * math.sqrt(v_bb)], "n": n, "note": None}
    big_a = b_bar**2 - t**2 * v_bb
    if big_a <= 0:
        out["note"] = "the full fine-tune's gain is not significantly different from 0: no share"
        return out
    if b_bar < 0:
        out["note"] = "the full fine-tune lowered the reward: no share"
        return out
    big_b = -2 * (a_bar * b_bar - t**2 * v_ab)
    big_c = a_bar**2 - t**2 * v_aa
    root = math.sqrt(max(big_b**2 - 4 * big_a * big_c, 0.0))  # ≥ 0 in exact arithmetic (ρ = ā/b̄ is inside)
    out["share"] = a_bar / b_bar
    out["ci95"] = [(-big_b - root) / (2 * big_a), (-big_b + root) / (2 * big_a)]
    return out


def per_prompt_means(rewards: Sequence[Sequence[float]]) -> list[float]:
    """Mean reward of each prompt's samples (SampleSet.rewards: one list per prompt)."""
    if any(len(row) == 0 for row in rewards):
        raise ValueError("a prompt has no scored samples")
    return [sum(row) / len(row) for row in rewards]


# -- the verdict ------------------------------------------------------------------------------
KL_SLACK = 0.1  # a probe may spend up to 10% more KL than the full fine-tune and still count as matched


def verdict_rule(threshold: float, group_r: int, min_r: int, kl_budget: float | None = None) -> str:
    pct = f"{threshold:.0%}"
    budget = ("" if kl_budget is None else
              f" A probe counts as recovering only within the full fine-tune's KL (≤ {kl_budget:.3g} nats, its KL + "
              f"{KL_SLACK:.0%}): reward bought with more KL says nothing about where the full fine-tune's change lives.")
    return (f"localised: a rank-{group_r} adapter on one group alone (attention, MLP, bottom or top third) recovers "
            f"≥ {pct} of the full fine-tune's reward gain; low-rank: not localised, but rank {min_r} on every module "
            f"recovers ≥ {pct}; spread: neither. On point estimates; firm when the deciding 95% intervals lie on the "
            f"same side of {pct}, else tentative; undetermined when the full fine-tune's gain is not significant."
            + budget)


def verdict(probes: list[dict], *, threshold: float = DEFAULT_THRESHOLD, group_r: int, min_r: int,
            full_kl: float | None = None) -> dict:
    """Apply `verdict_rule` to probes {"name", "group", "r", "share", "ci95"[, "kl"]} (share_of_gain's).

    With `full_kl` (the full fine-tune's KL), a probe reaches the threshold only if also
    kl ≤ (1 + KL_SLACK)·full_kl: the question is whether a low-rank adapter buys the same reward
    at the same distance from the reference, not whether it can buy more reward by moving further
    (a probe over the budget that stays below the threshold is still evidence of "spread").
    Returns {label: localised | low-rank | spread | undetermined, firm, deciding (probe names),
    rule, smallest_rank_reaching (all modules; None if none did), kl_budget, over_budget (names)}."""
    budget = None if full_kl is None else (1 + KL_SLACK) * max(full_kl, 0.0)
    rule = verdict_rule(threshold, group_r, min_r, budget)
    within = lambda p: budget is None or p.get("kl") is None or p["kl"] <= budget
    reaches = lambda p: p["share"] is not None and p["share"] >= threshold and within(p)
    groups = [p for p in probes if p["group"] != "all" and p["r"] == group_r]
    sweep = sorted((p for p in probes if p["group"] == "all"), key=lambda p: p["r"])
    base = next((p for p in sweep if p["r"] == min_r), None)
    out = {"label": "undetermined", "firm": False, "deciding": [], "rule": rule, "threshold": threshold,
           "kl_budget": budget, "over_budget": [p["name"] for p in probes if not within(p)],
           "smallest_rank_reaching": next((p["r"] for p in sweep if reaches(p)), None)}
    if any(p["share"] is None for p in groups + sweep):
        return out
    reached = [p for p in groups if reaches(p)]
    below = lambda p: p["ci95"][1] < threshold
    above = lambda p: p["ci95"][0] >= threshold
    if reached:
        best = max(reached, key=lambda p: p["share"])
        out.update(label="localised", deciding=[best["name"]], firm=above(best))
    elif base is not None and reaches(base):
        out.update(label="low-rank", deciding=[base["name"]] + [p["name"] for p in groups],
                   firm=above(base) and all(below(p) for p in groups))
    else:
        deciding = groups + ([base] if base is not None else [])
        out.update(label="spread", deciding=[p["name"] for p in deciding], firm=all(below(p) for p in deciding))
    return out


# -- the full fine-tune's shift report, in a few numbers ---------------------------------------
TYPE_GROUPS = {"attention": ("q", "k", "v", "qkv", "o"), "mlp": ("gate", "up", "down"), "embedding": ("embed", "head"),
               "norm": ("norm",)}
THIRDS = ("bottom_third", "middle", "top_third", "outside")


def _third_of(layer: int | None, n_layers: int) -> str:
    if layer is None:
        return "outside"
    k = third(n_layers)
    return "bottom_third" if layer < k else "top_third" if layer >= n_layers - k else "middle"


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def shift_headline(report: dict, n_layers: int) -> dict:
    """Where an `inspect_shift` report puts the change, in the groups the probes use:

        energy_by_type    share of Σ‖ΔW‖_F² in attention / mlp / embedding / norm / other maps
        energy_by_third   share of Σ‖ΔW‖_F² in the bottom third / middle / top third of the
                          layers / outside the stack (embeddings, final norm), thirds as the probes'
        effective_rank    over the changed 2-D maps inside the stack, per type group: median and
                          max effective rank, and the median of effective rank / min(shape) (1 =
                          full rank)
        top10pct_energy_share, largest_shift_layer, top1_dominant_layers   from the summary
        patching_by_third the log-ratio gap that patching moves within each third:
                          fraction(last layer of the third) − fraction(last layer before it)
        patching_top_layers  the 3 layers whose own step fraction(l) − fraction(l−1) is largest
        patching_half_layer  first layer with fraction ≥ 0.5
    (fraction(−1) = 0: layer 0's step includes what the embedding's change moves.)"""
    rows = report["weights"]
    total = sum(r["delta_norm"] ** 2 for r in rows)
    kind = {t: g for g, ts in TYPE_GROUPS.items() for t in ts}
    by_type = {g: 0.0 for g in list(TYPE_GROUPS) + ["other"]}
    by_third = {t: 0.0 for t in THIRDS}
    ranks: dict[str, list] = {}
    for r in rows:
        energy = r["delta_norm"] ** 2 / total if total > 0 else 0.0
        by_type[kind.get(r["type"], "other")] += energy
        by_third[_third_of(r["layer"], n_layers)] += energy
        if r["effective_rank"] and r["layer"] is not None:
            ranks.setdefault(kind.get(r["type"], "other"), []).append((r["effective_rank"], r["effective_rank"] / min(r["shape"])))
    s = report["summary"]
    out = {
        "energy_by_type": by_type, "energy_by_third": by_third,
        "effective_rank": {g: {"median": _median([a for a, _ in v]), "max": max(a for a, _ in v),
                               "median_of_full": _median([b for _, b in v]), "maps": len(v)} for g, v in ranks.items()},
        "top10pct_energy_share": s["top10pct_energy_share"], "largest_shift_layer": s["largest_shift_layer"],
        "top1_dominant_layers": s["top1_dominant_layers"], "patching_half_layer": s["patching_half_layer"],
        "patching_by_third": None, "patching_top_layers": None,
    }
    fractions = {p["layer"]: p["fraction"] for p in (report.get("patching") or {}).get("layers", [])}
    if fractions and all(f is not None for f in fractions.values()) and len(fractions) == n_layers:
        steps = [(l, fractions[l] - (fractions[l - 1] if l else 0.0)) for l in range(n_layers)]
        out["patching_top_layers"] = [l for l, _ in sorted(steps, key=lambda x: x[1], reverse=True)[:3]]
        out["patching_by_third"] = {t: sum(d for l, d in steps if _third_of(l, n_layers) == t) for t in THIRDS[:3]}
    return out
