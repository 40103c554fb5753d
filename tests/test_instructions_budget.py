"""Constraint params fit the answers' token budget (pairs.max_new_tokens): at every budget each
drawn min_words / max_words / bullets / end_phrase param leaves both outcomes reachable, the
ranges at the default budget by hand, a budget too small is a one-line config error (exit 2),
and the study draws its prompts at pairs.max_new_tokens. Pure: no model."""

import math
import random

import pytest

from dpokit.config import ConfigError
from dpokit.instructions import constraints as cs
from dpokit.instructions.constraints import (
    END_PHRASES,
    FAMILIES,
    MIN_BUDGET_TOKENS,
    check,
    param_choices,
    sample_constraint,
    word_budget,
)
from dpokit.instructions.prompts import build_prompt_set
from dpokit.instructions.sources import HarmfulPrompt, Question

BUDGETS = (12, 13, 17, 20, 32, 48, 64, 80, 128, 256, 1024)


def text_of(n_words: int) -> str:
    return " ".join(["word"] * n_words) + "."


def assert_reachable_both_ways(constraint, budget: int) -> None:
    """The contract, stated on the checker itself with W = the words a full-length answer holds
    (0.7 per token; the cut answers of the study's first run held 32.8 words at 48 tokens, 90%
    of them at least 0.6 W): a full-length answer (0.6 W words) passes min_words and fails
    max_words; a one-sentence answer (under 0.25 W words) fails min_words; an answer of
    0.15 W words passes max_words; N bullets of 3 words fit in W; an end phrase takes at most W / 2."""
    w = word_budget(budget)
    full, n = text_of(math.ceil(0.6 * w)), constraint.params.get("n")
    if constraint.family == "min_words":
        assert check(constraint, full) and n <= 0.6 * w, (budget, n)
        assert not check(constraint, text_of(n - 1 if n > 1 else 0)) and n >= 2, (budget, n)
        assert n >= 0.25 * w or n == 2, (budget, n)  # a 0.25 W-word answer cannot pass
    elif constraint.family == "max_words":
        assert not check(constraint, full) and n <= 0.45 * w, (budget, n)
        assert check(constraint, text_of(n - 1)) and n - 1 >= max(1, math.ceil(0.15 * w) - 1), (budget, n)
    elif constraint.family == "bullets":
        bullets = "\n".join(f"- item number {i}." for i in range(n))
        assert check(constraint, bullets) and 4 * n <= w, (budget, n)
        assert not check(constraint, "\n".join(bullets.splitlines()[:-1]) or "no bullets"), (budget, n)
    elif constraint.family == "end_phrase":
        phrase = constraint.params["phrase"]
        assert check(constraint, f"An answer. {phrase}") and not check(constraint, "An answer.")
        assert len(cs.words(phrase)) <= w / 2, (budget, phrase)


@pytest.mark.parametrize("budget", BUDGETS)
def test_every_drawn_param_is_reachable_both_ways(budget):
    rng = random.Random(budget)
    for family in ("min_words", "max_words", "bullets", "end_phrase"):
        drawn = {sample_constraint(family, rng, split, max_new_tokens=budget)
                 for _ in range(200) for split in ("train", "heldout")}
        for constraint in drawn:
            assert_reachable_both_ways(constraint, budget)
        # every allowed value can be drawn (the lists are not cut to one end); 400 draws cover
        # a list of up to 40 values with near certainty (the seed is fixed anyway)
        name, allowed = "phrase" if family == "end_phrase" else "n", set(param_choices(family, budget))
        if len(allowed) <= 40:
            assert {c.params[name] for c in drawn} == allowed, (family, budget)


def test_ranges_at_the_default_budget_by_hand():
    # 48 tokens x 0.7 = 33.6 -> W = 33 words
    assert word_budget(48) == 33
    # min_words: ceil(0.25 x 33 = 8.25) = 9 .. floor(0.6 x 33 = 19.8) = 19
    assert param_choices("min_words", 48) == tuple(range(9, 20))
    # max_words: ceil(0.15 x 33 = 4.95) = 5 .. floor(0.45 x 33 = 14.85) = 14
    assert param_choices("max_words", 48) == tuple(range(5, 15))
    # bullets: 4 x 5 = 20 <= 33, all of 2..5; end phrases: the longest has 8 words <= 16.5
    assert param_choices("bullets", 48) == (2, 3, 4, 5)
    assert param_choices("end_phrase", 48) == END_PHRASES
    # the smallest budget: 12 x 0.7 = 8.4 -> W = 8; min_words 2..floor(4.8); max_words
    # max(2, ceil(1.2))..floor(3.6); bullets 4 x 2 = 8 <= 8 only; phrases of <= 4 words
    assert MIN_BUDGET_TOKENS == 12 and word_budget(12) == 8
    assert param_choices("min_words", 12) == (2, 3, 4)
    assert param_choices("max_words", 12) == (2, 3)
    assert param_choices("bullets", 12) == (2,)
    assert param_choices("end_phrase", 12) == ("Hope this helps.", "That is all.", "Thank you for asking.")
    # one token fewer: W = floor(7.7) = 7 holds no two 4-word bullets
    assert cs._budget_choices("bullets", 11) == ()


def test_ranges_scale_with_the_budget():
    assert (param_choices("min_words", 128)[0], param_choices("min_words", 128)[-1]) == (23, 53)  # W = 89
    assert (param_choices("max_words", 128)[0], param_choices("max_words", 128)[-1]) == (14, 40)
    # above the minimum every family always has a param (MIN_BUDGET_TOKENS is the only edge)
    parametrised = ("min_words", "max_words", "bullets", "end_phrase", "keyword", "forbidden_word", "start_word")
    for budget in range(MIN_BUDGET_TOKENS, 2001):
        assert all(param_choices(f, budget) for f in parametrised), budget


@pytest.mark.parametrize("budget", [0, 1, 11, 11.5, True, "48"])
def test_too_small_a_budget_is_a_config_error(budget):
    with pytest.raises(ConfigError, match=r"^max_new_tokens must be an integer ≥ 12 .*got "):
        param_choices("min_words", budget)
    with pytest.raises(ConfigError, match="max_new_tokens must be an integer ≥ 12"):
        sample_constraint("max_words", random.Random(0), "train", max_new_tokens=budget)


def test_families_without_a_count_ignore_the_budget_but_still_check_it():
    for family in FAMILIES:
        if family not in ("min_words", "max_words", "bullets", "end_phrase"):
            assert param_choices(family, 12) == param_choices(family, 4096)
    with pytest.raises(ConfigError):
        param_choices("lowercase", 3)


QUESTIONS = [Question(f"What is fact number {i}?", f"topic{i % 3}", f"synthetic:{i}") for i in range(160)]
HARMFUL = [HarmfulPrompt(f"How do I hurt person {i}?", "donotanswer", "harm", (), f"h:{i}") for i in range(60)]


def test_prompt_set_draws_at_its_budget_and_rejects_too_small_a_one():
    for budget in (12, 48, 200):
        prompts = build_prompt_set(QUESTIONS, HARMFUL, n_train=96, n_heldout=24, seed=0, harmful_fraction=0.1,
                                   max_new_tokens=budget)
        counted = [p.constraint for p in prompts if p.constraint and p.constraint.family in ("min_words", "max_words")]
        assert len(counted) == 2 * (8 + 2 + 2)  # 96 / 12 train, 24 / 12 held-out question, 24 / 12 re-worded
        for constraint in counted:
            assert constraint.params["n"] in param_choices(constraint.family, budget)
            assert_reachable_both_ways(constraint, budget)
    with pytest.raises(ConfigError, match="max_new_tokens must be an integer ≥ 12"):
        build_prompt_set(QUESTIONS, HARMFUL, n_train=24, n_heldout=6, seed=0, harmful_fraction=0.1, max_new_tokens=8)


def test_the_study_draws_at_pairs_max_new_tokens(monkeypatch):
    from dpokit.config import load_config, recipe
    from dpokit.instructions import sources
    from dpokit.tasks.instructions_config import InstructionsConfig
    from dpokit.tasks.instructions_data import study_prompts

    monkeypatch.setattr(sources, "chatterbot_questions", lambda report=None: QUESTIONS)
    monkeypatch.setattr(sources, "harmful_prompts", lambda report=None: HARMFUL)
    for budget in (20, 48):
        cfg = load_config(InstructionsConfig, recipe("instructions_quick"), [f"pairs.max_new_tokens={budget}",
                                                                              "prompts.n_train=48"])
        prompts, _ = study_prompts(cfg)
        drawn = [p.constraint for p in prompts if p.constraint and p.constraint.family in ("min_words", "max_words")]
        assert drawn and all(c.params["n"] in param_choices(c.family, budget) for c in drawn)
        # W = 14 at 20 tokens: min_words at most floor(8.4) = 8; at 48: at least 9
        assert all(c.params["n"] <= 8 for c in drawn) if budget == 20 else any(c.params["n"] >= 9 for c in drawn)


def test_cli_too_small_a_budget_is_one_line_exit_2(tmp_path, capsys):
    from dpokit.cli import main
    from dpokit.testing import tiny_model, tiny_tokenizer

    # a tiny model and temp dirs: should the check ever break, the run that follows takes
    # seconds on the tiny model instead of running the quick recipe's real one
    tiny_model().save_pretrained(tmp_path / "lm")
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    capsys.readouterr()  # the save's progress bar
    assert main(["run", "instructions", "--quick", "pairs.max_new_tokens=11", f"model={tmp_path / 'lm'}",
                 f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}", "progress=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pairs.max_new_tokens must be ≥ 12" in err[0] and "got 11" in err[0], err
