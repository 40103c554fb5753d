"""Preference pairs labelled by rules (RLAIF in the sense of Bai et al. 2022, with code in place
of the feedback model): the principles below rank K sampled responses to one prompt.

Principles, applied in this order; the first one that tells two responses apart decides:

1. `refuse_harmful`: on a harmful prompt, a refusal (`refusal.is_refusal`) beats a non-refusal.
2. `answer_harmless`: on a harmless prompt (no constraint), a non-refusal beats a refusal.
3. `obey_constraint`: on a constraint prompt, a response passing `constraints.check` beats one
   failing it.
4. `not_degenerate`: a response that is not degenerate (`is_degenerate`) beats one that is.
5. Equal on 1-4: no preference (a tie gives no pair).

A principle that does not apply to a prompt's kind gives every response the same value.
`score(prompt, response)` is the tuple of the four values (1 = satisfied, 0 = not or not
applicable), so ranking K samples is a sort and `label_pair` is a tuple comparison.

`build_pairs` drops empty samples and repeats first (dpokit's loader would skip a pair with
an empty side or two equal sides), then makes pairs only with an ACCEPTABLE chosen response:
one that satisfies every principle that applies (not degenerate, and a refusal / an answer /
a pass as the prompt's kind asks).
`label_pair` alone would prefer harmful compliance to a looping answer (principle 4) or an
empty answer to a refusal of a harmless question (principle 2); as training pairs these
would teach compliance, emptiness or degeneration, so they are never made. With no acceptable
sample, the critique -> revision step (Bai et al. 2022, rules instead of a model) may supply
the chosen response:

* constraint prompt: `constraints.revise` of the failing, non-degenerate samples in rank
  order (ties in sample order); the first revision that passes `check`, is not degenerate and
  differs from its original gives the pair (revision > original), origin "revised".
* harmful prompt: a fixed short refusal (one of REFUSALS, chosen by `rng`) over one sample:
  the first non-refusal that is not degenerate, else the first non-refusal, else the first
  (degenerate) refusal; origin "revised".
* harmless prompt: no rule can write an answer; no pair.

`revisions` > 1 (default 1) revises up to that many samples of such a prompt, in the same
order, one pair each (a fresh template refusal drawn per pair on a harmful prompt): more pairs
from the same samples, so a family that only revision teaches gets more than one pair per
prompt without sampling more.

`contrast_harmless` (default off): a harmless prompt with acceptable samples also gets up to
`revisions` contrast pairs, in addition to its sampled pairs: its first distinct acceptable
samples (sample order), each ≻ a template refusal (one of REFUSALS, by `rng`; distinct templates
while there are enough), origin "contrast", decided by principle 2. The refusal pairs of harmful
prompts are otherwise the only pairs about refusing, and nothing in the data says a harmless
question is answered: these pairs teach the other side of the same principle (over-refusal), and
`revisions` gives a harmless prompt as many "answer ≻ refusal" pairs as a harmful prompt with no
refusal gets "refusal ≻ compliance" pairs. A prompt with fewer distinct acceptable samples gets
fewer (`pairs_report`'s `contrast_per_prompt` counts them). At `revisions` = 1 a tied harmless
prompt gets the pair (and the rng draw) it got when contrast pairs were made for ties only.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from dpokit.config import ConfigError
from dpokit.data.normalize import _visible_text
from dpokit.instructions.constraints import SENTENCE_END_RE, check, revise, words
from dpokit.instructions.prompts import InstructionPrompt
from dpokit.instructions.refusal import is_refusal

REFUSALS: tuple[str, ...] = (
    "I can't help with that request.",
    "I'm sorry, but I can't assist with that.",
    "I won't provide help with this, as it could cause serious harm.",
    "I must decline this request.",
)

# is_degenerate: a sentence repeated this often, with at least this many words, is a loop;
# a text of at least DEGENERATE_MIN_CHARS visible characters, more than DEGENERATE_CHAR_SHARE
# of them one character (case aside), is noise.
DEGENERATE_REPEATS = 3
DEGENERATE_MIN_WORDS = 2
DEGENERATE_MIN_CHARS = 10
DEGENERATE_CHAR_SHARE = 0.9
_UNIT_BREAK = re.compile(SENTENCE_END_RE.pattern + r"|\n")


def is_degenerate(text: str) -> bool:
    """True when the response is

    * empty: nothing visible (whitespace and invisible characters only, as dpokit's loader
      reads a completion: `normalize._visible_text`);
    * a loop: some sentence of at least DEGENERATE_MIN_WORDS (2) words occurs at least
      DEGENERATE_REPEATS (3) times. Sentences end after . ! ? followed by whitespace, or at a
      line break (so a repeated line counts); two sentences are the same when their words
      (`constraints.words`, casefolded) are: punctuation and case aside. One-word sentences
      ("Yes." three times in a FAQ) and word-less lines ("}," of pretty-printed JSON) never
      count;
    * noise: at least DEGENERATE_MIN_CHARS (10) non-whitespace characters, of which one
      character (casefolded) makes up MORE than DEGENERATE_CHAR_SHARE (90%).

    Not caught: a loop with no sentence break ("the the the ..."), a sentence repeated twice."""
    visible = "".join(_visible_text(text).split()).casefold()
    if not visible:
        return True
    if len(visible) >= DEGENERATE_MIN_CHARS and Counter(visible).most_common(1)[0][1] > DEGENERATE_CHAR_SHARE * len(visible):
        return True
    units = Counter(" ".join(w.casefold() for w in words(unit)) for unit in _UNIT_BREAK.split(text))
    return any(n >= DEGENERATE_REPEATS and len(unit.split()) >= DEGENERATE_MIN_WORDS for unit, n in units.items())


# ------------------------------------------------------------------------------------------
# The principles: each returns True / False, or None where it does not apply to the prompt.


def refuse_harmful(prompt: InstructionPrompt, response: str) -> bool | None:
    """1. Harmful prompt: a refusal is preferred over a non-refusal."""
    return is_refusal(response) if prompt.kind == "harmful" else None


def answer_harmless(prompt: InstructionPrompt, response: str) -> bool | None:
    """2. Harmless prompt (no constraint): a non-refusal is preferred over a refusal."""
    return not is_refusal(response) if prompt.kind == "harmless" else None


def obey_constraint(prompt: InstructionPrompt, response: str) -> bool | None:
    """3. Constraint prompt: a response passing the check is preferred over one failing it."""
    return check(prompt.constraint, response) if prompt.constraint is not None else None


def not_degenerate(prompt: InstructionPrompt, response: str) -> bool | None:
    """4. Any prompt: a non-degenerate response is preferred over a degenerate one."""
    return not is_degenerate(response)


PRINCIPLES: tuple[tuple[str, Callable[[InstructionPrompt, str], bool | None]], ...] = (
    ("refuse_harmful", refuse_harmful),
    ("answer_harmless", answer_harmless),
    ("obey_constraint", obey_constraint),
    ("not_degenerate", not_degenerate),
)


def score(prompt: InstructionPrompt, response: str) -> tuple[int, ...]:
    """One value per principle, in order: 1 = satisfied, 0 = not (or not applicable). Higher
    tuples are better; sorting by it ranks responses lexicographically."""
    return tuple(int(bool(rule(prompt, response))) for _, rule in PRINCIPLES)


def decide(prompt: InstructionPrompt, a: str, b: str) -> tuple[int, str | None]:
    """(+1 a preferred / -1 b preferred / 0 tie, the name of the principle that decided)."""
    for (name, _), x, y in zip(PRINCIPLES, score(prompt, a), score(prompt, b)):
        if x != y:
            return (1 if x > y else -1), name
    return 0, None


def label_pair(prompt: InstructionPrompt, a: str, b: str) -> int:
    """+1 when a is preferred, -1 when b is, 0 on a tie (rule 5)."""
    return decide(prompt, a, b)[0]


def is_acceptable(prompt: InstructionPrompt, response: str) -> bool:
    """Satisfies every principle that applies: the only kind of response used as `chosen`."""
    return all(rule(prompt, response) is not False for _, rule in PRINCIPLES)


# ------------------------------------------------------------------------------------------
# Pairs


@dataclass(frozen=True)
class LabelledPair:
    """One labelled pair: `origin` "sampled", "revised" or "contrast", `reason` = the name of the principle
    that decided it; `kind` and `family` (None without a constraint) are the prompt's."""

    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    origin: str
    reason: str
    kind: str
    family: str | None


def _pair(prompt: InstructionPrompt, chosen: str, rejected: str, origin: str) -> LabelledPair:
    sign, principle = decide(prompt, chosen, rejected)
    assert sign == 1, "a pair's chosen response must be preferred"
    family = prompt.constraint.family if prompt.constraint else None
    return LabelledPair(prompt.id, prompt.text, chosen, rejected, origin, principle, prompt.kind, family)


def _distinct(samples: Iterable[str]) -> list[str]:
    """Samples in order, with empty ones and repeats dropped, by dpokit's loader's rules
    (`normalize`): a pair with an empty side, or two sides equal once invisible characters and
    surrounding whitespace are dropped, would be skipped when loaded."""
    seen, out = {""}, []
    for s in samples:
        if _visible_text(s) not in seen:
            seen.add(_visible_text(s))
            out.append(s)
    return out


def build_pairs_explained(prompt: InstructionPrompt, samples: list[str], *, rng: random.Random,
                          max_pairs_per_prompt: int = 2, revise_when_none_pass: bool = True, revisions: int = 1,
                          contrast_harmless: bool = False) -> tuple[list[LabelledPair], str | None]:
    """(pairs, None), or ([], why no pair). Sampled pairs: every acceptable sample (they all
    share the top score) against every lower-scored one, ordered by the deciding principle
    (principle 1 first), ties broken by `rng`; the first `max_pairs_per_prompt` are kept.
    With no acceptable sample, the revision rules of the module docstring apply (up to
    `revisions` pairs). `contrast_harmless`: a harmless prompt's contrast pairs (up to
    `revisions`) follow its sampled pairs."""
    if not isinstance(max_pairs_per_prompt, int) or max_pairs_per_prompt < 1:
        raise ConfigError(f"max_pairs_per_prompt must be an integer >= 1, got {max_pairs_per_prompt!r}")
    if not isinstance(revisions, int) or revisions < 1:
        raise ConfigError(f"revisions must be an integer >= 1, got {revisions!r}")
    distinct = _distinct(samples)
    if not distinct:
        return [], "only empty samples" if samples else "no samples"
    ranked = sorted(distinct, key=lambda s: score(prompt, s), reverse=True)  # stable: ties keep sample order
    best = [s for s in ranked if is_acceptable(prompt, s)]
    if best:
        worse = [s for s in ranked if score(prompt, s) < score(prompt, best[0])]
        index = {name: i for i, (name, _) in enumerate(PRINCIPLES)}
        combos = [(index[decide(prompt, c, r)[1]], rng.random(), c, r) for c in best for r in worse]
        combos.sort(key=lambda t: t[:2])
        pairs = [_pair(prompt, c, r, "sampled") for _, _, c, r in combos[:max_pairs_per_prompt]]
        if contrast_harmless and prompt.kind == "harmless":
            pairs += _contrast(prompt, best, rng, revisions)
        return (pairs, None) if pairs else ([], "tie: all samples acceptable")
    if not revise_when_none_pass:
        return [], "no acceptable sample (revision off)"
    return _revised(prompt, ranked, rng, revisions)


def _contrast(prompt: InstructionPrompt, acceptable: list[str], rng: random.Random, n: int) -> list[LabelledPair]:
    """Up to n pairs: the first n acceptable samples, each ≻ a template refusal. The first
    template is `rng.choice(REFUSALS)` (the draw of the one-pair rule); each further one is drawn
    from the templates not yet used, all of them again once every one is."""
    pairs, unused = [], list(REFUSALS)
    for chosen in acceptable[:n]:
        refusal = rng.choice(unused)
        unused = [r for r in unused if r != refusal] or list(REFUSALS)
        pairs.append(_pair(prompt, chosen, refusal, "contrast"))
    return pairs


def _revised(prompt: InstructionPrompt, ranked: list[str], rng: random.Random,
             revisions: int = 1) -> tuple[list[LabelledPair], str | None]:
    """The critique -> revision step for a prompt with no acceptable sample: up to
    `revisions` pairs, each from a different sample."""
    if prompt.kind == "harmful":
        # the rejected ones: harmful compliance first, then an empty or looping non-refusal,
        # then a degenerate refusal (each in rank order; sorted is stable, so the first is
        # what min() picks)
        originals = sorted(ranked, key=lambda s: (is_refusal(s), is_degenerate(s)))[:revisions]
        return [_pair(prompt, rng.choice(REFUSALS), original, "revised") for original in originals], None
    if prompt.kind == "harmless":
        return [], "harmless: every sample refuses or is degenerate"
    pairs = []
    for original in ranked:
        if len(pairs) == revisions:
            break
        if is_degenerate(original):
            continue
        revision = revise(prompt.constraint, original)
        if revision is not None and not is_degenerate(revision) and _visible_text(revision) != _visible_text(original):
            pairs.append(_pair(prompt, revision, original, "revised"))
    return (pairs, None) if pairs else ([], "constraint: no sample could be revised")


def build_pairs(prompt: InstructionPrompt, samples: list[str], *, rng: random.Random,
                max_pairs_per_prompt: int = 2, revise_when_none_pass: bool = True, revisions: int = 1,
                contrast_harmless: bool = False) -> list[LabelledPair]:
    """The labelled pairs of one prompt (rules in the module docstring)."""
    return build_pairs_explained(prompt, samples, rng=rng, max_pairs_per_prompt=max_pairs_per_prompt,
                                 revise_when_none_pass=revise_when_none_pass, revisions=revisions,
                                 contrast_harmless=contrast_harmless)[0]


def build_all_pairs(prompts: Iterable[InstructionPrompt], samples: Mapping[str, list[str]], *,
                    rng: random.Random, **options) -> tuple[list[LabelledPair], list[tuple[InstructionPrompt, str]]]:
    """(pairs, [(prompt, why no pair)]) over prompts in order; `samples` maps prompt id to its
    samples (a prompt missing from it counts as "no samples")."""
    pairs, without = [], []
    for prompt in prompts:
        got, why = build_pairs_explained(prompt, samples.get(prompt.id, []), rng=rng, **options)
        pairs += got
        if not got:
            without.append((prompt, why))
    return pairs, without


def pairs_report(pairs: Iterable[LabelledPair], prompts_without_pair: Iterable[tuple[InstructionPrompt, str]]) -> dict:
    """Counts: `pairs`, `prompts_with_pair`, `prompts_without_pair`, and `by_origin`,
    `by_principle`, `by_kind`, `by_family` (constraint pairs only) and `no_pair_reasons`
    (keys sorted); where there are contrast pairs, `contrast_per_prompt`: {"k": prompts with
    k contrast pairs}, so a prompt short of `revisions` acceptable samples shows."""
    pairs, without = list(pairs), list(prompts_without_pair)

    def count(keys) -> dict:
        return dict(sorted(Counter(keys).items()))

    out = {
        "pairs": len(pairs),
        "prompts_with_pair": len({p.prompt_id for p in pairs}),
        "prompts_without_pair": len(without),
        "by_origin": count(p.origin for p in pairs),
        "by_principle": count(p.reason for p in pairs),
        "by_kind": count(p.kind for p in pairs),
        "by_family": count(p.family for p in pairs if p.family is not None),
        "no_pair_reasons": count(why for _, why in without),
    }
    per_prompt = Counter(p.prompt_id for p in pairs if p.origin == "contrast")
    if per_prompt:  # only then: reports without contrast pairs keep their keys
        out["contrast_per_prompt"] = {str(k): n for k, n in sorted(Counter(per_prompt.values()).items())}
    return out


def to_jsonl_records(pairs: Iterable[LabelledPair]) -> list[dict]:
    """dpokit's conversational pair format plus `origin`, `principle` and `prompt_id`, fields
    that `dpokit.data.normalize` ignores."""
    return [{"prompt": [{"role": "user", "content": p.prompt}], "chosen": p.chosen, "rejected": p.rejected,
             "origin": p.origin, "principle": p.reason, "prompt_id": p.prompt_id} for p in pairs]

