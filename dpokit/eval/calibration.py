"""Does the implicit reward rank pairs the way the ground truth does?

DPO's implicit reward margin for a pair is m = β[(πc − rc) − (πr − rr)] (Rafailov et al.
2023, §5). On held-out pairs with a ground-truth reward gap g = r(chosen) − r(rejected) > 0,
the plain accuracy (share of m > 0) mixes easy and near-tie pairs. Two views that separate
them:

    rank correlation    Spearman ρ between m and g (does a bigger true gap get a bigger margin?)
    accuracy by gap     pairs split into equal-count bins of g; accuracy and mean margin per bin

An implicit reward that has learned the preference should be most accurate on the largest
gaps; accuracy near 50% in every bin means the margins carry no information about g.
"""

from __future__ import annotations

from typing import Sequence


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank (what Spearman's ρ uses)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            out[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's r of the average ranks); None when undefined
    (fewer than 2 values, or one side constant)."""
    if len(x) != len(y):
        raise ValueError("spearman needs two sequences of the same length")
    if len(x) < 2:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / (sxx * syy) ** 0.5


def accuracy_by_gap(margins: Sequence[float], gaps: Sequence[float], bins: int = 3) -> list[dict]:
    """Pairs sorted by ground-truth gap and cut into `bins` groups of (nearly) equal count:
    per group the gap range, the number of pairs, the accuracy (share of margin > 0) and the
    mean margin. Fewer pairs than bins gives one group per pair."""
    if len(margins) != len(gaps):
        raise ValueError("margins and gaps must have the same length")
    order = sorted(range(len(gaps)), key=lambda i: gaps[i])
    n, bins = len(order), max(1, min(bins, len(order)))
    out = []
    for b in range(bins):
        idx = order[b * n // bins : (b + 1) * n // bins]
        if not idx:
            continue
        ms = [margins[i] for i in idx]
        out.append({
            "gap_min": gaps[idx[0]], "gap_max": gaps[idx[-1]], "pairs": len(idx),
            "accuracy": sum(m > 0 for m in ms) / len(ms), "mean_margin": sum(ms) / len(ms),
        })
    return out


def margin_calibration(margins: Sequence[float], gaps: Sequence[float], bins: int = 3) -> dict:
    """{pairs, accuracy, spearman, by_gap} for implicit margins against ground-truth gaps."""
    if not margins:
        return {"pairs": 0, "accuracy": None, "spearman": None, "by_gap": []}
    return {
        "pairs": len(margins),
        "accuracy": sum(m > 0 for m in margins) / len(margins),
        "spearman": spearman(margins, gaps),
        "by_gap": accuracy_by_gap(margins, gaps, bins),
    }
