"""Verifiable format constraints: the ground truth of the instruction-following case study.

A constraint is a family (what is checked), its parameters (N, a keyword, a phrase) and one
of several wordings of the same instruction, appended to a question. The checker of a family
reads only the response text, so a preference pair can be labelled with no model at all.

Shared definitions, used by every checker below:

* blank: a response with no non-whitespace character fails EVERY family.
* word: a maximal run of letters or digits (any script), where an apostrophe (' or ’) between
  two such runs joins them: `don't` is one word, `well-known` is two, `3.5` is two, `_` splits.
* same word: equal after `str.casefold()`, or equal once a possessive `'s` / `’s` is dropped
  from the response's word: the keyword "ocean" is in "the ocean's edge", not in "oceanic".

Wordings: each family has 4; wording 3 (the last) is held out: `wordings(family, "train")`
gives 0-2 and `wordings(family, "heldout")` gives 3, so a held-out evaluation asks in a
phrasing the policy never saw during training.

Budget: answers are sampled with at most `max_new_tokens` tokens, so a param is drawn only
from values that leave BOTH outcomes reachable within it (`param_choices`): a min_words N the
budget cannot hold, or a max_words N no full-length answer reaches, would fix the result
whatever the policy does.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction

from dpokit.config import ConfigError

# Params are drawn from these fixed lists (word counts: from ranges fixed by the budget, see
# `param_choices`), so a constraint set is reproducible from the code and the budget.
BULLETS_N: tuple[int, ...] = (2, 3, 4, 5)
KEYWORDS: tuple[str, ...] = ("ocean", "garden", "music", "winter", "river", "bridge",
                             "yellow", "window", "coffee", "planet", "honest", "simple")
# Forbidden words are common ones, so that obeying takes an actual effort.
FORBIDDEN_WORDS: tuple[str, ...] = ("the", "and", "very", "really", "just", "good",
                                    "thing", "also", "because", "think")
END_PHRASES: tuple[str, ...] = ("Is there anything else I can help with?", "Hope this helps.",
                                "That is all.", "Let me know if you have other questions.",
                                "Thank you for asking.")
START_WORDS: tuple[str, ...] = ("Certainly", "Sure", "Well", "Honestly", "Yes", "Absolutely", "First")

# Comma characters: ASCII plus the full-width, small and ideographic ones and the Arabic
# comma, so a policy cannot satisfy "no commas" by switching to a look-alike.
COMMAS = ",\uff0c\ufe50\ufe51\u3001\u060c"

WORDINGS: dict[str, tuple[str, ...]] = {
    "lowercase": ("Answer in lowercase letters only, no capitals.",
                  "Write your whole reply in lowercase; do not use any capital letters.",
                  "Use only lowercase letters in your answer.",
                  "Your entire response must be in lowercase, with no uppercase letters at all."),
    "capitals": ("Answer in capital letters only.",
                 "Write your whole reply in uppercase letters.",
                 "Use all caps for your entire answer.",
                 "Your entire response must be in uppercase, with no lowercase letters at all."),
    "max_words": ("Answer in fewer than {n} words.",
                  "Keep your reply under {n} words.",
                  "Use less than {n} words in your answer.",
                  "Your response must be shorter than {n} words."),
    "min_words": ("Answer in at least {n} words.",
                  "Write a reply of {n} words or more.",
                  "Use no fewer than {n} words in your answer.",
                  "Your response must contain at least {n} words."),
    "keyword": ('Include the word "{keyword}" in your answer.',
                'Make sure your reply uses the word "{keyword}".',
                'Mention the word "{keyword}" somewhere in your answer.',
                'Your response must contain the word "{keyword}".'),
    "forbidden_word": ('Do not use the word "{word}" in your answer.',
                       'Avoid the word "{word}" entirely in your reply.',
                       'Answer without using the word "{word}".',
                       'Your response must not contain the word "{word}".'),
    "no_commas": ("Do not use any commas in your answer.",
                  "Write your reply without a single comma.",
                  "Avoid commas entirely in your answer.",
                  "Your response must not contain any commas."),
    "end_phrase": ('Finish your answer with the exact phrase "{phrase}", with nothing after it.',
                   'End your reply with exactly these words, nothing after them: "{phrase}"',
                   'Close your answer with the phrase "{phrase}" and nothing after it.',
                   ('Your response must end with the exact phrase "{phrase}" and no other words '
                   'should follow it.')),
    "start_word": ('Begin your answer with the word "{word}".',
                   'Start your reply with "{word}".',
                   'The first word of your answer must be "{word}".',
                   'Your response must begin with the word "{word}".'),
    "bullets": ('Answer with exactly {n} bullet points, each line starting with "- ".',
                'Format your reply as exactly {n} markdown bullet points ("- " or "* ").',
                'Use exactly {n} markdown bullet points ("- ") in your answer.',
                "Your response must contain exactly {n} markdown bullet points, no more and no fewer."),
    "quotes": ('Wrap your entire answer in double quotation marks (").',
               "Put your whole reply inside double quotes.",
               'Enclose the full answer in double quotes, starting and ending with ".',
               'Your response must begin and end with a double quote character (").'),
    "json": ("Answer with valid JSON only, no other text.",
             "Format your whole reply as a JSON object, with nothing before or after it.",
             "Respond only in JSON: an object or an array, with no markdown fences.",
             "Your entire response must be valid JSON (an object or an array) and nothing else."),
}
FAMILIES: tuple[str, ...] = tuple(WORDINGS)
SPLITS = ("train", "heldout")

# The param each family draws, and from where (families absent here take no params; the
# word counts' lists depend on the budget: `param_choices`).
_PARAM_CHOICES: dict[str, tuple[str, tuple]] = {
    "max_words": ("n", ()), "min_words": ("n", ()), "bullets": ("n", BULLETS_N),
    "keyword": ("keyword", KEYWORDS), "forbidden_word": ("word", FORBIDDEN_WORDS),
    "end_phrase": ("phrase", END_PHRASES), "start_word": ("word", START_WORDS),
}

WORD_RE = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
# A bullet line: optional leading spaces or tabs, "-" or "*", at least one space, then text.
BULLET_RE = re.compile(r"^[ \t]*[-*][ \t]+\S", re.MULTILINE)
SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Constraint:
    """One instruction: `text` is what is appended to a question. `params` holds plain JSON
    values; it is left out of the hash (a dict cannot be hashed, and `text` differs whenever
    the params do)."""

    family: str
    params: dict = field(hash=False)
    wording_id: int
    text: str

    def to_dict(self) -> dict:
        return {"family": self.family, "params": dict(self.params), "wording_id": self.wording_id,
                "text": self.text}

    @classmethod
    def from_dict(cls, data: dict) -> Constraint:
        """Rebuilds (and re-validates) a constraint written by `to_dict`."""
        return make_constraint(data["family"], data.get("params") or {}, data["wording_id"])


def _family(family: str) -> str:
    if family not in WORDINGS:
        raise ConfigError(f"unknown constraint family {family!r}; valid: {', '.join(FAMILIES)}")
    return family


def wordings(family: str, split: str) -> tuple[tuple[int, str], ...]:
    """(wording_id, template) pairs of `split`: "train" = all but the last wording,
    "heldout" = the last one only (never used in train)."""
    all_ = tuple(enumerate(WORDINGS[_family(family)]))
    if split == "train":
        return all_[:-1]
    if split == "heldout":
        return all_[-1:]
    raise ConfigError(f"unknown wording split {split!r}; valid: {', '.join(SPLITS)}")


def make_constraint(family: str, params: dict, wording_id: int) -> Constraint:
    """A constraint with its text filled in; ConfigError on a family, param or wording that
    the checkers do not know (a constraint read back from a file must mean what it says)."""
    templates = WORDINGS[_family(family)]
    if not isinstance(wording_id, int) or not 0 <= wording_id < len(templates):
        raise ConfigError(f"{family}: wording_id must be in 0..{len(templates) - 1}, got {wording_id!r}")
    _check_params(family, params)
    return Constraint(family, dict(params), wording_id, templates[wording_id].format(**params))


def _check_params(family: str, params: dict) -> None:
    """Any value the checker can honour, not only the sampled ones: N an int (at least 2 for
    max_words, whose revision keeps N-1 >= 1 words), a keyword a single word (a checker
    comparing word by word could never find "ice cream"), a phrase non-blank and trimmed."""
    name, _ = _PARAM_CHOICES.get(family, (None, ()))
    expected = {name} if name else set()
    if set(params) != expected:
        raise ConfigError(f"{family}: params must have keys {sorted(expected)}, got {sorted(params)}")
    if name is None:
        return
    value = params[name]
    if name == "n":
        low = 2 if family == "max_words" else 1
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        need = f"an integer >= {low}"
    elif name == "phrase":
        ok, need = isinstance(value, str) and bool(value.strip()) and value == value.strip(), "a trimmed non-blank string"
    else:
        ok, need = isinstance(value, str) and WORD_RE.fullmatch(value) is not None, "a single word"
    if not ok:
        raise ConfigError(f"{family}: {name} must be {need}, got {value!r}")


# ------------------------------------------------------------------------------------------
# What a token budget can hold. The answers judged against a constraint are sampled with at
# most `max_new_tokens` new tokens (the study's pairs.max_new_tokens: train samples, held-out, RLOO
# rollouts, online rounds and Best-of-N alike), so every drawn param must leave both outcomes
# reachable.

# Words per token of English prose: the reference's answers cut at 48 tokens held 32.8 words
# on average (median 35, 10th percentile 20; 671 cut samples of the study's first full run).
WORDS_PER_TOKEN = Fraction(7, 10)
# min_words N in [0.25, 0.6] x the word budget W: at most 0.6 W, so an answer that runs to the
# cap passes (the 10th percentile of the cut answers above is 0.6 W); at least 0.25 W, so a
# one-sentence answer (the usual short answer) fails and the model must choose to go long.
MIN_WORDS_SHARE = (Fraction(1, 4), Fraction(3, 5))
# max_words N ("fewer than N") in [0.15, 0.45] x W: at least 0.15 W, so a short complete
# sentence fits; at most 0.45 W, so an answer that runs to the cap fails and the model must
# choose to stop early.
MAX_WORDS_SHARE = (Fraction(3, 20), Fraction(9, 20))
# A bullet line costs about 4 words of budget: the "- " marker and the line break, plus a
# three-word item at least.
WORDS_PER_BULLET = 4
# An end phrase may take at most half the word budget: the other half is the answer it ends.
END_PHRASE_SHARE = Fraction(1, 2)
# Both word-count families need N >= 2: "fewer than 1 word" cannot pass, "at least 1 word"
# cannot fail (a blank answer aside).
MIN_COUNT_N = 2


def word_budget(max_new_tokens: int) -> int:
    """W = floor(WORDS_PER_TOKEN x max_new_tokens): the words a full-length answer holds."""
    return math.floor(WORDS_PER_TOKEN * max_new_tokens)


def _share_range(w: int, share: tuple[Fraction, Fraction]) -> tuple[int, ...]:
    lo, hi = max(MIN_COUNT_N, math.ceil(share[0] * w)), math.floor(share[1] * w)
    return tuple(range(lo, hi + 1))


def _budget_choices(family: str, max_new_tokens: int) -> tuple:
    """`param_choices` without the check (empty where the budget holds none)."""
    w = word_budget(max_new_tokens)
    if family == "min_words":
        return _share_range(w, MIN_WORDS_SHARE)
    if family == "max_words":
        return _share_range(w, MAX_WORDS_SHARE)
    if family == "bullets":
        return tuple(n for n in BULLETS_N if n * WORDS_PER_BULLET <= w)
    if family == "end_phrase":
        return tuple(p for p in END_PHRASES if len(words(p)) <= END_PHRASE_SHARE * w)
    return _PARAM_CHOICES.get(family, (None, ()))[1]


def _min_budget() -> int:
    """The smallest max_new_tokens at which every family has a param to draw (found once, at
    import; above it every list only grows, which the tests check)."""
    parametrised = [f for f in WORDINGS if f in _PARAM_CHOICES]
    return next(t for t in range(1, 1000) if all(_budget_choices(f, t) for f in parametrised))


def param_choices(family: str, max_new_tokens: int) -> tuple:
    """The values `family`'s param is drawn from when answers get `max_new_tokens` tokens, W =
    `word_budget`: min_words every N in [max(2, ceil(0.25 W)), floor(0.6 W)]; max_words every N
    in [max(2, ceil(0.15 W)), floor(0.45 W)]; bullets the N of BULLETS_N with 4 N <= W; end_phrase
    the phrases of at most W / 2 words; the other families their fixed lists. ConfigError
    naming max_new_tokens and its valid range below MIN_BUDGET_TOKENS."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < MIN_BUDGET_TOKENS:
        raise ConfigError(f"max_new_tokens must be an integer ≥ {MIN_BUDGET_TOKENS} (the answers' token budget: "
                          f"below it some constraint could never pass or never fail), got {max_new_tokens!r}")
    return _budget_choices(_family(family), max_new_tokens)


def sample_constraint(family: str, rng: random.Random, split: str, *, max_new_tokens: int) -> Constraint:
    """Draws the family's param (from `param_choices` at the answers' token budget), then a
    wording of `split`; the same `random.Random` state and budget give the same constraint."""
    name, _ = _PARAM_CHOICES.get(_family(family), (None, ()))
    params = {name: rng.choice(param_choices(family, max_new_tokens))} if name else {}
    wording_id, _ = rng.choice(wordings(family, split))
    return make_constraint(family, params, wording_id)


# ------------------------------------------------------------------------------------------
# Checkers: one pure function per family; `check` rejects blank responses before any of them.


def words(text: str) -> list[str]:
    """The words of `text` (see the module docstring for the rule)."""
    return WORD_RE.findall(text)


def same_word(word: str, target: str) -> bool:
    """`word` (from a response) is `target`: casefold-equal, possibly with a possessive 's."""
    w, t = word.casefold(), target.casefold()
    return w == t or (w[-2:] in ("'s", "\u2019s") and w[:-2] == t)


def is_lowercase(text: str) -> bool:
    """No uppercase letter, and at least one lowercase one (str.islower)."""
    return text.islower()


def is_capitals(text: str) -> bool:
    """No lowercase letter, and at least one uppercase one (str.isupper)."""
    return text.isupper()


def has_fewer_words(text: str, n: int) -> bool:
    """At least 1 and fewer than n words (a response of punctuation only answers nothing)."""
    return 1 <= len(words(text)) < n


def has_min_words(text: str, n: int) -> bool:
    """At least n words."""
    return len(words(text)) >= n


def contains_word(text: str, keyword: str) -> bool:
    """Some word of the response is the keyword (whole word, case-insensitive, possessive ok):
    a keyword inside a longer word ("oceanic") does not count."""
    return any(same_word(w, keyword) for w in words(text))


def avoids_word(text: str, word: str) -> bool:
    """No word of the response is `word` (the same rule as `contains_word`)."""
    return not contains_word(text, word)


def has_no_commas(text: str) -> bool:
    """None of the comma characters in COMMAS appears anywhere."""
    return not any(c in COMMAS for c in text)


def ends_with_phrase(text: str, phrase: str) -> bool:
    """After trailing whitespace is stripped, the text ends with the exact phrase: case and
    punctuation as given (each phrase carries its own final mark), nothing after it."""
    return text.rstrip().endswith(phrase)


def starts_with_word(text: str, word: str) -> bool:
    """The first word starts at the first non-whitespace character (no leading quote, '*' or
    '#') and is `word`, case-insensitive; "Sure," and "sure!" start with "Sure", "Surely" not."""
    first = WORD_RE.match(text.lstrip())
    return first is not None and first.group().casefold() == word.casefold()


def count_bullets(text: str) -> int:
    """Lines whose first non-space characters are "- " or "* " followed by some text.
    Numbered items, "---" and "*emphasis*" are not bullets."""
    return len(BULLET_RE.findall(text))


def has_bullets(text: str, n: int) -> bool:
    """Exactly n bullet lines; other lines (an intro, a closing line) are allowed."""
    return count_bullets(text) == n


def is_quoted(text: str) -> bool:
    """The stripped text starts and ends with a straight double quote (U+0022; curly quotes
    do not count) with at least one non-whitespace character between them."""
    s = text.strip()
    return len(s) >= 3 and s[0] == '"' and s[-1] == '"' and bool(s[1:-1].strip())


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def is_json(text: str) -> bool:
    """`json.loads` of the stripped text gives an object or an array. Rejected: a markdown
    fence (other text around the JSON), NaN/Infinity (Python extensions, not JSON), and a bare
    scalar ("42", '"yes"'): valid JSON, but no structured answer, and a quoted string would
    make this family the same as `quotes`."""
    try:
        value = json.loads(text.strip(), parse_constant=_no_constants)
    except ValueError:  # json.JSONDecodeError is a ValueError
        return False
    return isinstance(value, (dict, list))


CHECKERS = {
    "lowercase": is_lowercase, "capitals": is_capitals, "max_words": has_fewer_words,
    "min_words": has_min_words, "keyword": contains_word, "forbidden_word": avoids_word,
    "no_commas": has_no_commas, "end_phrase": ends_with_phrase, "start_word": starts_with_word,
    "bullets": has_bullets, "quotes": is_quoted, "json": is_json,
}


def check(constraint: Constraint, response: str) -> bool:
    """True when `response` obeys `constraint`; a blank response obeys nothing."""
    if not response.strip():
        return False
    return CHECKERS[_family(constraint.family)](response, **constraint.params)


# ------------------------------------------------------------------------------------------
# Rule revisions (critique -> revision, Bai et al. 2022, with rules in place of a model)


def _truncate_words(text: str, n: int) -> str | None:
    """The text up to the end of its (n-1)-th word (the punctuation in between kept)."""
    spans = list(WORD_RE.finditer(text))[: n - 1]
    return text[: spans[-1].end()] if spans else None


def _delete_word(text: str, word: str) -> str:
    """Every whole-word occurrence removed; the gaps closed (spaces collapsed, no space left
    before punctuation). Whitespace is never removed entirely, so no two words can merge."""
    out = WORD_RE.sub(lambda m: "" if same_word(m.group(), word) else m.group(), text)
    out = re.sub(r"[ \t]{2,}", " ", out)
    out = re.sub(r"[ \t]+([,.;:!?])", r"\1", out)
    return "\n".join(line.strip() for line in out.splitlines())


def _append_keyword(text: str, keyword: str) -> str:
    body = text.rstrip()
    body += "" if body[-1] in ".!?" else "."
    return f"{body} The key word here is {keyword}."


def _make_bullets(text: str, n: int) -> str | None:
    """Existing bullet markers dropped, the text split into sentences (after . ! ? and
    whitespace; abbreviations split too) and grouped, in order, into n bullets; None when
    there are fewer than n sentences (a bullet would be empty)."""
    unmarked = re.sub(r"^[ \t]*[-*][ \t]+", "", text, flags=re.MULTILINE)
    sentences = [s for s in SENTENCE_END_RE.split(" ".join(unmarked.split())) if s]
    if len(sentences) < n:
        return None
    size, extra = divmod(len(sentences), n)
    groups, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        groups.append(" ".join(sentences[start:end]))
        start = end
    return "\n".join(f"- {g}" for g in groups)


def _quote(text: str) -> str | None:
    inner = text.strip().strip('"\u201c\u201d').strip()
    return f'"{inner}"' if inner else None


REVISERS = {
    "lowercase": lambda t: t.lower(),
    "capitals": lambda t: t.upper(),
    "max_words": _truncate_words,
    "min_words": lambda t, n: None,  # no rule can add words that say something
    "keyword": _append_keyword,
    "forbidden_word": _delete_word,
    "no_commas": lambda t: "".join(c for c in t if c not in COMMAS),
    "end_phrase": lambda t, phrase: f"{t.rstrip()} {phrase}",
    "start_word": lambda t, word: f"{word}, {t.lstrip()}",
    "bullets": _make_bullets,
    "quotes": _quote,
    "json": lambda t: json.dumps({"answer": t.strip()}, ensure_ascii=False),
}


def revise(constraint: Constraint, response: str) -> str | None:
    """A rule revision of `response` that obeys `constraint`, or None where the rule has none
    (blank response, min_words, bullets with too few sentences, lowercase of a text with no
    letter that has a case, a deletion that leaves nothing...). A response that already
    obeys is returned unchanged: no critique, no revision (appending an end phrase twice
    would be wrong). The result is checked again, so a revision never breaks the contract."""
    if not response.strip():
        return None
    if check(constraint, response):
        return response
    revised = REVISERS[constraint.family](response, **constraint.params)
    return revised if revised is not None and check(constraint, revised) else None


def describe(*, max_new_tokens: int) -> str:
    """A markdown table: family, wordings (train / held out), the first train wording with the
    first param drawable at the budget."""
    rows = ["| family | wordings | train | held out | example |", "|---|---|---|---|---|"]
    for family in FAMILIES:
        name, _ = _PARAM_CHOICES.get(family, (None, ()))
        example = make_constraint(family, {name: param_choices(family, max_new_tokens)[0]} if name else {}, 0)
        rows.append(f"| {family} | {len(WORDINGS[family])} | {len(wordings(family, 'train'))} | "
                    f"{len(wordings(family, 'heldout'))} | {example.text} |")
    return "\n".join(rows)


# Set last: `_min_budget` needs the word rule defined above.
MIN_BUDGET_TOKENS: int = _min_budget()
