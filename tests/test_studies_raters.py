"""Simulated raters (dpokit.studies.raters): each scorer by hand, the panel's weights, the
mixture's two ground truths, the votes and the multi-rater records they make."""

import json
import math
import random

import pytest

from dpokit.data.normalize import normalize_record
from dpokit.studies import raters as R


def sig(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("text, words, informal, formal", [
    # I (pronoun), can't (contraction), lol (slang) + three "!"
    ("I can't believe it!!! lol", 5, 6, 0),
    # However, remarkably, consequently (connectives); performances, restrained, narrative (≥ 9 letters); one ";"
    ("However, the performances were remarkably restrained; consequently, the narrative endures.", 10, 0, 7),
    # It's (curly apostrophe, a contraction), SO (capitals), ":)" (emoticon)
    ("It\u2019s SO good :)", 3, 3, 0),
    # film's is a possessive, not a contraction; "..." is informal
    ("The film's pacing...", 3, 1, 0),
    ("", 0, 0, 0),
])
def test_formality_markers_by_hand(text, words, informal, formal):
    assert R.formality_markers(text) == {"words": words, "informal": informal, "formal": formal}


def test_formality_score_is_a_density():
    got = R.formality_score(["I can't believe it!!! lol",
                             "However, the performances were remarkably restrained; consequently, the narrative endures.", ""])
    assert got == pytest.approx([-6 / 5, 7 / 10, 0.0])
    # Repeating a text does not make it more formal.
    one = "However, the cast is excellent."
    assert R.formality_score([one + " " + one]) == pytest.approx(R.formality_score([one]))


def test_brevity_and_sentiment():
    assert R.brevity_score(["one two three", "", "  a  b "]) == [-3.0, 0.0, -2.0]
    from dpokit.eval.rewards import sentiment_reward

    texts = ["a wonderful, moving film", "a dull and awful mess"]
    assert R.sentiment_score(texts) == sentiment_reward(texts)
    assert R.sentiment_score(texts)[0] > 0 > R.sentiment_score(texts)[1]
    with pytest.raises(TypeError):
        R.brevity_score("not a list")


def test_score_texts_and_standardizer_by_hand():
    raw = R.score_texts(["a b", "a b c d", "a b c d e f"], ["brevity"])
    assert raw == {"brevity": [-2.0, -4.0, -6.0]}
    st = R.Standardizer.fit(raw)
    # mean −4, population sd sqrt(8/3) = 1.632993
    assert st.mean == {"brevity": -4.0} and st.sd["brevity"] == pytest.approx(1.632993, abs=1e-6)
    assert st(raw)["brevity"] == pytest.approx([1.224745, 0.0, -1.224745], abs=1e-6)
    flat = R.Standardizer.fit({"formality": [0.5, 0.5]})
    assert flat.sd == {"formality": 1.0} and flat({"formality": [1.5]}) == {"formality": [1.0]}
    with pytest.raises(ValueError, match="unknown criterion 'humour'"):
        R.score_texts(["x"], ["humour"])


def test_rater_probabilities():
    r = R.Rater("s", "sentiment", 0.5)
    assert r.prob(1.0, 0.5) == pytest.approx(sig(1.0))
    d = R.Rater("d", "brevity", 0.0)
    assert (d.prob(1, 0), d.prob(0, 1), d.prob(2, 2)) == (1.0, 0.0, 0.5)
    with pytest.raises(ValueError, match="temperature"):
        R.Rater("x", "brevity", -1.0)
    with pytest.raises(ValueError, match="unknown criterion"):
        R.Rater("x", "length", 1.0)
    # Votes follow the probability: 20,000 draws at P = σ(1) = 0.731059, within 4 sd (0.0126).
    rng = random.Random(0)
    share = sum(r.vote(1.0, 0.5, rng) for _ in range(20000)) / 20000
    assert abs(share - sig(1.0)) < 0.0126


def test_panel_weights_and_the_two_ground_truths_by_hand():
    panel = R.Panel.from_counts({"sentiment": 2, "brevity": 1}, temperature=1.0)
    assert [r.name for r in panel.raters] == ["sentiment-1", "sentiment-2", "brevity-1"]
    assert panel.weights == pytest.approx({"sentiment": 2 / 3, "brevity": 1 / 3})
    a, b = {"sentiment": 1.0, "brevity": -2.0}, {"sentiment": 0.0, "brevity": 0.5}
    # U(a) = 2/3·1 + 1/3·(−2) = 0;  U(b) = 1/3·0.5 = 0.166667: U prefers b
    assert panel.utility(a) == pytest.approx(0.0) and panel.utility(b) == pytest.approx(1 / 6)
    # P_mix(a ≻ b) = 2/3·σ(1) + 1/3·σ(−2.5) = 2/3·0.731059 + 1/3·0.075858 = 0.512659: the votes prefer a
    assert panel.preference(a, b) == pytest.approx(0.512659, abs=1e-6)
    assert panel.preference(b, a) == pytest.approx(1 - 0.512659, abs=1e-6)
    with pytest.raises(ValueError, match="unique"):
        R.Panel((R.Rater("x", "brevity"), R.Rater("x", "sentiment")))
    with pytest.raises(ValueError, match="integers"):
        R.Panel.from_counts({"brevity": 1.5}, 1.0)


def test_rate_pair_orients_by_majority_and_loads_as_multi_rater_record():
    panel = R.Panel.from_counts({"sentiment": 2, "brevity": 1}, temperature=0.0)
    a, b = {"sentiment": 1.0, "brevity": -2.0}, {"sentiment": 0.0, "brevity": 0.5}
    rec = R.rate_pair(panel, "p", "text a", "text b", a, b, random.Random(0))
    # deterministic raters: both sentiment annotators prefer a, brevity prefers b → a chosen 2:1
    assert (rec["chosen"], rec["rejected"]) == ("text a", "text b")
    assert rec["votes"] == {"sentiment-1": "chosen", "sentiment-2": "chosen", "brevity-1": "rejected"}
    assert rec["z_chosen"] == a and rec["utility_chosen"] == pytest.approx(0.0) and rec["p_mix"] == pytest.approx(2 / 3)
    # b offered first: the same record, the truth flipped with it
    flipped = R.rate_pair(panel, "p", "text b", "text a", b, a, random.Random(0))
    assert flipped == rec
    pair = normalize_record(json.loads(json.dumps(rec)), "x.jsonl:1")
    assert pair.votes == (2, 1) and dict(pair.raters) == {"sentiment-1": True, "sentiment-2": True, "brevity-1": False}


def test_tied_vote_is_oriented_by_a_coin_and_says_so():
    panel = R.Panel.from_counts({"sentiment": 1, "brevity": 1}, temperature=0.0)
    a, b = {"sentiment": 1.0, "brevity": 0.0}, {"sentiment": 0.0, "brevity": 1.0}
    firsts = {R.rate_pair(panel, "p", "A", "B", a, b, random.Random(s))["chosen"] for s in range(20)}
    assert firsts == {"A", "B"}
    rec = R.rate_pair(panel, "p", "A", "B", a, b, random.Random(0))
    assert rec["tie_broken"] and sorted(rec["votes"].values()) == ["chosen", "rejected"]
