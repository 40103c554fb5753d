"""Movie-review openings for the sentiment-control case study.

Every opening is written by this project and composed from three parts:

    template (8)  x  kind of film (10)  x  subject (8)  =  640 distinct openings

The openings are deliberately neutral (no praise, no complaint) and stop mid-sentence,
so the continuation decides the sentiment: the reference model should land somewhere
near neutral on average, which leaves the policy room to move towards positive reviews.
Order is fixed (nested loops, no randomness), so a prompt list is reproducible from the
code alone; `split_prompts` then shuffles with a fixed seed.
"""

from __future__ import annotations

import random

# Each template has a {kind} slot ("thriller") and a {subject} slot ("a retired
# detective"); {a_kind} is the kind with its indefinite article ("an animated film").
TEMPLATES: tuple[str, ...] = (
    "I watched this {kind} about {subject} last night, and",
    "So I finally got around to seeing the {kind} about {subject}. Honestly,",
    "A friend told me to watch {a_kind} about {subject}, so I did. The",
    "This {kind} follows {subject}. Going in, I did not know what to expect, and",
    "Last weekend we rented {a_kind} about {subject}. I have to say",
    "I went to the cinema on Sunday to see {a_kind} about {subject}, and by the end",
    "It has been a while since I saw {a_kind} about {subject}. This one",
    "After reading a few reviews, I watched the {kind} about {subject} myself. In my opinion,",
)

KINDS: tuple[str, ...] = (
    "thriller",
    "romantic comedy",
    "documentary",
    "animated film",
    "science-fiction film",
    "period drama",
    "horror movie",
    "western",
    "musical",
    "indie drama",
)

SUBJECTS: tuple[str, ...] = (
    "a retired detective",
    "two sisters who have not spoken in years",
    "a small-town baker",
    "a young chess player",
    "a lighthouse keeper",
    "a jazz musician in 1950s Paris",
    "a high-school science teacher",
    "a family moving to the countryside",
)


def _with_article(noun_phrase: str) -> str:
    """'a thriller', 'an animated film' (by first letter; enough for our fixed word list)."""
    article = "an" if noun_phrase[0].lower() in "aeiou" else "a"
    return f"{article} {noun_phrase}"


def build_prompts() -> list[str]:
    """All template x kind x subject openings, in a fixed order (640 distinct strings)."""
    prompts = []
    for template in TEMPLATES:
        for kind in KINDS:
            for subject in SUBJECTS:
                prompts.append(template.format(kind=kind, a_kind=_with_article(kind), subject=subject))
    return prompts


def split_prompts(prompts: list[str], n_heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """Split into (train, heldout) with a fixed-seed shuffle; the two lists are disjoint.

    The held-out set is the first `n_heldout` prompts of a `random.Random(seed)` shuffle;
    both parts keep the input's relative order, so the result depends only on
    (prompts, n_heldout, seed) and not on the shuffle's internal order.
    """
    if len(set(prompts)) != len(prompts):
        raise ValueError("prompts contain duplicates; a split could not be disjoint")
    if not 0 <= n_heldout <= len(prompts):
        raise ValueError(f"n_heldout={n_heldout} must be between 0 and {len(prompts)}")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    heldout_idx = set(order[:n_heldout])
    train = [p for i, p in enumerate(prompts) if i not in heldout_idx]
    heldout = [p for i, p in enumerate(prompts) if i in heldout_idx]
    return train, heldout
