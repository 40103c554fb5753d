"""The benchmark's data: deterministic chat-style preference pairs, written here (no downloads).

Every engine gets the same pairs (same seed → same text). Lengths are drawn per pair around
target means (default: templated prompt ~60 tokens, chosen ~60, rejected ~43 with the
SmolLM2 tokenizer, each uniform in [0.5, 1.5] × its mean), then grown sentence by sentence
until the tokenized field reaches its draw, so lengths vary the way real chat data does:

    prompt   = chat template (system + user turn + assistant header) around a user request
    chosen   = a concrete, helpful answer          (ends with <|im_end|>)
    rejected = a vaguer, dismissive answer          (ends with <|im_end|>)

`synthetic_token_pairs` makes pairs of exact token lengths (random ids) for the scaling table,
where content does not matter and exact lengths do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TOPICS = [
    ("sourdough bread", "get a more open crumb", "the starter's activity", "the bulk ferment"),
    ("my vegetable garden", "keep tomatoes from splitting", "the watering schedule", "mulching"),
    ("a small Python project", "make the test suite faster", "the slowest fixtures", "profiling"),
    ("running", "finish a half marathon", "the weekly long run", "easy-paced mileage"),
    ("learning Spanish", "hold a simple conversation", "daily listening practice", "speaking drills"),
    ("my home budget", "save for a holiday", "the monthly subscriptions", "automatic transfers"),
    ("a used bicycle", "stop the chain from skipping", "the cassette wear", "cable tension"),
    ("watercolour painting", "avoid muddy colours", "the paper quality", "layering washes"),
    ("a job interview", "answer behavioural questions", "a few concrete stories", "mock interviews"),
    ("my sleep", "wake up less tired", "the evening routine", "a fixed wake-up time"),
    ("a birthday party", "keep ten children busy", "the games schedule", "a quiet corner"),
    ("home coffee", "brew less bitter espresso", "the grind size", "the shot timing"),
    ("a reading habit", "finish more books", "the phone at night", "a short daily slot"),
    ("an old laptop", "make it boot faster", "the startup programs", "a disk cleanup"),
    ("houseplants", "stop the leaves from yellowing", "the drainage", "less frequent watering"),
    ("guitar practice", "play barre chords cleanly", "the thumb position", "slow repetitions"),
]

PROMPT_PARTS = [
    "I have been working on {s} for a few weeks and I want to {g}.",
    "My last attempt did not go well, and I am not sure what I did wrong.",
    "I can spend about {n} hours a week on it, mostly on weekends.",
    "Could you explain the main steps, and the mistakes beginners usually make?",
    "A friend told me to focus on {a}, but I do not really understand why.",
    "I would prefer advice that does not need expensive equipment.",
    "Please keep it practical; I learn best from concrete examples.",
    "So far I have read a couple of short guides, and they disagree with each other.",
    "What would you change first if you were in my place?",
]

CHOSEN_PARTS = [
    "Start with {a}, because it affects the result more than anything else.",
    "A common mistake is to rush {b}; give it at least {n} minutes before judging it.",
    "Change one thing at a time and write down what you tried, so you can see what helped.",
    "If you can only do one thing this week, make it {b}.",
    "Expect the first few tries to be uneven; that is normal and it improves quickly.",
    "It also helps to check your progress every {n} days rather than every day.",
    "For {s}, small and consistent habits beat occasional big efforts.",
    "When something goes wrong, look at {a} first and only then at the rest.",
    "A cheap notebook and a timer are enough; you do not need special tools.",
]

REJECTED_PARTS = [
    "Just keep trying until it works.",
    "There are lots of guides about {s} online.",
    "Honestly it depends, so it is hard to say.",
    "Some people are simply better at this than others.",
    "Maybe ask someone who knows more about {s}.",
    "I would not worry about it too much.",
    "You could try something different next time.",
]


@dataclass(frozen=True)
class LengthTargets:
    prompt: float = 60.0  # templated prompt tokens (system + user turn + assistant header)
    chosen: float = 60.0  # completion tokens, EOS included
    rejected: float = 43.0


def _fill(template: str, topic, rng: random.Random) -> str:
    s, g, a, b = topic
    return template.format(s=s, g=g, a=a, b=b, n=rng.choice([2, 3, 4, 5, 10, 15, 20]))


def _grow(parts, topic, rng, target: int, count) -> str:
    """Distinct sentences from `parts`, in random order, while each one brings count(text)
    closer to `target` (at least one sentence)."""
    order = rng.sample(parts, len(parts))
    text = _fill(order[0], topic, rng)
    for template in order[1:]:
        longer = text + " " + _fill(template, topic, rng)
        if abs(count(longer) - target) >= abs(count(text) - target):
            break
        text = longer
    return text


def _counters(tokenizer):
    """Token counts of a user turn (templated prompt) and of an assistant turn (completion),
    from the tokenizer and its chat template, measured once on a probe."""
    from dpokit.data.records import PreferencePair
    from dpokit.data.tokenize import encode_chat

    def raw(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    probe = "Hello there."
    pair = PreferencePair([_msg("user", probe)], [_msg("assistant", probe)], [_msg("assistant", probe)], "probe")
    prompt, chosen, _ = encode_chat(pair, tokenizer)
    p_over, c_over = len(prompt) - raw(probe), len(chosen) - raw(probe)
    return (lambda t: raw(t) + p_over), (lambda t: raw(t) + c_over)


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def build_records(n: int, tokenizer, targets: LengthTargets = LengthTargets(), seed: int = 0) -> list[dict]:
    """`n` chat records {"prompt": [user], "chosen": [assistant], "rejected": [assistant]},
    deterministic for a given (n, tokenizer, targets, seed)."""
    count_prompt, count_completion = _counters(tokenizer)
    rng = random.Random(seed)
    records = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        draw = {k: max(1, round(getattr(targets, k) * rng.uniform(0.5, 1.5))) for k in ("prompt", "chosen", "rejected")}
        user = _grow(PROMPT_PARTS, topic, rng, draw["prompt"], count_prompt)
        chosen = _grow(CHOSEN_PARTS, topic, rng, draw["chosen"], count_completion)
        rejected = _grow(REJECTED_PARTS, topic, rng, draw["rejected"], count_completion)
        records.append(
            {"prompt": [_msg("user", user)], "chosen": [_msg("assistant", chosen)], "rejected": [_msg("assistant", rejected)]}
        )
    return records


def tokenize_records(records: list[dict], tokenizer, max_length: int = 1024, max_prompt_length: int = 512):
    """The records as dpokit TokenizedPairs (dpokit's own chat tokenization, no truncation at
    the default limits)."""
    from dpokit.data.records import PreferencePair
    from dpokit.data.tokenize import TokenizeSettings, tokenize_pairs

    pairs = [PreferencePair(r["prompt"], r["chosen"], r["rejected"], f"bench:{i}") for i, r in enumerate(records)]
    items, report = tokenize_pairs(pairs, tokenizer, TokenizeSettings(max_length, max_prompt_length))
    if len(items) != len(pairs):
        raise RuntimeError(f"benchmark data lost pairs in tokenization: {report.format()}")
    return items


def length_stats(items) -> dict:
    """Mean token lengths and total tokens of tokenized pairs (prompt counted once per pair)."""
    n = len(items)
    p = sum(len(x.prompt_ids) for x in items)
    c = sum(len(x.chosen_ids) for x in items)
    r = sum(len(x.rejected_ids) for x in items)
    return {
        "pairs": n,
        "mean_prompt": p / n,
        "mean_chosen": c / n,
        "mean_rejected": r / n,
        "tokens_per_pair": (p + c + r) / n,  # prompt once: what a prefix-sharing engine must compute
        "padded_tokens_per_pair": (2 * p + c + r) / n,  # prompt twice: [chosen; rejected] rows
    }


def synthetic_token_pairs(n: int, prompt_len: int, chosen_len: int, rejected_len: int, *, eos: int, low: int = 1000, high: int = 20000, seed: int = 0):
    """`n` TokenizedPairs of exact lengths with random ids in [low, high) and EOS last."""
    from dpokit.data.collate import TokenizedPair

    rng = random.Random(seed)

    def ids(k: int, end: bool) -> list[int]:
        body = [rng.randrange(low, high) for _ in range(k - (1 if end else 0))]
        return body + ([eos] if end else [])

    return [TokenizedPair(ids(prompt_len, False), ids(chosen_len, True), ids(rejected_len, True), i) for i in range(n)]
