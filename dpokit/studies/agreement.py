"""Which rater does a margin follow? Pure measures for the disagreement study.

For a held-out pair (a, b) every criterion k has a standardised gap Δz_k = z_k(a) − z_k(b),
the mixture an expected-utility gap ΔU = Σ_k w_k Δz_k and a preference P_mix(a ≻ b)
(dpokit.studies.raters). A method's margin m (βh of a trained policy, or the margin a method
would reach at its optimum) "agrees" with a target when sign(m) = sign(target).

Each method's optimum, per pair, from the panel alone (exact, no training):

    majority   σ(m*) = P(more annotators vote a than b; a tie counts ½)   (hard-label DPO)
    soft       σ(m*) = P_mix(a ≻ b)                                       (vote-share labels)
    panel      m* = (1/n) Σ_a logit P_a      (= ΔU/T when every annotator has temperature T)

`targets` computes them; the agreement of their signs with each criterion shows, before any
training, which rater each objective would end up following.
"""

from __future__ import annotations

import math

from dpokit.studies.raters import Panel, sigmoid


def sign(x: float) -> int:
    return (x > 0) - (x < 0)


def logit(p: float) -> float:
    if p <= 0:
        return -math.inf
    if p >= 1:
        return math.inf
    return math.log(p / (1 - p))


def majority_prob(panel: Panel, z_a: dict[str, float], z_b: dict[str, float]) -> float:
    """P(more of the panel's independent votes go to a than to b), a tie counting ½: the
    probability that a majority-labelled record names a as chosen (ties broken by a coin).
    The count of votes for a is Poisson-binomial; its distribution is built one annotator at
    a time (dist[j] = P(j votes so far))."""
    dist = [1.0]
    for r in panel.raters:
        p = r.prob(z_a[r.criterion], z_b[r.criterion])
        dist = [(dist[j] if j < len(dist) else 0.0) * (1 - p) + (dist[j - 1] * p if j > 0 else 0.0) for j in range(len(dist) + 1)]
    n = len(panel.raters)
    return sum(q * (1.0 if 2 * j > n else 0.5 if 2 * j == n else 0.0) for j, q in enumerate(dist))


def panel_target(panel: Panel, z_a: dict[str, float], z_b: dict[str, float]) -> float | None:
    """(1/n) Σ_a logit P_a: the margin βh* the panel loss converges to. ±inf where a
    deterministic annotator (temperature 0) decides and the others agree in sign or are
    noisy; None where the panel can never be unanimous (deterministic annotators split):
    then the pair carries no loss and the objective says nothing about it."""
    logits = [logit(r.prob(z_a[r.criterion], z_b[r.criterion])) for r in panel.raters]
    if math.inf in logits and -math.inf in logits:
        return None
    return sum(logits) / len(logits)


def targets(panel: Panel, z_a: dict[str, float], z_b: dict[str, float]) -> dict:
    """A pair's ground truth and each method's optimal margin (module docstring)."""
    p_mix = panel.preference(z_a, z_b)
    return {
        "delta_z": {c: z_a[c] - z_b[c] for c in panel.criteria},
        "delta_u": panel.utility(z_a) - panel.utility(z_b),
        "p_mix": p_mix,
        "optimum": {"majority": logit(majority_prob(panel, z_a, z_b)), "soft": logit(p_mix),
                    "panel": panel_target(panel, z_a, z_b)},
    }


def wilson(k: float, n: int) -> list[float] | None:
    """95% Wilson score interval of a proportion k/n (k may be fractional: ties count ½)."""
    if n == 0:
        return None
    z, p = 1.959964, k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [centre - half, centre + half]


def agreement(margins: list[float | None], truths: list[float]) -> dict:
    """How often sign(margin) = sign(truth), over the pairs where both exist and the truth is
    not 0; a margin of exactly 0 (no preference) counts ½. Returns {share, n, ci95}."""
    n, k = 0, 0.0
    for m, t in zip(margins, truths, strict=True):
        if m is None or t is None or sign(t) == 0 or (isinstance(m, float) and math.isnan(m)):
            continue
        n += 1
        k += 0.5 if sign(m) == 0 else float(sign(m) == sign(t))
    return {"share": k / n if n else None, "n": n, "ci95": wilson(k, n)}


def agreement_table(margins: list[float | None], pair_targets: list[dict], criteria: list[str]) -> dict:
    """{target name: agreement}: each criterion, the utility U and P_mix (sign of P_mix − ½)."""
    out = {c: agreement(margins, [t["delta_z"][c] for t in pair_targets]) for c in criteria}
    out["utility"] = agreement(margins, [t["delta_u"] for t in pair_targets])
    out["p_mix"] = agreement(margins, [t["p_mix"] - 0.5 for t in pair_targets])
    return out


def followed(table: dict, criteria: list[str]) -> str | None:
    """The criterion a margin agrees with most often (None without data)."""
    scored = [(table[c]["share"], c) for c in criteria if table[c]["share"] is not None]
    return max(scored)[1] if scored else None


def calibration_gap(margins: list[float | None], pair_targets: list[dict]) -> dict:
    """Mean |σ(m) − P_mix| over the pairs with a margin: how far the policy's implied
    preference probability is from the panel's own (0 = the soft target reached)."""
    gaps = [abs(sigmoid(m) - t["p_mix"]) for m, t in zip(margins, pair_targets) if m is not None]
    return {"mean_abs": sum(gaps) / len(gaps) if gaps else None, "n": len(gaps)}
