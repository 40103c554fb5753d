"""Small statistics for evaluation: confidence intervals, win rates, KL estimates.

No scipy: it is not a dependency. The t quantile comes from a table (df 1..30) and,
above that, the Cornish-Fisher expansion of Student's t around the normal quantile,
which matches scipy to better than 1e-7 for df > 30 (checked in the tests when scipy
happens to be installed).
"""

from __future__ import annotations

import math
from typing import Sequence

# t_{0.975, df} for df = 1..30 (two-sided 95%), to 4 decimals.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
_Z975 = 1.959963984540054  # standard normal 0.975 quantile


def t_quantile_975(df: int) -> float:
    """Two-sided 95% Student-t critical value t_{0.975, df}.

    For df > 30, Cornish-Fisher (Abramowitz & Stegun 26.7.5) with z = z_{0.975}:

        t = z + g1/df + g2/df^2 + g3/df^3 + g4/df^4
        g1 = (z^3 + z)/4
        g2 = (5z^5 + 16z^3 + 3z)/96
        g3 = (3z^7 + 19z^5 + 17z^3 - 15z)/384
        g4 = (79z^9 + 776z^7 + 1482z^5 - 1920z^3 - 945z)/92160
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def _floats(values) -> list[float]:
    # Accept lists, tuples, numpy arrays and 1-D tensors alike.
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [float(v) for v in values]


def mean_ci95(values: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Mean and two-sided 95% t-interval:  m ± t_{0.975, n-1} · s / sqrt(n),

    with s the sample standard deviation (n - 1 in the denominator). With a single
    value the interval is undefined and returned as (nan, nan).
    """
    xs = _floats(values)
    n = len(xs)
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = sum(xs) / n
    if n == 1:
        return mean, (math.nan, math.nan)
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    half = t_quantile_975(n - 1) * math.sqrt(var / n)
    return mean, (mean - half, mean + half)


def win_rate(policy_rewards: Sequence[float], reference_rewards: Sequence[float]) -> float:
    """Fraction of prompts where the policy's reward beats the reference's (paired by
    position = by prompt); exact ties count one half:

        win_rate = (#{p_i > r_i} + 0.5 · #{p_i = r_i}) / n
    """
    ps, rs = _floats(policy_rewards), _floats(reference_rewards)
    if len(ps) != len(rs):
        raise ValueError(f"paired rewards differ in length: {len(ps)} vs {len(rs)}")
    if not ps:
        raise ValueError("win_rate needs at least one pair")
    score = sum(1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(ps, rs))
    return score / len(ps)


def sequence_kl(policy_logps: Sequence[float], ref_logps: Sequence[float]) -> float:
    """Monte-Carlo estimate of KL(π ‖ π_ref) in nats from samples y ~ π(·|x):

        KL ≈ mean_i [ log π(y_i|x_i) − log π_ref(y_i|x_i) ]

    Unbiased for samples drawn from the policy; a single term can be negative, and
    so can the estimate with few samples.
    """
    ps, rs = _floats(policy_logps), _floats(ref_logps)
    if len(ps) != len(rs):
        raise ValueError(f"log-prob lists differ in length: {len(ps)} vs {len(rs)}")
    if not ps:
        raise ValueError("sequence_kl needs at least one sample")
    return sum(p - r for p, r in zip(ps, rs)) / len(ps)
