"""The sentiment case study's prompt set: size, distinctness, deterministic split."""

import pytest

from dpokit.tasks.sentiment_prompts import build_prompts, split_prompts


def test_at_least_400_distinct_and_deterministic():
    prompts = build_prompts()
    assert len(prompts) >= 400
    assert len(set(prompts)) == len(prompts)
    assert build_prompts() == prompts
    assert "I watched this thriller about a retired detective last night, and" in prompts


def test_openings_are_clean():
    for p in build_prompts():
        assert p == p.strip() and "{" not in p and "  " not in p
        assert " a a" not in p and " a an" not in p
    assert any(" an animated film " in p for p in build_prompts())


def test_split_disjoint_complete_and_seeded():
    prompts = build_prompts()
    train, held = split_prompts(prompts, n_heldout=100, seed=0)
    assert len(held) == 100 and len(train) == len(prompts) - 100
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(prompts)
    assert split_prompts(prompts, 100, 0) == (train, held)
    _, held_other = split_prompts(prompts, 100, 1)
    assert held_other != held
    # A real shuffle: the held-out set is not just the head or the tail of the list.
    assert held != prompts[:100] and held != prompts[-100:]


def test_split_rejects_bad_input():
    with pytest.raises(ValueError):
        split_prompts(["a", "a", "b"], 1, 0)
    with pytest.raises(ValueError):
        split_prompts(["a", "b"], 3, 0)
