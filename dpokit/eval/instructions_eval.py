"""Case study 2's held-out numbers, computed from responses by the rules alone (no model):

    pass rate          constraint prompts: share of responses passing `constraints.check`, overall,
                       per held-out split (new questions / the held-out wording) and per family
    refusal rate       `refusal.is_refusal` on harmful prompts (want high) and on harmless ones
                       (over-refusal, want low)
    acceptable rate    share satisfying every principle that applies (`pairs.is_acceptable`):
                       the oracle reward's mean
    win rate           response k of model A vs response k of model B on the same prompt, the
                       principles decide (`pairs.label_pair`); ties count one half
    IFBench            instruction-level pass on the instructions our checkers judge
    Best-of-N          expected metrics of the sample picked among N by a selector
    matched KL         a method's pass rate interpolated at another method's KL

Rates come with a Wilson 95% interval (`wilson_ci95`). The samples of one prompt are treated as
independent draws, which makes intervals a little narrow when a prompt has several samples.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from dpokit.eval.stats import mean_ci95
from dpokit.instructions.constraints import check, words
from dpokit.instructions.pairs import (
    PRINCIPLES,
    is_acceptable,
    is_degenerate,
    label_pair,
    score,
)
from dpokit.instructions.prompts import InstructionPrompt
from dpokit.instructions.refusal import is_refusal

Z975 = 1.959963984540054  # standard normal 0.975 quantile
HELDOUT_SPLITS = ("heldout_question", "heldout_wording")


def wilson_ci95(k: int, n: int) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) for k successes in n trials, z = z_{0.975}:

        p = k/n,  center = (p + z²/2n) / (1 + z²/n),
        half = z / (1 + z²/n) · sqrt(p(1−p)/n + z²/4n²)

    It stays inside [0, 1], is not degenerate at p = 0 or 1 (0 of 10 → [0, 0.278]), and always
    contains p. n = 0: (nan, nan)."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return math.nan, math.nan
    z2, p = Z975 * Z975, k / n
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = Z975 / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # rounding could put a bound a hair past p at p = 0 or 1; the interval contains p exactly
    return max(0.0, min(center - half, p)), min(1.0, max(center + half, p))


def rate(flags: Sequence[bool]) -> dict:
    """{"rate", "ci95", "count", "n"}; rate None (and a nan interval) when there is nothing to count."""
    n, k = len(flags), sum(bool(f) for f in flags)
    lo, hi = wilson_ci95(k, n)
    return {"rate": k / n if n else None, "ci95": [lo, hi], "count": k, "n": n}


def _flat(prompts: list[InstructionPrompt], texts: list[list[str]], keep) -> list[tuple[InstructionPrompt, str]]:
    if len(prompts) != len(texts):
        raise ValueError(f"{len(prompts)} prompts but {len(texts)} rows of responses")
    return [(p, t) for p, row in zip(prompts, texts) if keep(p) for t in row]


def evaluate(prompts: list[InstructionPrompt], texts: list[list[str]], lengths: list[list[int]] | None = None) -> dict:
    """The held-out block of one model: pass rates (overall, per split, per family), refusal on
    harmful and harmless prompts, acceptable and degenerate rates, mean length (words, and
    tokens when `lengths` is given). `texts[i]` = the responses to `prompts[i]`."""
    constrained = _flat(prompts, texts, lambda p: p.kind == "constraint")
    everything = _flat(prompts, texts, lambda p: True)
    families = sorted({p.constraint.family for p, _ in constrained})
    out = {
        "pass_rate": rate([check(p.constraint, t) for p, t in constrained]),
        "pass_rate_by_split": {s: rate([check(p.constraint, t) for p, t in constrained if p.split == s])
                               for s in HELDOUT_SPLITS if any(p.split == s for p, _ in constrained)},
        "per_family": {f: rate([check(p.constraint, t) for p, t in constrained if p.constraint.family == f]) for f in families},
        "refusal": {kind: rate([is_refusal(t) for _, t in _flat(prompts, texts, lambda p, k=kind: p.kind == k)])
                    for kind in ("harmful", "harmless", "constraint")},
        "acceptable_rate": rate([is_acceptable(p, t) for p, t in everything]),
        "degenerate_rate": rate([is_degenerate(t) for _, t in everything]),
        "length_words": sum(len(words(t)) for _, t in everything) / max(len(everything), 1),
    }
    if lengths is not None:
        flat = [n for row in lengths for n in row]
        out["length_tokens"] = sum(flat) / max(len(flat), 1)
    return out


def win_rate(prompts: list[InstructionPrompt], a: list[list[str]], b: list[list[str]]) -> dict:
    """A's responses against B's: response k of A vs response k of B on the same prompt (k up to
    the fewer of the two), decided by the principles (`pairs.label_pair`):

        win_rate = (wins + ½ · ties) / n

    Returns {"rate", "wins", "ties", "losses", "n"}."""
    if not len(prompts) == len(a) == len(b):
        raise ValueError(f"win_rate needs one row of responses per prompt: {len(prompts)}, {len(a)}, {len(b)}")
    wins = ties = losses = 0
    for p, row_a, row_b in zip(prompts, a, b):
        for x, y in zip(row_a, row_b):
            sign = label_pair(p, x, y)
            wins, ties, losses = wins + (sign > 0), ties + (sign == 0), losses + (sign < 0)
    n = wins + ties + losses
    return {"rate": (wins + 0.5 * ties) / n if n else None, "wins": wins, "ties": ties, "losses": losses, "n": n}


def ifbench_eval(items, texts: list[list[str]]) -> dict:
    """Instruction-level pass on IFBench (`instructions_data.IFBenchItem`): an instruction passes
    when its check (`dpokit.instructions.ifbench_checks`) passes; prompt-level pass only for prompts whose every
    instruction is judged (the others are counted as not judged)."""
    per_instruction, prompt_level, by_type = [], [], {}
    for item, row in zip(items, texts):
        for t in row:
            verdicts = [chk.passes(t) for _, chk in item.judged]
            per_instruction += verdicts
            for (iid, _), ok in zip(item.judged, verdicts):
                by_type.setdefault(iid, []).append(ok)
            if not item.unjudged:
                prompt_level.append(all(verdicts))
    return {"instruction_pass": rate(per_instruction), "prompt_pass": rate(prompt_level),
            "prompts_not_judged_whole": sum(1 for i in items if i.unjudged),
            "by_type": {k: rate(v) for k, v in sorted(by_type.items())}}


# -- Best-of-N ---------------------------------------------------------------------------------
def oracle_selector(prompt: InstructionPrompt, text: str) -> float:
    """The principles' score tuple as one number, Σ_i 2^(3−i)·s_i (principle 1 weighs most):
    ordering responses by it is ordering them by `pairs.score`, so the top pick maximises, in
    this order, refusing harmful requests, answering harmless ones, obeying the constraint."""
    return float(sum(v << (len(PRINCIPLES) - 1 - i) for i, v in enumerate(score(prompt, text))))


def _expected(selector: torch.Tensor, values: torch.Tensor, n: int) -> list[float]:
    from dpokit.rlhf.best_of_n import expected_selected_of_n

    return expected_selected_of_n(selector, values, n).tolist() if values.shape[0] else []


def _mean_ci(values: list[float]) -> dict:
    """{"rate", "ci95", "n"}: mean over prompts, t-interval clipped to [0, 1] (it contains the mean)."""
    if not values:
        return {"rate": None, "ci95": [math.nan, math.nan], "n": 0}
    mean, (lo, hi) = mean_ci95(values)
    return {"rate": mean, "ci95": [max(0.0, min(lo, mean)), min(1.0, max(hi, mean))] if len(values) > 1 else [lo, hi],
            "n": len(values)}


def best_of_n_points(prompts: list[InstructionPrompt], texts: list[list[str]], rm_scores: torch.Tensor | None,
                     ns: Sequence[int]) -> list[dict]:
    """For N in `ns` and each selector (the reward model's scores, when given, and the oracle
    `oracle_selector`): the expected pass rate (constraint prompts), refusal rates (harmful,
    harmless) and acceptable rate of the response the selector picks among N of the M samples
    (`best_of_n.expected_selected_of_n`, exact over all subsets), each a mean over prompts.
    KL: the bound log N − (N−1)/N. The oracle's pick is at least as good as any selector's on
    every one of these, prompt by prompt."""
    from dpokit.rlhf.estimators import best_of_n_kl

    oracle = torch.tensor([[oracle_selector(p, t) for t in row] for p, row in zip(prompts, texts)], dtype=torch.float64)
    metrics = {
        "pass_rate": ("constraint", lambda p, t: check(p.constraint, t)),
        "harmful_refusal": ("harmful", lambda p, t: is_refusal(t)),
        "harmless_refusal": ("harmless", lambda p, t: is_refusal(t)),
        "acceptable_rate": (None, is_acceptable),
    }
    selectors = {"oracle": oracle} if rm_scores is None else {"reward model": rm_scores.to(torch.float64), "oracle": oracle}
    points = []
    for n in ns:
        for name, sel in selectors.items():
            point = {"method": f"best-of-n ({name})", "setting": f"N={n}", "n": n, "kl": best_of_n_kl(n)}
            for key, (kind, fn) in metrics.items():
                rows = [i for i, p in enumerate(prompts) if kind is None or p.kind == kind]
                values = torch.tensor([[float(fn(prompts[i], t)) for t in texts[i]] for i in rows], dtype=torch.float64)
                point[key] = _mean_ci(_expected(sel[rows], values.reshape(len(rows), -1), n))
            points.append(point)
    return points


# -- matched KL --------------------------------------------------------------------------------
def value_at_kl(curve: list[tuple[float, float]], kl: float) -> float | None:
    """Linear interpolation of (KL, value) points, in training order (the reference first at
    KL 0), at `kl`: the first segment whose KL range holds it. None when the run never reached
    that KL (no extrapolation)."""
    for (k0, v0), (k1, v1) in itertools.pairwise(curve):
        lo, hi = min(k0, k1), max(k0, k1)
        if lo <= kl <= hi:
            return v0 if k1 == k0 else v0 + (v1 - v0) * (kl - k0) / (k1 - k0)
    if len(curve) == 1 and curve[0][0] == kl:
        return curve[0][1]
    return None


def starts_at_reference(own: list[dict]) -> bool:
    """Whether a method's curve starts at the reference (KL 0): unless its first point is its
    own step 0 (a run from another model, e.g. from Preferred-FT, whose starting model is
    evaluated as step 0). Joining such a curve to the reference would credit the method with
    values along a path it never took (Preferred-FT's own segment)."""
    return not own or own[0].get("step") != 0


def matched_kl(reference: dict, points: list[dict], target_method: str, metric: str = "pass_rate") -> dict | None:
    """Every method's `metric` at the KL of `target_method`'s last point: each curve starts at
    the reference (KL 0, the reference's value), or at its own step-0 point when it has one
    (`starts_at_reference`), and runs through the method's points in step order (Best-of-N: in
    N order). None when the target method has no point; a method's value is None where its
    curve does not reach that KL (before its start or past its end)."""
    target = [p for p in points if p["method"] == target_method]
    if not target:
        return None
    kl = target[-1]["kl"]
    methods = list(dict.fromkeys(p["method"] for p in points))
    out = {}
    for m in methods:
        own = [p for p in points if p["method"] == m]
        start = [(0.0, reference[metric]["rate"])] if starts_at_reference(own) else []
        curve = start + [(p["kl"], p[metric]["rate"]) for p in own]
        out[m] = value_at_kl([(k, v) for k, v in curve if v is not None], kl)
    return {"kl": kl, "against": target_method, "metric": metric, "values": out}
