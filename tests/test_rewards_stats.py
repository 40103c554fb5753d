"""Ground-truth reward (VADER) and the evaluation statistics, against hand-worked numbers."""

import math

import pytest
import torch

from dpokit.eval.rewards import REWARDS, get_reward, sentiment_reward
from dpokit.eval.stats import mean_ci95, sequence_kl, t_quantile_975, win_rate


def test_vader_obvious_sentences():
    pos, neg, neutral = sentiment_reward([
        "This movie was wonderful, I loved it. Brilliant acting and a great story!",
        "A terrible, boring film. I hated every awful minute of it.",
        "",
    ])
    assert pos > 0.5
    assert neg < -0.5
    assert neutral == 0.0
    assert all(isinstance(x, float) for x in (pos, neg, neutral))


def test_vader_range_and_string_guard():
    scores = sentiment_reward(["good " * 50, "bad " * 50])
    assert all(-1.0 <= s <= 1.0 for s in scores)
    with pytest.raises(TypeError):
        sentiment_reward("a plain string")


def test_registry():
    assert get_reward("sentiment") is sentiment_reward
    assert REWARDS == {"sentiment": sentiment_reward}
    with pytest.raises(KeyError, match="valid names: sentiment"):
        get_reward("toxicity")


def test_mean_ci95_by_hand():
    # [1, 2, 3, 4]: mean 2.5, s^2 = 5/3, se = sqrt(5/12) = 0.645497, t_{0.975,3} = 3.1824
    mean, (lo, hi) = mean_ci95([1, 2, 3, 4])
    assert mean == 2.5
    half = 3.1824 * math.sqrt(5 / 12)
    assert lo == pytest.approx(2.5 - half, abs=1e-9) and hi == pytest.approx(2.5 + half, abs=1e-9)
    assert hi - lo == pytest.approx(4.108461, abs=1e-5)  # 2 * 3.1824 * 0.645497
    # [0, 2]: mean 1, s = sqrt(2), se = 1, t_{0.975,1} = 12.7062
    assert mean_ci95(torch.tensor([0.0, 2.0])) == (1.0, (1 - 12.7062, 1 + 12.7062))


def test_mean_ci95_edge_cases():
    mean, (lo, hi) = mean_ci95([0.3])
    assert mean == 0.3 and math.isnan(lo) and math.isnan(hi)
    assert mean_ci95([0.5] * 10) == (0.5, (0.5, 0.5))
    with pytest.raises(ValueError):
        mean_ci95([])


def test_t_quantile_known_values():
    assert t_quantile_975(1) == 12.7062
    assert t_quantile_975(30) == 2.0423
    # Beyond the table (Cornish-Fisher): published values t_{0.975,40}=2.0211, 120 -> 1.9799.
    assert t_quantile_975(40) == pytest.approx(2.021075, abs=1e-5)
    assert t_quantile_975(120) == pytest.approx(1.979930, abs=1e-5)
    assert t_quantile_975(10**7) == pytest.approx(1.959964, abs=1e-5)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_t_quantile_matches_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in [1, 2, 5, 17, 30, 31, 45, 64, 200, 5000]:
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=6e-5)


def test_win_rate_with_ties():
    # wins at 0 and 3, tie at 1, loss at 2 -> (2 + 0.5) / 4
    assert win_rate([0.9, 0.2, -0.1, 0.5], [0.1, 0.2, 0.3, 0.0]) == 0.625
    assert win_rate([0.0, 0.0], [0.0, 0.0]) == 0.5
    assert win_rate([1.0], [0.0]) == 1.0 and win_rate([0.0], [1.0]) == 0.0
    with pytest.raises(ValueError):
        win_rate([1.0, 2.0], [1.0])


def test_sequence_kl():
    # differences 1.0, -0.5, 2.5 -> mean 1.0 nats
    assert sequence_kl([-10.0, -20.0, -5.5], [-11.0, -19.5, -8.0]) == pytest.approx(1.0)
    assert sequence_kl(torch.tensor([-3.0, -4.0]), torch.tensor([-3.0, -4.0])) == 0.0
    with pytest.raises(ValueError):
        sequence_kl([-1.0], [])
