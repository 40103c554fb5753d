"""Simulated raters with different criteria, mixed in known proportions (the annotator-
disagreement study).

Each criterion is a scorer anyone can check:

    sentiment   VADER compound score (the sentiment task's ground truth), in [-1, 1]
    brevity     −(number of whitespace-separated words): fewer words score higher
    formality   (formal markers − informal markers) / max(1, words), rules below

Scores are standardised against a reference pool (the reference model's own samples):
z_k(y) = (s_k(y) − μ_k) / σ_k, so that one unit means "one standard deviation of what the
reference writes" on every criterion and the mixture weights compare like with like.

A rater of criterion k at temperature T > 0 is a Bradley–Terry annotator on z_k:

    P_k(a ≻ b) = σ((z_k(a) − z_k(b)) / T);      T = 0: deterministic, a coin flip on a tie.

A `Panel` is a fixed set of named annotators, each of one criterion; every annotator votes
on every pair, independently. The mixture proportions are the panel's shares,
w_k = (annotators of criterion k) / (panel size). The mixture's own ground truth, in two
forms (both pure functions here, tested by hand):

    expected utility      U(y) = Σ_k w_k z_k(y)                       (`Panel.utility`)
    preference prob.      P_mix(a ≻ b) = Σ_k w_k P_k(a ≻ b)           (`Panel.preference`)
                          = the expected share of the panel's votes for a

U is what the KL-regularised objective of the whole population maximises (each annotator's
reward weighted by its share: max_π E_y~π[Σ_k w_k z_k(y)] − β KL(π‖π_ref) has optimum
π_ref·exp(U/β)/Z). P_mix is what a vote share estimates. They can rank a pair differently:
P_mix counts how many annotators prefer a, U how much (see tests/test_studies_raters.py).
"""

from __future__ import annotations

import math
import random
import re
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

# ---------------------------------------------------------------- the scorers

# Informal: contractions of not / am / are / have / will / would-had, and the 's of pronouns
# and deictics ("it's", not the possessive "film's").
_CONTRACTION = re.compile(r"^[a-z]+(n't|'m|'re|'ve|'ll|'d)$|^(it|that|there|here|what|who|he|she|let|how|where)'s$")
SLANG = frozenset(
    "lol omg wow gonna wanna gotta kinda sorta yeah yep nope ok okay cool awesome super totally literally "
    "basically stuff guys dude lots tons crazy damn hey hmm haha yay ugh meh btw".split()
)
CHAT_PRONOUNS = frozenset("i me my mine myself you your yours yourself we us our ours".split())
FORMAL_WORDS = frozenset(
    "however moreover furthermore therefore thus nevertheless nonetheless consequently whereas although "
    "notably particularly additionally overall indeed hence ultimately subsequently regarding considerable "
    "remarkably accordingly namely".split()
)
LONG_WORD = 9  # letters; a word this long counts as formal (word length is the classic formality proxy)
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_EMOTICON = re.compile(r"[:;]-?[()DPp]")
_ELLIPSIS = re.compile(r"\.\.\.|…")


def formality_markers(text: str) -> dict:
    """The counts behind `formality_score`, for reading and testing:

        words       tokens of letters with at most one inner apostrophe ("can't" is one word)
        informal    per word: a contraction, a SLANG word, a first/second-person pronoun
                    (CHAT_PRONOUNS), or an all-capitals word of ≥ 2 letters; plus each "!",
                    each ellipsis ("..." or "…") and each emoticon (":)", ";-D", ...)
        formal      per word not counted informal: a FORMAL_WORDS connective or a word of
                    ≥ LONG_WORD letters; plus each ";"

    Curly apostrophes count as straight ones. A word is counted at most once."""
    text = text.replace("\u2019", "'")
    words = _WORD.findall(text)
    informal = formal = 0
    for word in words:
        low = word.lower()
        if _CONTRACTION.match(low) or low in SLANG or low in CHAT_PRONOUNS or (len(word) >= 2 and word.isupper()):
            informal += 1
        elif low in FORMAL_WORDS or sum(ch.isalpha() for ch in word) >= LONG_WORD:
            formal += 1
    informal += text.count("!") + len(_ELLIPSIS.findall(text)) + len(_EMOTICON.findall(text))
    formal += text.count(";")
    return {"words": len(words), "informal": informal, "formal": formal}


def formality_score(texts: list[str]) -> list[float]:
    """(formal − informal) / max(1, words) per text (`formality_markers`): a density, so that
    a longer text is not more formal for being longer (length is the brevity rater's)."""
    _check_list(texts)
    out = []
    for text in texts:
        m = formality_markers(text)
        out.append((m["formal"] - m["informal"]) / max(1, m["words"]))
    return out


def brevity_score(texts: list[str]) -> list[float]:
    """−(number of whitespace-separated words): the shorter, the higher (empty text: 0)."""
    _check_list(texts)
    return [-float(len(t.split())) for t in texts]


def sentiment_score(texts: list[str]) -> list[float]:
    """VADER compound score (dpokit.eval.rewards.sentiment_reward, the sentiment task's truth)."""
    from dpokit.eval.rewards import sentiment_reward

    return sentiment_reward(texts)


def _check_list(texts) -> None:
    if isinstance(texts, str):
        raise TypeError("scorers take a list of strings, not a string")


CRITERIA: dict[str, Callable[[list[str]], list[float]]] = {
    "sentiment": sentiment_score,
    "brevity": brevity_score,
    "formality": formality_score,
}


def score_texts(texts: list[str], criteria: Sequence[str]) -> dict[str, list[float]]:
    """{criterion: raw score of each text}."""
    unknown = [c for c in criteria if c not in CRITERIA]
    if unknown:
        raise ValueError(f"unknown criterion {unknown[0]!r}; valid: {', '.join(CRITERIA)}")
    return {c: [float(s) for s in CRITERIA[c](list(texts))] for c in criteria}


@dataclass(frozen=True)
class Standardizer:
    """z = (s − mean) / sd per criterion, with mean and sd of a reference pool. A criterion
    that does not vary in the pool (sd 0) keeps sd 1: z is then s − mean (said in `to_json`)."""

    mean: dict[str, float]
    sd: dict[str, float]

    @classmethod
    def fit(cls, raw: dict[str, list[float]]) -> "Standardizer":
        mean, sd = {}, {}
        for c, values in raw.items():
            if not values:
                raise ValueError(f"cannot standardise {c!r}: no scores in the reference pool")
            mean[c] = statistics.fmean(values)
            spread = statistics.pstdev(values) if len(values) > 1 else 0.0
            sd[c] = spread if spread > 0 else 1.0
        return cls(mean, sd)

    def __call__(self, raw: dict[str, list[float]]) -> dict[str, list[float]]:
        return {c: [(s - self.mean[c]) / self.sd[c] for s in values] for c, values in raw.items()}

    def to_json(self) -> dict:
        return {"mean": dict(self.mean), "sd": dict(self.sd)}


# ---------------------------------------------------------------- raters and the panel


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


@dataclass(frozen=True)
class Rater:
    """A named annotator judging by one criterion, with Bradley–Terry noise at `temperature`
    on standardised scores (0 = deterministic)."""

    name: str
    criterion: str
    temperature: float = 0.0

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise ValueError(f"rater {self.name!r}: unknown criterion {self.criterion!r}; valid: {', '.join(CRITERIA)}")
        if not self.temperature >= 0 or math.isinf(self.temperature):
            raise ValueError(f"rater {self.name!r}: temperature must be finite and ≥ 0, got {self.temperature}")

    def prob(self, z_a: float, z_b: float) -> float:
        """P(this rater prefers a over b) from the two standardised scores."""
        d = z_a - z_b
        if self.temperature == 0:
            return 1.0 if d > 0 else 0.0 if d < 0 else 0.5
        return sigmoid(d / self.temperature)

    def vote(self, z_a: float, z_b: float, rng: random.Random) -> bool:
        """True when the rater prefers a (one independent draw)."""
        return rng.random() < self.prob(z_a, z_b)


@dataclass(frozen=True)
class Panel:
    """A fixed set of named annotators; each votes on every pair. Proportions = shares."""

    raters: tuple[Rater, ...]

    def __post_init__(self):
        if not self.raters:
            raise ValueError("a panel needs at least one rater")
        names = [r.name for r in self.raters]
        if len(set(names)) != len(names):
            raise ValueError(f"rater names must be unique, got {names}")

    @classmethod
    def from_counts(cls, counts: dict[str, int], temperature: float) -> "Panel":
        """{criterion: annotators}, e.g. {"sentiment": 3, "brevity": 1, "formality": 1} gives
        sentiment-1..3, brevity-1, formality-1 at one temperature: w = (0.6, 0.2, 0.2)."""
        bad = {c: n for c, n in counts.items() if not isinstance(n, int) or isinstance(n, bool) or n < 0}
        if bad:
            raise ValueError(f"annotator counts must be integers ≥ 0, got {bad}")
        return cls(tuple(Rater(f"{c}-{i + 1}", c, temperature) for c, n in counts.items() for i in range(n)))

    @property
    def weights(self) -> dict[str, float]:
        """w_k = share of the panel's annotators judging by criterion k."""
        n = Counter(r.criterion for r in self.raters)
        return {c: k / len(self.raters) for c, k in n.items()}

    @property
    def criteria(self) -> list[str]:
        return list(dict.fromkeys(r.criterion for r in self.raters))

    def utility(self, z: dict[str, float]) -> float:
        """U(y) = Σ_k w_k z_k(y) for one response's standardised scores {criterion: z}."""
        return sum(w * z[c] for c, w in self.weights.items())

    def preference(self, z_a: dict[str, float], z_b: dict[str, float]) -> float:
        """P_mix(a ≻ b) = Σ_k w_k P_k(a ≻ b) = the mean over annotators of P(prefers a)."""
        return statistics.fmean(r.prob(z_a[r.criterion], z_b[r.criterion]) for r in self.raters)

    def votes(self, z_a: dict[str, float], z_b: dict[str, float], rng: random.Random) -> dict[str, bool]:
        """{annotator: prefers a}, one independent draw each, in panel order."""
        return {r.name: r.vote(z_a[r.criterion], z_b[r.criterion], rng) for r in self.raters}

    def describe(self) -> dict:
        return {"raters": [{"name": r.name, "criterion": r.criterion, "temperature": r.temperature} for r in self.raters],
                "weights": self.weights}


def rate_pair(panel: Panel, prompt: str, a: str, b: str, z_a: dict[str, float], z_b: dict[str, float],
              rng: random.Random) -> dict:
    """The panel votes on (a, b): a multi-rater record `{"prompt", "chosen", "rejected",
    "votes": {rater: "chosen" | "rejected"}}` (dpokit.data.normalize) with the majority's pick
    as "chosen", so that DPO, which reads only chosen/rejected, trains on majority labels. A
    tied vote is oriented by a coin (`tie_broken: true`). The ground truth rides along (extra
    fields, which the loader ignores): z_chosen / z_rejected {criterion: z}, utility_chosen /
    utility_rejected (U), p_mix = P_mix(chosen ≻ rejected)."""
    votes = panel.votes(z_a, z_b, rng)
    for_a = sum(votes.values())
    tie = 2 * for_a == len(votes)
    a_first = rng.random() < 0.5 if tie else 2 * for_a > len(votes)
    (chosen, z_c), (rejected, z_r) = ((a, z_a), (b, z_b)) if a_first else ((b, z_b), (a, z_a))
    return {
        "prompt": prompt, "chosen": chosen, "rejected": rejected,
        "votes": {n: "chosen" if v == a_first else "rejected" for n, v in votes.items()},
        "tie_broken": tie, "z_chosen": dict(z_c), "z_rejected": dict(z_r),
        "utility_chosen": panel.utility(z_c), "utility_rejected": panel.utility(z_r), "p_mix": panel.preference(z_c, z_r),
    }
