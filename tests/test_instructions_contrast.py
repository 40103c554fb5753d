"""Balanced contrast pairs (`pairs.harmless_contrast`): a harmless prompt with acceptable
samples gets up to `revisions` pairs "answer ≻ template refusal" besides its sampled pairs,
as many as a harmful prompt with no refusal gets "template refusal ≻ compliance" pairs.
Every expectation is written out by hand."""

import random

import pytest

from dpokit.instructions.pairs import REFUSALS, build_all_pairs, build_pairs, build_pairs_explained, pairs_report
from dpokit.instructions.prompts import make_prompt

HARMFUL = make_prompt("How do I pick my neighbour's lock?", "crime", "harmful", None, "train")
HARMLESS = make_prompt("What is the capital of France?", "geo", "harmless", None, "train")
OTHER = make_prompt("What is the capital of Italy?", "geo", "harmless", None, "train")
ANSWERS = ["Paris is the capital of France.", "It is Paris.", "Paris, on the Seine."]
COMPLIANCES = ["Sure, get a tension wrench.", "Use a bump key.", "Rake the pins with a pick."]
REFUSE = "I can't help with that."


def contrast(prompt, samples, revisions, seed=0, **kw):
    return build_pairs(prompt, samples, rng=random.Random(seed), revisions=revisions, contrast_harmless=True, **kw)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_harmless_prompt_gets_as_many_contrast_pairs_as_a_harmful_one_gets_refusal_pairs(k):
    pairs = contrast(HARMLESS, ANSWERS, k)
    assert [p.chosen for p in pairs] == ANSWERS[:k]  # distinct acceptable samples, in sample order
    assert all(p.origin == "contrast" and p.reason == "answer_harmless" and p.rejected in REFUSALS for p in pairs)
    assert len({p.rejected for p in pairs}) == k  # distinct templates (4 of them)
    revised = build_pairs(HARMFUL, COMPLIANCES, rng=random.Random(0), revisions=k)
    assert len(revised) == k and {p.origin for p in revised} == {"revised"}


def test_revisions_one_on_a_tie_is_the_old_pair_and_the_old_rng_draw():
    # the rule before balancing: a tied harmless prompt -> first sample ≻ rng.choice(REFUSALS)
    old = random.Random(7)
    want = old.choice(REFUSALS)
    r = random.Random(7)
    (pair,) = build_pairs(HARMLESS, ANSWERS, rng=r, contrast_harmless=True)
    assert (pair.chosen, pair.rejected, pair.origin) == (ANSWERS[0], want, "contrast")
    assert r.random() == old.random()  # the same draws: the prompts after it keep their pairs


def test_sampled_and_contrast_pairs_together():
    samples = [ANSWERS[0], REFUSE, ANSWERS[1]]
    pairs = contrast(HARMLESS, samples, 2)
    assert [p.origin for p in pairs] == ["sampled", "sampled", "contrast", "contrast"]
    assert {(p.chosen, p.rejected) for p in pairs[:2]} == {(ANSWERS[0], REFUSE), (ANSWERS[1], REFUSE)}
    assert [p.chosen for p in pairs[2:]] == [ANSWERS[0], ANSWERS[1]]
    assert pairs[2].rejected != pairs[3].rejected and {pairs[2].rejected, pairs[3].rejected} <= set(REFUSALS)
    # max_pairs_per_prompt caps the sampled pairs only
    assert [p.origin for p in contrast(HARMLESS, samples, 2, max_pairs_per_prompt=1)] == ["sampled", "contrast", "contrast"]
    # contrast off: the sampled pairs alone, as before
    assert [p.origin for p in build_pairs(HARMLESS, samples, rng=random.Random(0), revisions=2)] == ["sampled", "sampled"]


def test_contrast_chosen_are_distinct_samples_and_a_short_prompt_is_counted():
    # a repeat (visible text equal) is one sample: two distinct answers give two pairs at revisions=3
    pairs = contrast(HARMLESS, [ANSWERS[0], " " + ANSWERS[0] + "\u200b", ANSWERS[1]], 3)
    assert [p.chosen for p in pairs] == [ANSWERS[0], ANSWERS[1]]
    # one acceptable sample at revisions=2: one contrast pair (plus its sampled pair)
    assert [p.origin for p in contrast(HARMLESS, [ANSWERS[0], REFUSE], 2)] == ["sampled", "contrast"]
    pairs, without = build_all_pairs([HARMLESS, OTHER], {HARMLESS.id: [ANSWERS[0], REFUSE], OTHER.id: ["Rome.", "It is Rome."]},
                                     rng=random.Random(0), revisions=2, contrast_harmless=True)
    report = pairs_report(pairs, without)
    assert report["contrast_per_prompt"] == {"1": 1, "2": 1} and report["by_origin"] == {"contrast": 3, "sampled": 1}
    assert "contrast_per_prompt" not in pairs_report(pairs[:1], without)  # no contrast pair: no key


def test_templates_are_distinct_until_all_are_used():
    samples = [f"Paris, answer number {i}." for i in range(6)]
    for seed in range(20):
        rejected = [p.rejected for p in contrast(HARMLESS, samples, 6, seed=seed)]
        assert sorted(rejected[:4]) == sorted(REFUSALS) and set(rejected[4:]) <= set(REFUSALS)


def test_no_contrast_without_an_acceptable_sample_or_on_other_kinds():
    assert build_pairs_explained(HARMLESS, [REFUSE, "I must decline."], rng=random.Random(0), revisions=2,
                                 contrast_harmless=True) == ([], "harmless: every sample refuses or is degenerate")
    assert all(p.origin != "contrast" for p in contrast(HARMFUL, [REFUSE, COMPLIANCES[0]], 3))
