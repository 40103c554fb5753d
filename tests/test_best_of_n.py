"""Best-of-N from one set of M samples: the order-statistics weights and the selected sample's
expected ground truth against brute-force enumeration of every N-subset (ties included),
a two-prompt example worked by hand, the N = 1 and N = M ends, and a tiny-model end to end."""

import itertools
import math

import pytest
import torch

from dpokit.rlhf.best_of_n import (
    best_of_n_frontier, expected_selected_of_n, frontier_points, max_of_n_weights, sample_best_of_n,
)
from dpokit.rlhf.estimators import expected_max_of_n
from dpokit.testing import tiny_model, tiny_tokenizer


def brute_force(selector: list[float], values: list[float], n: int) -> float:
    """Mean over all N-subsets of the value of the subset's top-selector sample, a tie among
    top samples resolved uniformly at random (so that subset contributes their mean value)."""
    total, subsets = 0.0, list(itertools.combinations(range(len(values)), n))
    for subset in subsets:
        top = max(selector[i] for i in subset)
        winners = [values[i] for i in subset if selector[i] == top]
        total += sum(winners) / len(winners)
    return total / len(subsets)


@pytest.mark.parametrize("m", [1, 4, 7])
def test_weights_are_the_share_of_subsets_each_order_statistic_wins(m):
    for n in range(1, m + 1):
        w = max_of_n_weights(m, n)
        subsets = list(itertools.combinations(range(m), n))  # index = rank: the max is the last
        wins = [sum(s[-1] == i for s in subsets) / len(subsets) for i in range(m)]
        # Both are one correctly rounded division of the same integers, up to float64 rounding.
        torch.testing.assert_close(w, torch.tensor(wins, dtype=torch.float64), rtol=1e-12, atol=0)


def test_selected_value_matches_enumeration_with_ties():
    """M = 7 with two tied groups in the selector (one of them at the top), values unrelated
    to the selector; every N from 1 to M, two rows at once."""
    selector = [[0.3, 1.0, -0.5, 1.0, 0.3, 0.3, 2.0], [5.0, 5.0, 5.0, 1.0, 2.0, 5.0, 0.0]]
    values = [[1.0, -2.0, 0.5, 4.0, 3.0, -1.0, 0.25], [0.1, 0.9, -0.4, 2.0, 1.5, 0.7, 3.0]]
    for n in range(1, 8):
        got = expected_selected_of_n(torch.tensor(selector, dtype=torch.float64), torch.tensor(values, dtype=torch.float64), n)
        want = torch.tensor([brute_force(s, v, n) for s, v in zip(selector, values)], dtype=torch.float64)
        # Both are float64 sums of the same ≤ 35 terms in another order: 1e-12 is rounding.
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_same_result_whatever_order_the_samples_came_in():
    selector = torch.tensor([2.0, 1.0, 2.0, 0.0, 2.0])
    values = torch.tensor([1.0, 5.0, -3.0, 2.0, 7.0])
    perm = torch.tensor([4, 2, 0, 3, 1])
    # float64 sums of the same terms (tie means in another order): default float64 tolerance.
    for n in range(1, 6):
        a = expected_selected_of_n(selector, values, n)
        b = expected_selected_of_n(selector[perm], values[perm], n)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_selecting_by_the_values_themselves_is_expected_max_of_n():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 9, generator=g)  # one float64 computation against another: default tolerance
    for n in (1, 3, 9):
        torch.testing.assert_close(expected_selected_of_n(values, values, n), expected_max_of_n(values, n))


def test_two_prompt_example_by_hand():
    """M = 3, N = 2, weights (0, 1/3, 2/3).
    Prompt A: RM (0.1, 0.5, 0.3), truth (1, 0, 2). Subsets {0,1}→0, {0,2}→2, {1,2}→0: 2/3.
              Oracle: max(1,0)=1, max(1,2)=2, max(0,2)=2: 5/3.
    Prompt B: RM (2, 2, 1) with a tie, truth (0, 1, 3). {0,1}→(0+1)/2, {0,2}→0, {1,2}→1: 1/2.
              Oracle: 1, 3, 3: 7/3."""
    rm = torch.tensor([[0.1, 0.5, 0.3], [2.0, 2.0, 1.0]])
    truth = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 3.0]])
    points = {(p["selector"], p["n"]): p for p in frontier_points(truth, rm, ns=[2])}
    rm_point, oracle = points[("reward-model", 2)], points[("oracle", 2)]
    assert rm_point["reward_mean"] == pytest.approx((2 / 3 + 1 / 2) / 2, abs=1e-12)
    assert oracle["reward_mean"] == pytest.approx((5 / 3 + 7 / 3) / 2, abs=1e-12)
    # CI over the 2 prompts: t_{0.975,1} = 12.7062, s = |2/3 − 1/2|/√2, half = t·s/√2 = t/12.
    assert rm_point["reward_ci95"] == pytest.approx([7 / 12 - 12.7062 / 12, 7 / 12 + 12.7062 / 12], abs=1e-9)
    assert rm_point["kl"] == oracle["kl"] == pytest.approx(math.log(2) - 0.5, abs=1e-15)
    assert rm_point["method"] == "best-of-n"


def test_n1_is_the_mean_truth_and_n_m_the_truth_of_the_rm_argmax():
    g = torch.Generator().manual_seed(1)
    rm, truth = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)  # continuous: no ties
    # float64 weighted sums against a float64 mean / pick: default float64 tolerance.
    torch.testing.assert_close(expected_selected_of_n(rm, truth, 1), truth.double().mean(-1))
    argmax_truth = truth.gather(-1, rm.argmax(-1, keepdim=True)).squeeze(-1).double()
    torch.testing.assert_close(expected_selected_of_n(rm, truth, 8), argmax_truth)


def test_bad_n_and_bad_scores_are_refused():
    truth = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"N must be an integer in \[1, M=4\], got 8"):
        frontier_points(truth, None, ns=[1, 8])
    with pytest.raises(ValueError, match="finite"):
        expected_selected_of_n(torch.tensor([0.0, float("nan")]), torch.zeros(2), 1)


def lowercase_share(texts):
    return [sum("a" <= ch <= "z" for ch in t) / max(len(t), 1) for t in texts]


def test_tiny_model_end_to_end(tmp_path):
    """M = 8 samples of 3 prompts from the tiny model, a tiny reward model on its backbone:
    well-formed points for N = 1, 2, 4, 8 and both selectors; both selectors agree at N = 1 (the
    plain mean), the oracle is never below the reward model's pick and never falls with N;
    the reward-model curve is reproduced from the samples' own scores; same seed, same points."""
    from dpokit.rlhf.reward_model import build_reward_model

    tiny_model().save_pretrained(tmp_path / "lm")
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    rm, _ = build_reward_model(tmp_path / "lm")
    policy, tok, prompts = tiny_model(), tiny_tokenizer(), ["a:", "bb:", "c c:"]
    kw = dict(reward_fn=lowercase_share, reward_model=rm, m=8, max_new_tokens=6, batch_size=12, seed=3)
    points = best_of_n_frontier(policy, tok, prompts, **kw)
    assert [(p["selector"], p["n"]) for p in points] == [(s, n) for n in (1, 2, 4, 8) for s in ("reward-model", "oracle")]
    for p in points:
        assert set(p) == {"method", "selector", "n", "kl", "reward_mean", "reward_ci95"}
        assert p["reward_ci95"][0] <= p["reward_mean"] <= p["reward_ci95"][1]
        assert p["kl"] == pytest.approx(math.log(p["n"]) - (p["n"] - 1) / p["n"])
    by = {(p["selector"], p["n"]): p["reward_mean"] for p in points}
    assert by[("reward-model", 1)] == pytest.approx(by[("oracle", 1)], abs=1e-12)
    oracle = [by[("oracle", n)] for n in (1, 2, 4, 8)]
    assert all(a <= b + 1e-12 for a, b in zip(oracle, oracle[1:])) and oracle[-1] > oracle[0]
    assert all(by[("reward-model", n)] <= by[("oracle", n)] + 1e-12 for n in (1, 2, 4, 8))

    samples = sample_best_of_n(policy, tok, prompts, **kw)
    assert samples.truth.shape == samples.rm_scores.shape == (3, 8)
    texts = [c.text for c in samples.completions[1]]
    torch.testing.assert_close(samples.truth[1], torch.tensor(lowercase_share(texts), dtype=torch.float64))
    assert points == frontier_points(samples.truth, samples.rm_scores)
    assert [p["selector"] for p in best_of_n_frontier(policy, tok, prompts, **{**kw, "reward_model": None})] == ["oracle"] * 4


def test_within_prompt_pair_accuracy_by_hand():
    from dpokit.rlhf.best_of_n import within_prompt_pair_accuracy

    truth = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 1.0]])
    scores = torch.tensor([[0.0, 2.0, 1.0], [5.0, 3.0, 3.0]])
    # Prompt 1: (0,1) right, (0,2) right, (1,2) wrong. Prompt 2: (0,1) is a truth tie (left out),
    # (0,2) wrong, (1,2) a score tie (1/2). 2 + 0.5 right out of 5 pairs.
    assert within_prompt_pair_accuracy(truth, scores) == {"accuracy": pytest.approx(2.5 / 5), "pairs": 5}
    # min_gap 1.5 keeps only prompt 1's (0,2).
    assert within_prompt_pair_accuracy(truth, scores, min_gap=1.5) == {"accuracy": 1.0, "pairs": 1}
    assert within_prompt_pair_accuracy(truth, scores, min_gap=5) == {"accuracy": None, "pairs": 0}
