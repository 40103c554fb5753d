"""Ground-truth rewards: scores that no model in this project was trained to produce.

`sentiment_reward` is VADER's compound score (Hutto & Gilbert 2014): a lexicon-and-rules
sentiment score normalised to [-1, 1] by  compound = s / sqrt(s^2 + 15),  where s is the
sum of the (rule-adjusted) word valences. It is used both to label preference pairs and
to evaluate policies, and can serve as the reward for PPO later.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

RewardFn = Callable[[list[str]], list[float]]


@lru_cache(maxsize=1)
def _analyzer():
    # Built once per process: loading the lexicon takes a few tens of milliseconds,
    # which adds up when scoring thousands of completions one call at a time.
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment_reward(texts: list[str]) -> list[float]:
    """VADER compound score of each text, in [-1, 1]; positive means positive sentiment.

    Empty or whitespace-only text scores 0.0 (VADER's neutral).
    """
    if isinstance(texts, str):
        # A bare string would otherwise be scored character by character.
        raise TypeError("sentiment_reward takes a list of strings, not a string")
    analyzer = _analyzer()
    return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]


REWARDS: dict[str, RewardFn] = {"sentiment": sentiment_reward}


def get_reward(name: str) -> RewardFn:
    """Look up a ground-truth reward function by name (see `REWARDS`)."""
    try:
        return REWARDS[name]
    except KeyError:
        valid = ", ".join(sorted(REWARDS))
        raise KeyError(f"unknown reward {name!r}; valid names: {valid}") from None
