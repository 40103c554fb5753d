"""The prompt set of case study 2: constraint, harmful and harmless prompts, with held-out splits.

`build_prompt_set` turns question and harmful-prompt lists into `InstructionPrompt`s. The rules:

* Questions are split by `sources.split_questions` (SHA-256 of seed + text): a held-out question
  never appears in any train prompt. Within each side, questions are ordered by the SHA-256 of
  seed + text, so the set depends on (seed, inputs) only, not on the input order.
* train: the first `n_train` train questions, each with one constraint. Families are cycled
  (question i gets `families[i % len(families)]`), so family counts differ by at most 1; the
  param and a TRAIN wording (0-2) are drawn by a `random.Random` seeded from seed + question,
  the param among those the answers' token budget `max_new_tokens` leaves passable and
  failable (`constraints.param_choices`).
* heldout_question: the first `n_heldout` held-out questions, families cycled, train wordings.
* heldout_wording: the first `n_heldout` train constraint prompts asked again with the HELD-OUT
  wording (3): same question, family and params, a phrasing never seen in training.
* harmful: round(harmful_fraction * n_train) harmful prompts in train and
  round(harmful_fraction * n_heldout) in heldout_question, or exactly `n_heldout_safety` there
  when it is > 0 (harmful prompts are split by hashing too); kind "harmful", no constraint.
* harmless: as many questions, with no constraint, as there are harmful prompts in the same
  split, taken from the END of that split's question order (distinct from the constraint
  prompts' questions while the pool allows; always, with `n_heldout_safety` > 0): they measure
  over-refusal in the held-out split and teach "answer, do not refuse" (principle 2 of `pairs`)
  in train. `n_heldout_safety` sizes the held-out safety measurement apart from the constraint
  prompts: with 9 harmless prompts x 2 samples, one refusal is already 5.6 points.

Too few questions or harmful prompts for the sizes asked is a ConfigError (the set never
shrinks silently), and so is a repeated question (case and whitespace aside).

Ids: "<kind>-" + the first 16 hex digits of the SHA-256 of (split, kind, question,
constraint): the same prompt gets the same id on every run, machine and seed.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dpokit.config import ConfigError
from dpokit.instructions.constraints import (
    FAMILIES,
    Constraint,
    make_constraint,
    sample_constraint,
    wordings,
)
from dpokit.instructions.sources import split_questions, text_key

SPLITS = ("train", "heldout_question", "heldout_wording")
KINDS = ("constraint", "harmful", "harmless")


@dataclass(frozen=True)
class InstructionPrompt:
    """One prompt of the study. `text` is what the model is asked: question + " " +
    constraint.text for kind "constraint", the question alone otherwise."""

    id: str
    question: str
    topic: str
    kind: str
    constraint: Constraint | None
    text: str
    split: str

    def to_dict(self) -> dict:
        return {"id": self.id, "question": self.question, "topic": self.topic, "kind": self.kind,
                "constraint": self.constraint.to_dict() if self.constraint else None,
                "text": self.text, "split": self.split}

    @classmethod
    def from_dict(cls, data: dict) -> InstructionPrompt:
        """Rebuilds a prompt written by `to_dict` (the constraint is re-validated, the id and
        text recomputed: a file cannot make a prompt mean something else than it says)."""
        constraint = Constraint.from_dict(data["constraint"]) if data.get("constraint") else None
        return make_prompt(data["question"], data.get("topic", ""), data["kind"], constraint, data["split"])


def prompt_id(split: str, kind: str, question: str, constraint: Constraint | None) -> str:
    """The stable id (see the module docstring)."""
    blob = json.dumps([split, kind, question, constraint.to_dict() if constraint else None], sort_keys=True)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def make_prompt(question: str, topic: str, kind: str, constraint: Constraint | None, split: str) -> InstructionPrompt:
    """An `InstructionPrompt` with its id and text; ConfigError on an unknown kind or split, or
    a constraint present exactly when kind is not "constraint"."""
    if kind not in KINDS or split not in SPLITS:
        raise ConfigError(f"kind must be one of {KINDS} and split one of {SPLITS}, got {kind!r}, {split!r}")
    if (kind == "constraint") != (constraint is not None):
        raise ConfigError(f"kind {kind!r}: a constraint is required for 'constraint' prompts only")
    text = f"{question} {constraint.text}" if constraint else question
    return InstructionPrompt(prompt_id(split, kind, question, constraint), question, topic, kind,
                             constraint, text, split)


def as_messages(prompt: InstructionPrompt) -> list[dict]:
    """The chat form: one user message."""
    return [{"role": "user", "content": prompt.text}]


def _items(values: Iterable, what: str) -> list[tuple[str, str]]:
    """(text, topic) of each input: a str, or an object with `.text` and a `.topic`, `.category`
    or `.dataset` (sources.Question / sources.HarmfulPrompt). ConfigError on a blank or repeated
    text (case and whitespace aside)."""
    out, seen = [], set()
    for value in values:
        text = value if isinstance(value, str) else value.text
        topic = "" if isinstance(value, str) else (getattr(value, "topic", None) or getattr(value, "category", None)
                                                   or getattr(value, "dataset", None) or "")
        if not text.strip():
            raise ConfigError(f"{what}: blank text")
        if text_key(text) in seen:
            raise ConfigError(f"{what}: repeated text {text!r}")
        seen.add(text_key(text))
        out.append((text, topic))
    return out


def _digest(seed: int, salt: str, text: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{salt}\x00{text_key(text)}".encode()).digest()[:8], "big")


def _ordered(items: list[tuple[str, str]], seed: int) -> list[tuple[str, str]]:
    """Items sorted by the SHA-256 of seed + text: independent of the input order."""
    return sorted(items, key=lambda it: _digest(seed, "order", it[0]))


def _take(pool: list, n: int, what: str, *, from_end: bool = False) -> list:
    if n > len(pool):
        raise ConfigError(f"{what}: {n} needed but only {len(pool)} available")
    return pool[len(pool) - n:] if from_end else pool[:n]


def _constraint_prompts(questions: list[tuple[str, str]], families: Sequence[str], seed: int,
                        split: str, max_new_tokens: int) -> list[InstructionPrompt]:
    """One constraint per question: family cycled, param (for the token budget) and train
    wording from an rng seeded by seed + question."""
    out = []
    for i, (text, topic) in enumerate(questions):
        rng = random.Random(_digest(seed, "constraint", text))
        constraint = sample_constraint(families[i % len(families)], rng, "train", max_new_tokens=max_new_tokens)
        out.append(make_prompt(text, topic, "constraint", constraint, split))
    return out


def _reworded(prompt: InstructionPrompt) -> InstructionPrompt:
    """The same question, family and params with the held-out wording."""
    c = prompt.constraint
    (heldout_id, _), = wordings(c.family, "heldout")
    return make_prompt(prompt.question, prompt.topic, "constraint",
                       make_constraint(c.family, c.params, heldout_id), "heldout_wording")


def _check_sizes(n_train: int, n_heldout: int, families: Sequence[str], harmful_fraction: float) -> None:
    for name, n in (("n_train", n_train), ("n_heldout", n_heldout)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ConfigError(f"{name} must be an integer >= 0, got {n!r}")
    if n_heldout > n_train:
        raise ConfigError(f"n_heldout ({n_heldout}) > n_train ({n_train}): heldout_wording re-asks "
                          "n_heldout train prompts")
    if not families or len(set(families)) != len(families) or not set(families) <= set(FAMILIES):
        raise ConfigError(f"families must be distinct names from {FAMILIES}, got {tuple(families)}")
    if not isinstance(harmful_fraction, (int, float)) or not harmful_fraction >= 0:
        raise ConfigError(f"harmful_fraction must be >= 0, got {harmful_fraction!r}")


def _check_safety(n: int, n_heldout: int, held_questions: int, held_harmful: int) -> None:
    """n held-out harmful prompts and n held-out harmless questions that are not among the
    n_heldout constraint questions, or a one-line ConfigError saying what there is."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ConfigError(f"prompts.n_heldout_safety must be an integer >= 0, got {n!r}")
    if n == 0:  # the fraction's rule, checked by _take as before
        return
    most = min(held_harmful, held_questions - n_heldout)
    if n > most:
        raise ConfigError(f"prompts.n_heldout_safety={n}: at most {max(most, 0)} here ({held_harmful} held-out harmful "
                          f"prompts; {held_questions} held-out questions less the n_heldout={n_heldout} constraint ones)")


def build_prompt_set(questions: Iterable, harmful: Iterable, *, n_train: int, n_heldout: int, seed: int,
                     max_new_tokens: int, families: Sequence[str] = FAMILIES, harmful_fraction: float,
                     heldout_fraction: float = 0.2, n_heldout_safety: int = 0) -> list[InstructionPrompt]:
    """The prompt set (rules in the module docstring), in the order: train constraint, harmful,
    harmless; heldout_question constraint; heldout_wording; heldout_question harmful, harmless.
    `heldout_fraction` = the share of questions (and of harmful prompts) held out by hashing;
    `max_new_tokens` = the token budget every answer to these prompts is sampled with;
    `n_heldout_safety` > 0 = that many held-out harmful and harmless prompts (0 = the fraction)."""
    _check_sizes(n_train, n_heldout, families, harmful_fraction)
    train_q, held_q = split_questions(_items(questions, "questions"), heldout_fraction, seed, key=lambda it: it[0])
    train_h, held_h = split_questions(_items(harmful, "harmful prompts"), heldout_fraction, seed, key=lambda it: it[0])
    train_q, held_q, train_h, held_h = (_ordered(x, seed) for x in (train_q, held_q, train_h, held_h))
    n_harm_train, n_harm_held = (int(harmful_fraction * n + 0.5) for n in (n_train, n_heldout))
    _check_safety(n_heldout_safety, n_heldout, len(held_q), len(held_h))
    if n_heldout_safety:
        n_harm_held = n_heldout_safety

    train = _constraint_prompts(_take(train_q, n_train, "train questions"), families, seed, "train", max_new_tokens)
    heldout = _constraint_prompts(_take(held_q, n_heldout, "held-out questions"), families, seed, "heldout_question",
                                  max_new_tokens)
    return (train + _unconstrained(train_h, train_q, n_harm_train, "train")
            + heldout + [_reworded(p) for p in train[:n_heldout]]
            + _unconstrained(held_h, held_q, n_harm_held, "heldout_question"))


def _unconstrained(harmful: list, questions: list, n: int, split: str) -> list[InstructionPrompt]:
    """n harmful prompts (from the front of their order) and n harmless questions (from the
    END of the question order, away from the constraint prompts' questions)."""
    return ([make_prompt(t, topic, "harmful", None, split) for t, topic in _take(harmful, n, f"{split} harmful prompts")]
            + [make_prompt(t, topic, "harmless", None, split)
               for t, topic in _take(questions, n, f"{split} questions for harmless prompts", from_end=True)])


def prompt_set_report(prompts: Iterable[InstructionPrompt]) -> dict:
    """Counts: `total`, `by_split`, `by_kind`, `by_split_kind` ("split/kind"), and, for
    constraint prompts, `by_family` and `by_wording` per split (keys sorted)."""
    prompts = list(prompts)

    def count(keys) -> dict:
        return dict(sorted(Counter(keys).items()))

    constrained = [p for p in prompts if p.constraint is not None]
    splits = sorted({p.split for p in constrained})
    return {
        "total": len(prompts),
        "by_split": count(p.split for p in prompts),
        "by_kind": count(p.kind for p in prompts),
        "by_split_kind": count(f"{p.split}/{p.kind}" for p in prompts),
        "by_family": {s: count(p.constraint.family for p in constrained if p.split == s) for s in splits},
        "by_wording": {s: count(p.constraint.wording_id for p in constrained if p.split == s) for s in splits},
    }
