"""Non-transitive preferences: rock-paper-scissors among three response styles, at a known rate.

Per prompt, three of the reference's samples take a style each (`assign_styles`):

    A  positive (VADER)         B  short (fewest words)         C  formal (dpokit.studies.raters)

and three annotators rank them. A fraction ρ of the prompts, exactly ⌊ρ·n + ½⌋ (the first of
one seeded permutation, so the sets are nested across ρ), gets the Condorcet profile, the
others a transitive one that differs in one annotator only:

    cyclic       rater-1 A>B>C, rater-2 B>C>A, rater-3 C>A>B   majority A≻B, B≻C, C≻A (a cycle)
    transitive   rater-1 A>B>C, rater-2 B>C>A, rater-3 A>C>B   majority A≻B, B≻C, A≻C

Every pair is decided 2:1 in both, so vote shares (soft labels) are 2/3 everywhere and no pair
is unanimous: the two kinds of prompt differ only in whether the majority cycles. Each prompt
gives three multi-rater records (the majority's pick as chosen); the audit must find exactly
the cyclic prompts' cycles. Over the population a random annotator prefers A to B and B to C
with probability 2/3, and C to A with probability (1 + ρ)/3 (`population_preference`).

A reward — and every DPO-family method's implicit reward β·log π/π_ref is one — cannot
represent a cycle: on any prompt h_AB + h_BC + h_CA = 0 identically, so the three margins
cannot all be positive. `style_margins` measures what a trained policy does instead.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics

from dpokit.studies.raters import sigmoid

ROLES = ("A", "B", "C")
CYCLIC_PROFILE = ("ABC", "BCA", "CAB")
TRANSITIVE_PROFILE = ("ABC", "BCA", "ACB")
EDGES = (("A", "B"), ("B", "C"), ("C", "A"))  # the cycle's direction
STYLE_CRITERIA = {"A": "sentiment", "B": "brevity", "C": "formality"}


def assign_styles(texts: list[str], scores: dict[str, list[float]]) -> dict[str, int] | None:
    """{role: index} over the first three samples: each takes the style it is relatively best
    at. For every criterion a sample's rank is how many of the other two score strictly lower
    (0-2); the assignment is the permutation with the largest summed rank of A by sentiment,
    B by brevity, C by formality (ties: the first permutation in itertools order). None when
    two of the three texts are the same after stripping (no three distinct responses)."""
    if len(texts) < 3 or len({t.strip() for t in texts[:3]}) < 3:
        return None

    def rank(criterion: str, i: int) -> int:
        return sum(scores[criterion][j] < scores[criterion][i] for j in range(3) if j != i)

    best = max(itertools.permutations(range(3)),
               key=lambda p: sum(rank(STYLE_CRITERIA[r], i) for r, i in zip(ROLES, p)))
    return dict(zip(ROLES, best))


def cyclic_prompts(n: int, rho: float, seed: int) -> set[int]:
    """Exactly ⌊ρ·n + ½⌋ prompt indices: the first of one permutation seeded by `seed` alone."""
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    order = random.Random(seed).sample(range(n), n)
    return set(order[: int(math.floor(rho * n + 0.5))])


def majority(profile: tuple[str, ...], x: str, y: str) -> tuple[str, str, dict[str, str]]:
    """(winner, loser, {annotator: "chosen" | "rejected"}) of styles x and y under `profile`
    (one ranking string per annotator, best first); the winner is the record's chosen."""
    prefers_x = {f"rater-{i + 1}": ranking.index(x) < ranking.index(y) for i, ranking in enumerate(profile)}
    x_wins = 2 * sum(prefers_x.values()) > len(profile)
    winner, loser = (x, y) if x_wins else (y, x)
    return winner, loser, {name: "chosen" if p == x_wins else "rejected" for name, p in prefers_x.items()}


def triple_records(prompt: str, texts: dict[str, str], finished: dict[str, bool], cyclic: bool) -> list[dict]:
    """The three majority-labelled multi-rater records of one prompt (module docstring)."""
    profile = CYCLIC_PROFILE if cyclic else TRANSITIVE_PROFILE
    out = []
    for x, y in EDGES:
        win, lose, votes = majority(profile, x, y)
        out.append({"prompt": prompt, "chosen": texts[win], "rejected": texts[lose], "votes": votes,
                    "chosen_finished": finished[win], "rejected_finished": finished[lose],
                    "styles": [win, lose], "cyclic": cyclic})
    return out


def build_cycle_data(rows: list[dict], rho: float, seed: int) -> tuple[list[dict], dict]:
    """rows: {"prompt", "texts", "finished", "scores": {criterion: [score per text]}} per prompt.
    Returns (records, info): info counts the prompts used, the cyclic ones (planned_cycles, which
    the audit must find) and the prompts skipped with their reason."""
    styled = []
    skipped = {}
    for row in rows:
        roles = assign_styles(row["texts"], row["scores"])
        if roles is None:
            reason = "fewer than 3 samples" if len(row["texts"]) < 3 else "two of three samples identical"
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        styled.append((row, roles))
    cyclic = cyclic_prompts(len(styled), rho, seed)
    records = []
    for k, (row, roles) in enumerate(styled):
        texts = {r: row["texts"][i] for r, i in roles.items()}
        finished = {r: bool(row["finished"][i]) for r, i in roles.items()}
        records += triple_records(row["prompt"], texts, finished, k in cyclic)
    return records, {"prompts": len(styled), "planned_cycles": len(cyclic), "rho": rho, "records": len(records),
                     "skipped": skipped}


def population_preference(rho: float) -> dict[str, float]:
    """P(a random annotator prefers the first style) per cycle edge, at cycle rate ρ."""
    return {"A>B": 2 / 3, "B>C": 2 / 3, "C>A": (1 + rho) / 3}


def heldout_triples(pairs: list[dict]) -> tuple[list[dict], int]:
    """Group within-prompt pair records (in sample order: "chosen" is sample a, "rejected"
    sample b, as dpokit.studies.common.calibration_pairs writes them) into triples: {prompt,
    texts [3], pair {(i, j): record index}}. A prompt without exactly three distinct texts and
    their three pairs is skipped and counted (returned second)."""
    by_prompt: dict[str, list[int]] = {}
    for k, p in enumerate(pairs):
        by_prompt.setdefault(p["prompt"], []).append(k)
    triples, skipped = [], 0
    for prompt, ks in by_prompt.items():
        texts = list(dict.fromkeys(t for k in ks for t in (pairs[k]["chosen"], pairs[k]["rejected"])))
        if len(texts) != 3 or len(ks) != 3:
            skipped += 1
            continue
        where = {(texts.index(pairs[k]["chosen"]), texts.index(pairs[k]["rejected"])): k for k in ks}
        triples.append({"prompt": prompt, "texts": texts, "pair": where})
    return triples, skipped


def edge_margin(triple: dict, roles: dict[str, int], margins: list[float | None], x: str, y: str) -> float | None:
    """h(x, y) = r(x) − r(y) of styles x, y in one held-out triple, from the pair margins."""
    i, j = roles[x], roles[y]
    if (i, j) in triple["pair"]:
        return margins[triple["pair"][(i, j)]]
    m = margins[triple["pair"][(j, i)]]
    return None if m is None else -m


def style_margins(triples: list[dict], roles: list[dict[str, int] | None], margins: list[float | None], beta: float) -> dict:
    """What a policy's implicit reward says about the three styles on held-out triples:

        edges          per cycle edge X≻Y: mean σ(β h_XY) and the share of prompts with h_XY > 0
        reward         per style: mean of β(r_X − mean of the three) (r = log π/π_ref)
        order          the styles by that mean, best first
        confidence     mean |σ(βh) − ½| over all three edges of every triple
        cycle_residual mean |h_AB + h_BC + h_CA| (0 for any reward: a check of the margins)
        triples        how many triples had all three margins"""
    edges = {f"{x}>{y}": [] for x, y in EDGES}
    centred = {r: [] for r in ROLES}
    residual = []
    for t, role in zip(triples, roles):
        if role is None:
            continue
        hs = [edge_margin(t, role, margins, x, y) for x, y in EDGES]
        if any(h is None for h in hs):
            continue
        for (x, y), h in zip(EDGES, hs):
            edges[f"{x}>{y}"].append(h)
        h_ab, h_bc, h_ca = hs
        centred["A"].append(beta * (h_ab - h_ca) / 3)
        centred["B"].append(beta * (h_bc - h_ab) / 3)
        centred["C"].append(beta * (h_ca - h_bc) / 3)
        residual.append(abs(sum(hs)))
    n = len(residual)
    if n == 0:
        return {"triples": 0, "edges": None, "reward": None, "order": None, "confidence": None, "cycle_residual": None}
    reward = {r: statistics.fmean(v) for r, v in centred.items()}
    every = [sigmoid(beta * h) for hs in edges.values() for h in hs]
    return {
        "triples": n,
        "edges": {e: {"sigma_mean": statistics.fmean(sigmoid(beta * h) for h in hs), "positive_share": sum(h > 0 for h in hs) / n}
                  for e, hs in edges.items()},
        "reward": reward,
        "order": sorted(ROLES, key=lambda r: -reward[r]),
        "confidence": statistics.fmean(abs(p - 0.5) for p in every),
        "cycle_residual": statistics.fmean(residual),
    }
