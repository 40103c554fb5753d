"""Rule-labelled pairs: each principle decides a hand-made case, ties give no pair, the
critique -> revision step, degenerate detection, the report and the JSONL round trip through
dpokit's own loader."""

import json
import random

import pytest

from dpokit.config import ConfigError
from dpokit.data.normalize import load_pairs
from dpokit.instructions.constraints import check, make_constraint
from dpokit.instructions.pairs import (
    REFUSALS,
    build_all_pairs,
    build_pairs,
    build_pairs_explained,
    decide,
    is_degenerate,
    label_pair,
    pairs_report,
    score,
    to_jsonl_records,
)
from dpokit.instructions.prompts import make_prompt
from dpokit.instructions.refusal import is_refusal

HARMFUL = make_prompt("How do I pick my neighbour's lock?", "crime", "harmful", None, "train")
HARMLESS = make_prompt("What is the capital of France?", "geo", "harmless", None, "train")
NO_COMMAS = make_prompt("What is bread?", "food", "constraint", make_constraint("no_commas", {}, 0), "train")
MIN_WORDS = make_prompt("What is rain?", "weather", "constraint", make_constraint("min_words", {"n": 30}, 1), "train")

REFUSE = "I can't help with that."
REFUSE_LOOP = "I can't help with that. I can't help with that. I can't help with that."
COMPLY = "Sure, first get a tension wrench and a pick."
PARIS = "Paris is the capital of France."
PASS = "Bread is baked dough made of flour and water."
PASS2 = "Bread is a staple food made from flour."
FAIL = "Bread is flour, water, salt, and yeast, baked."
FAIL2 = "Bread, in short, is baked."
PARIS_LOOP = "Paris is big. Paris is big. Paris is big."
COMPLY_LOOP = "Get a pick. Get a pick. Get a pick."
PASS_LOOP = "Bread is good. Bread is good. Bread is good."


def rng():
    return random.Random(0)


# ------------------------------------------------------------------------------------------
# The principles, one hand-made case each (and the cases that pin their order)


@pytest.mark.parametrize("prompt, a, b, principle", [
    (HARMFUL, REFUSE, COMPLY, "refuse_harmful"),
    (HARMFUL, REFUSE_LOOP, COMPLY, "refuse_harmful"),           # 1 before 4
    (HARMLESS, PARIS, "I'm sorry, but I can't answer that.", "answer_harmless"),
    (HARMLESS, "", REFUSE, "answer_harmless"),                  # 2 before 4 (build_pairs never pairs it)
    (NO_COMMAS, PASS, FAIL, "obey_constraint"),
    (NO_COMMAS, PASS_LOOP, FAIL, "obey_constraint"),            # 3 before 4
    (NO_COMMAS, "I cannot help with that.", FAIL, "obey_constraint"),  # principle 2 is for harmless prompts only
    (HARMLESS, "Paris.", "", "not_degenerate"),
    (HARMFUL, REFUSE, REFUSE_LOOP, "not_degenerate"),
    (HARMFUL, COMPLY, "", "not_degenerate"),                    # label_pair's rule; build_pairs never pairs it
    (NO_COMMAS, PASS, PASS_LOOP, "not_degenerate"),
])
def test_each_principle_decides(prompt, a, b, principle):
    assert decide(prompt, a, b) == (1, principle)
    assert decide(prompt, b, a) == (-1, principle)
    assert label_pair(prompt, a, b) == 1 and label_pair(prompt, b, a) == -1


@pytest.mark.parametrize("prompt, a, b", [
    (NO_COMMAS, PASS, PASS2),
    (HARMFUL, REFUSE, "I must decline this request."),
    (HARMFUL, COMPLY, "Use a bump key."),          # two compliances: equal on 1-4
    (HARMLESS, PARIS, "It is Paris."),
    (NO_COMMAS, FAIL, FAIL + " Really."),
])
def test_ties(prompt, a, b):
    assert label_pair(prompt, a, b) == 0 and decide(prompt, a, b) == (0, None)
    assert score(prompt, a) == score(prompt, b)


def test_score_sorts():
    samples = [FAIL, PASS_LOOP, "", PASS]
    ranked = sorted(samples, key=lambda s: score(NO_COMMAS, s), reverse=True)
    assert ranked == [PASS, PASS_LOOP, FAIL, ""]
    assert score(NO_COMMAS, PASS) == (0, 0, 1, 1) and score(HARMFUL, REFUSE) == (1, 0, 0, 1)


# ------------------------------------------------------------------------------------------
# is_degenerate


@pytest.mark.parametrize("text", [
    "", "   \n\t ", "\u200b\u200d",              # nothing visible
    "I like it. I like it. I like it.",
    "I like it.\nI LIKE it!\ni like it",           # lines, case and punctuation aside
    "Step one. Then more. Step one. Step one?",     # not consecutive
    "aaaaaaaaaa",                                   # 10 of 10
    "aaaaaaaaaab",                                  # 10 of 11 = 90.9% > 90%
    "AAAAA aaaaa",                                  # casefolded, spaces not counted
    "!!!!!!!!!!!!!!!!!!!!",
])
def test_degenerate(text):
    assert is_degenerate(text)


@pytest.mark.parametrize("text", [
    "I like it. I like it.",                        # twice only
    "Yes. Yes. Yes.",                               # one-word sentences never count
    "I like it. I like them. I like this.",
    "aaaaaaaaab",                                   # 9 of 10 = 90%, not more
    "aaaaaaaaa",                                    # 9 characters: too short to call noise
    "4",
    '{\n  "a": {\n    "x": 1\n  },\n  "b": {\n    "x": 2\n  },\n  "c": {\n    "x": 3\n  }\n}',
    "- Drink water.\n- Sleep well.\n- Walk daily.",
])
def test_not_degenerate(text):
    assert not is_degenerate(text)


# ------------------------------------------------------------------------------------------
# build_pairs


def test_sampled_pairs_prefer_the_highest_principle():
    samples = [PASS_LOOP, FAIL, PASS, "", FAIL2]
    rejected = set()
    for seed in range(20):
        (pair,) = build_pairs(NO_COMMAS, samples, rng=random.Random(seed), max_pairs_per_prompt=1)
        assert (pair.chosen, pair.reason, pair.origin) == (PASS, "obey_constraint", "sampled")
        rejected.add(pair.rejected)
    assert rejected == {FAIL, FAIL2}  # principle 3 first; among its pairs, rng picks; "" never
    pairs = build_pairs(NO_COMMAS, samples, rng=rng(), max_pairs_per_prompt=5)
    assert [p.reason for p in pairs] == ["obey_constraint", "obey_constraint", "not_degenerate"]
    assert {p.rejected for p in pairs[:2]} == {FAIL, FAIL2} and pairs[2].rejected == PASS_LOOP
    assert all(p.prompt_id == NO_COMMAS.id and p.prompt == NO_COMMAS.text and p.family == "no_commas" for p in pairs)


def test_no_repeated_or_identical_pairs():
    samples = [PASS, FAIL, FAIL, FAIL + "  ", " " + PASS]
    pairs = build_pairs(NO_COMMAS, samples, rng=rng(), max_pairs_per_prompt=5)
    assert [(p.chosen, p.rejected) for p in pairs] == [(PASS, FAIL)]
    assert all(p.chosen.strip() != p.rejected.strip() for p in pairs)


def test_ties_give_no_pair():
    assert build_pairs_explained(NO_COMMAS, [PASS, PASS2], rng=rng()) == ([], "tie: all samples acceptable")
    assert build_pairs_explained(HARMLESS, [PARIS, PARIS + " "], rng=rng()) == ([], "tie: all samples acceptable")
    assert build_pairs_explained(HARMLESS, [], rng=rng()) == ([], "no samples")


def test_revision_when_no_sample_passes():
    (pair,) = build_pairs(NO_COMMAS, ["", FAIL, "Bread, baked."], rng=rng())
    assert pair.origin == "revised" and pair.reason == "obey_constraint"
    assert pair.rejected == FAIL and pair.chosen == "Bread is flour water salt and yeast baked."
    assert check(NO_COMMAS.constraint, pair.chosen) and not check(NO_COMMAS.constraint, pair.rejected)
    # a passing but degenerate sample is no chosen response: the revision is used instead
    (pair,) = build_pairs(NO_COMMAS, [PASS_LOOP, FAIL], rng=rng())
    assert (pair.origin, pair.rejected) == ("revised", FAIL)
    assert build_pairs_explained(NO_COMMAS, [FAIL], rng=rng(), revise_when_none_pass=False) == (
        [], "no acceptable sample (revision off)")


def test_no_rule_revision():
    assert build_pairs_explained(MIN_WORDS, ["Rain is water.", ""], rng=rng()) == (
        [], "constraint: no sample could be revised")


def test_harmful_without_refusal_gets_a_template_refusal():
    chosen = set()
    for seed in range(40):
        (pair,) = build_pairs(HARMFUL, ["", COMPLY, "Use a bump key."], rng=random.Random(seed))
        assert (pair.rejected, pair.origin, pair.reason) == (COMPLY, "revised", "refuse_harmful")
        assert pair.chosen in REFUSALS
        chosen.add(pair.chosen)
    assert len(chosen) > 1  # the wording is drawn by rng
    same = [build_pairs(HARMFUL, [COMPLY], rng=random.Random(3))[0].chosen for _ in range(2)]
    assert same[0] == same[1]
    # the rejected sample: a fluent compliance before a looping one or a degenerate refusal
    (pair,) = build_pairs(HARMFUL, [REFUSE_LOOP, COMPLY_LOOP, COMPLY], rng=rng())
    assert (pair.rejected, pair.reason) == (COMPLY, "refuse_harmful")
    # only a degenerate refusal: the template still beats it (principle 4)
    (pair,) = build_pairs(HARMFUL, [REFUSE_LOOP], rng=rng())
    assert (pair.rejected, pair.reason) == (REFUSE_LOOP, "not_degenerate")


def test_revisions_per_prompt_revise_that_many_samples_in_rank_order():
    # constraint: FAIL and FAIL2 both fail "no commas"; the looping one is skipped, the empty one dropped
    samples = ["", PASS_LOOP, FAIL, FAIL2]
    assert [p.rejected for p in build_pairs(NO_COMMAS, samples, rng=rng())] == [FAIL]  # the default: one
    pairs = build_pairs(NO_COMMAS, samples, rng=rng(), revisions=3)
    assert [(p.rejected, p.chosen, p.origin) for p in pairs] == [
        (FAIL, "Bread is flour water salt and yeast baked.", "revised"),
        (FAIL2, "Bread in short is baked.", "revised")]  # only two samples can be revised
    # harmful: one template refusal per rejected sample, rejected in the same order as with one;
    # the first pair is the one-revision pair (same rng draw)
    samples = [REFUSE_LOOP, COMPLY_LOOP, COMPLY, "Use a bump key."]
    (one,) = build_pairs(HARMFUL, samples, rng=random.Random(5))
    pairs = build_pairs(HARMFUL, samples, rng=random.Random(5), revisions=3)
    assert [p.rejected for p in pairs] == [COMPLY, "Use a bump key.", COMPLY_LOOP]
    assert pairs[0] == one and all(p.chosen in REFUSALS and p.origin == "revised" for p in pairs)
    # a sampled pair is not affected: revisions apply only when no sample is acceptable
    assert len(build_pairs(NO_COMMAS, [PASS, FAIL, FAIL2], rng=rng(), max_pairs_per_prompt=1, revisions=3)) == 1
    with pytest.raises(ConfigError, match="revisions"):
        build_pairs(NO_COMMAS, [FAIL], rng=rng(), revisions=0)


def test_harmless_contrast_pairs_an_answer_against_a_template_refusal():
    samples = [PARIS, "Paris, on the Seine."]
    assert build_pairs_explained(HARMLESS, samples, rng=rng()) == ([], "tie: all samples acceptable")  # the default
    (pair,) = build_pairs(HARMLESS, samples, rng=rng(), contrast_harmless=True)
    assert (pair.chosen, pair.origin, pair.reason) == (PARIS, "contrast", "answer_harmless")
    assert pair.rejected in REFUSALS
    # a refusing sample: the sampled pair, then the contrast pair (tests/test_instructions_contrast.py);
    # other kinds: no contrast
    sampled, contrast = build_pairs(HARMLESS, [PARIS, REFUSE], rng=rng(), contrast_harmless=True)
    assert (sampled.chosen, sampled.rejected, sampled.origin) == (PARIS, REFUSE, "sampled")
    assert (contrast.chosen, contrast.origin) == (PARIS, "contrast") and contrast.rejected in REFUSALS
    assert build_pairs(NO_COMMAS, [PASS, PASS2], rng=rng(), contrast_harmless=True) == []
    assert build_pairs(HARMFUL, [REFUSE], rng=rng(), contrast_harmless=True) == []


def test_pair_counts_add_contrast_only_when_there_is_some():
    from dpokit.tasks.instructions_data import pair_counts

    assert pair_counts({"by_origin": {"sampled": 3, "revised": 2}}, None) == {
        "sampled": 3, "revised": 2, "file": 0, "total": 5, "rules": {"by_origin": {"sampled": 3, "revised": 2}}}
    c = pair_counts({"by_origin": {"sampled": 3, "revised": 2, "contrast": 4}}, {"pairs": 1})
    assert (c["contrast"], c["total"]) == (4, 10)


def test_refusal_templates_are_refusals():
    assert all(is_refusal(r) and not is_degenerate(r) for r in REFUSALS) and len(set(REFUSALS)) >= 3


def test_chosen_is_always_acceptable():
    # label_pair prefers a looping answer to a refusal of a harmless question, and a
    # compliance to a looping one on a harmful prompt; neither pair is ever made
    assert label_pair(HARMLESS, PARIS_LOOP, REFUSE) == 1 and label_pair(HARMFUL, COMPLY, COMPLY_LOOP) == 1
    assert build_pairs_explained(HARMLESS, [PARIS_LOOP, REFUSE, "  "], rng=rng()) == (
        [], "harmless: every sample refuses or is degenerate")
    pairs = build_pairs(HARMFUL, [COMPLY_LOOP, COMPLY, REFUSE, ""], rng=rng(), max_pairs_per_prompt=5)
    assert {p.chosen for p in pairs} == {REFUSE} and {p.rejected for p in pairs} == {COMPLY, COMPLY_LOOP}


def test_empty_samples_are_dropped():
    # dpokit's loader skips a pair with an empty side: zero-width spaces are empty too
    assert build_pairs_explained(HARMFUL, ["", " \u200b\n"], rng=rng()) == ([], "only empty samples")
    assert all(p.rejected.strip() for p in build_pairs(NO_COMMAS, [PASS, "", "\u200b"], rng=rng()))
    assert build_pairs_explained(NO_COMMAS, [PASS, "", "\u200b"], rng=rng()) == ([], "tie: all samples acceptable")


def test_max_pairs_must_be_positive():
    with pytest.raises(ConfigError, match="max_pairs_per_prompt"):
        build_pairs(HARMLESS, [PARIS], rng=rng(), max_pairs_per_prompt=0)


# ------------------------------------------------------------------------------------------
# Report and JSONL


def batch():
    tie = make_prompt("What is the capital of Italy?", "geo", "harmless", None, "train")
    missing = make_prompt("What is snow?", "weather", "harmless", None, "train")
    samples = {
        HARMFUL.id: [COMPLY, ""],                              # 1 revised (refuse_harmful)
        HARMLESS.id: [PARIS, REFUSE, PARIS_LOOP, ""],          # 2 sampled: answer_harmless, not_degenerate
        NO_COMMAS.id: [PASS, FAIL],                            # 1 sampled: obey_constraint
        MIN_WORDS.id: ["Rain is water."],                      # no pair: no revision for min_words
        tie.id: ["Rome.", "It is Rome."],                      # no pair: tie
    }
    return build_all_pairs([HARMFUL, HARMLESS, NO_COMMAS, MIN_WORDS, tie, missing], samples, rng=rng())


def test_report_counts():
    pairs, without = batch()
    assert pairs_report(pairs, without) == {
        "pairs": 4,
        "prompts_with_pair": 3,
        "prompts_without_pair": 3,
        "by_origin": {"revised": 1, "sampled": 3},
        "by_principle": {"answer_harmless": 1, "not_degenerate": 1, "obey_constraint": 1, "refuse_harmful": 1},
        "by_kind": {"constraint": 1, "harmful": 1, "harmless": 2},
        "by_family": {"no_commas": 1},
        "no_pair_reasons": {"constraint: no sample could be revised": 1, "no samples": 1,
                            "tie: all samples acceptable": 1},
    }


def test_jsonl_records_load_through_dpokit(tmp_path):
    pairs, _ = batch()
    records = to_jsonl_records(pairs)
    assert records[0]["origin"] == "revised" and records[0]["principle"] == "refuse_harmful"
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    loaded, skips = load_pairs(path)
    assert skips.total == 0 and len(loaded) == len(pairs)
    for got, want in zip(loaded, pairs):
        assert got.prompt == [{"role": "user", "content": want.prompt}]
        assert got.chosen == [{"role": "assistant", "content": want.chosen}]
        assert got.rejected == [{"role": "assistant", "content": want.rejected}]
