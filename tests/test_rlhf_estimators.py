"""The RLHF estimators against numbers worked out by hand (arithmetic in the comments) and,
where one exists, an exact property (an expectation by enumeration, a brute-force loop).

Tolerances: hand numbers are written to 6 decimals, so 1e-6; float64 identities (exact
expectations, brute force) hold to rounding, so 1e-10."""

import itertools
import json
import math
from dataclasses import asdict

import pytest
import torch

from dpokit.rlhf import estimators as E

NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# KL estimators


def test_kl_estimators_hand_values():
    # token 0: π = 0.5, π_ref = 0.25 → log r = −ln 2:  k1 = 0.693147, k2 = ½·0.480453 = 0.240227,
    #          k3 = (0.5 − 1) + 0.693147 = 0.193147
    # token 1: π = 0.2, π_ref = 0.4  → log r = +ln 2:  k1 = −0.693147, k2 = 0.240227,
    #          k3 = (2 − 1) − 0.693147 = 0.306853
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.4)])
    assert E.kl_k1(logp, ref).tolist() == pytest.approx([0.693147, -0.693147], abs=1e-6)
    assert E.kl_k2(logp, ref).tolist() == pytest.approx([0.240227, 0.240227], abs=1e-6)
    assert E.kl_k3(logp, ref).tolist() == pytest.approx([0.193147, 0.306853], abs=1e-6)
    assert torch.equal(E.kl_estimate(logp, ref, "k3"), E.kl_k3(logp, ref))
    with pytest.raises(ValueError, match="k4"):
        E.kl_estimate(logp, ref, "k4")


def _expectation(pi: torch.Tensor, ref: torch.Tensor, kind: str) -> float:
    # E_π[k(y)] by enumerating the outcomes y of a categorical distribution.
    return float((pi * E.kl_estimate(pi.log(), ref.log(), kind)).sum())


def test_k1_and_k3_are_unbiased_k2_is_not():
    # π = (0.5, 0.3, 0.2), π_ref = (0.2, 0.2, 0.6):
    # KL = 0.5 ln 2.5 + 0.3 ln 1.5 + 0.2 ln(1/3) = 0.458145 + 0.121640 − 0.219722 = 0.360063
    # E[k2] = ½ (0.5·0.839589 + 0.3·0.164402 + 0.2·1.206949) = ½·0.710505 = 0.355253 (biased)
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    ref = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    assert _expectation(pi, ref, "k1") == pytest.approx(0.360063, abs=1e-6)
    assert _expectation(pi, ref, "k3") == pytest.approx(0.360063, abs=1e-6)
    assert _expectation(pi, ref, "k2") == pytest.approx(0.355253, abs=1e-6)


def test_unbiasedness_on_random_categoricals():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        # Normalised exponentials are Dirichlet(1): uniform random distributions over 6 outcomes.
        pi, ref = (-torch.rand(2, 6, generator=gen, dtype=torch.float64).log()).unbind(0)
        pi, ref = pi / pi.sum(), ref / ref.sum()
        exact = float((pi * (pi.log() - ref.log())).sum())
        assert _expectation(pi, ref, "k1") == pytest.approx(exact, abs=1e-10)
        assert _expectation(pi, ref, "k3") == pytest.approx(exact, abs=1e-10)
        # k3 is pointwise >= 0 (x − 1 − log x >= 0), k1 is not.
        assert bool((E.kl_k3(pi.log(), ref.log()) >= 0).all())


# ---------------------------------------------------------------------------------------------
# PPO rewards, GAE


def test_ppo_token_rewards_hand_values():
    # β = 0.1. row 0: completion of 3 tokens, then padding (nan log-prob must be ignored)
    #   k1 = (−1 + 1.5, −2 + 1, −0.5 + 0.5) = (0.5, −1, 0) → r = (−0.05, 0.1, 0 + score 2)
    # row 1: 4 tokens, k1 = (1, 0, 0, 2) → r = (−0.1, 0, 0, −0.2 + score −1 = −1.2)
    # row 2: mask starts late (prompt positions 0); k1 = (_, 0.5, 0.5, _), score 3 at index 2
    #   → r = (0, −0.05, −0.05 + 3 = 2.95, 0)
    logp = torch.tensor([[-1.0, -2.0, -0.5, NAN], [-1.0, -1.0, -1.0, -1.0], [NAN, -1.0, -1.0, NAN]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-2.0, -1.0, -1.0, -3.0], [0.0, -1.5, -1.5, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 0]])
    scores = torch.tensor([2.0, -1.0, 3.0])
    rewards, kl = E.ppo_token_rewards(scores, logp, ref, mask, beta=0.1)
    assert rewards.tolist()[0] == pytest.approx([-0.05, 0.1, 2.0, 0.0], abs=1e-6)
    assert rewards.tolist()[1] == pytest.approx([-0.1, 0.0, 0.0, -1.2], abs=1e-6)
    assert rewards.tolist()[2] == pytest.approx([0.0, -0.05, 2.95, 0.0], abs=1e-6)
    assert kl.tolist()[0] == pytest.approx([0.5, -1.0, 0.0, 0.0], abs=1e-6)
    # Σ rewards per row = score − β Σ k1 (the sequence-level InstructGPT reward).
    assert rewards.sum(1).tolist() == pytest.approx((scores - 0.1 * kl.sum(1)).tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="at least one valid"):
        E.ppo_token_rewards(scores, logp, ref, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]), beta=0.1)


def test_gae_hand_values_gamma_1_lambda_095():
    # r = (0, 0, 1), V = (0.5, 0.4, 0.8), V after the last token = 0; a padded 4th position
    # holds garbage that must change nothing.
    # δ2 = 1 + 0 − 0.8 = 0.2;  δ1 = 0 + 0.8 − 0.4 = 0.4;  δ0 = 0 + 0.4 − 0.5 = −0.1
    # A2 = 0.2;  A1 = 0.4 + 0.95·0.2 = 0.59;  A0 = −0.1 + 0.95·0.59 = 0.4605
    # R = A + V = (0.9605, 0.99, 1.0)
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0]])
    values = torch.tensor([[0.5, 0.4, 0.8, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = E.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert adv.tolist()[0] == pytest.approx([0.4605, 0.59, 0.2, 0.0], abs=1e-6)
    assert ret.tolist()[0] == pytest.approx([0.9605, 0.99, 1.0, 0.0], abs=1e-6)


def _gae_brute_force(rewards, values, mask, gamma, lam):
    # A_t = Σ_l (γλ)^l δ_{t+l} summed explicitly over the row's valid positions, in order.
    adv = torch.zeros_like(values)
    for b in range(values.shape[0]):
        idx = [t for t in range(values.shape[1]) if mask[b, t]]
        deltas = []
        for j, t in enumerate(idx):
            v_next = values[b, idx[j + 1]] if j + 1 < len(idx) else 0.0
            deltas.append(rewards[b, t] + gamma * v_next - values[b, t])
        for j, t in enumerate(idx):
            adv[b, t] = sum((gamma * lam) ** l * deltas[j + l] for l in range(len(idx) - j))
    return adv


@pytest.mark.parametrize("layout", ["right_padded", "holes"])
def test_gae_matches_brute_force(layout):
    gen = torch.Generator().manual_seed(1)
    b, t = 5, 9
    rewards = torch.randn(b, t, generator=gen, dtype=torch.float64)
    values = torch.randn(b, t, generator=gen, dtype=torch.float64)
    if layout == "right_padded":
        lengths = torch.tensor([9, 1, 4, 7, 0])
        mask = torch.arange(t)[None] < lengths[:, None]
    else:
        mask = torch.rand(b, t, generator=gen) < 0.6
    for gamma, lam in [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0)]:
        adv, ret = E.gae(rewards, values, mask, gamma=gamma, lam=lam)
        want = _gae_brute_force(rewards, values, mask, gamma, lam)
        assert torch.allclose(adv, want, atol=1e-10)
        assert torch.allclose(ret, torch.where(mask, want + values, 0.0), atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Masked statistics


def test_masked_stats_and_whitening_hand_values():
    # valid x = (1, 3, 5): mean 3, biased var 8/3, unbiased var 8/2 = 4 → std 2
    # whitened = (−1, 0, 1); keeping the mean: (2, 3, 4). The masked 100 is ignored.
    x = torch.tensor([[1.0, 3.0], [5.0, 100.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    assert E.masked_mean(x, mask).item() == pytest.approx(3.0)
    assert E.masked_mean(x, mask, dim=1).tolist() == pytest.approx([2.0, 5.0])
    assert E.masked_var(x, mask, unbiased=False).item() == pytest.approx(8 / 3)
    assert E.masked_var(x, mask).item() == pytest.approx(4.0)
    assert E.masked_whiten(x, mask).tolist() == [pytest.approx([-1.0, 0.0], abs=1e-6), pytest.approx([1.0, 0.0], abs=1e-6)]
    kept = E.masked_whiten(x, mask, shift_mean=False)
    assert kept.tolist() == [pytest.approx([2.0, 3.0], abs=1e-6), pytest.approx([4.0, 0.0], abs=1e-6)]
    with pytest.raises(ValueError, match="at least 2"):
        E.masked_var(x, torch.tensor([[1, 0], [0, 0]]))


def test_whitening_property_on_random_masked_input():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 11, generator=gen, dtype=torch.float64) * 5 + 3
    mask = torch.rand(6, 11, generator=gen) < 0.5
    w = E.masked_whiten(x, mask)
    assert E.masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-10)
    # eps = 1e-8 inside the sqrt shifts the variance by ~1e-8 / var(x) ≈ 4e-10.
    assert E.masked_var(w, mask).item() == pytest.approx(1.0, abs=1e-8)
    assert bool((w[~mask] == 0).all())


# ---------------------------------------------------------------------------------------------
# PPO losses, entropy, explained variance


def test_ppo_policy_loss_hand_values_and_gradient():
    # ε = 0.2, per token −min(ρA, clip(ρ)A) = max(−ρA, −clip(ρ)A):
    #   t0 ρ=1.5 A=+1: max(−1.5, −1.2) = −1.2   (clipped term active)
    #   t1 ρ=0.5 A=+1: max(−0.5, −0.8) = −0.5
    #   t2 ρ=0.5 A=−2: max( 1.0,  1.6) =  1.6   (clipped term active)
    #   t3 ρ=1.0 A=+3: −3
    #   t4 masked (garbage)
    # loss = (−1.2 − 0.5 + 1.6 − 3) / 4 = −0.775; clip_frac = 2/4
    # approx_kl = mean((ρ−1) − ln ρ) = (0.094535 + 0.193147 + 0.193147 + 0) / 4 = 0.120207
    old = torch.zeros(1, 5)
    logp = torch.tensor([[math.log(1.5), math.log(0.5), math.log(0.5), 0.0, 9.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, -2.0, 3.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    out = E.ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    assert out.loss.item() == pytest.approx(-0.775, abs=1e-6)
    assert out.clip_frac.item() == pytest.approx(0.5)
    assert out.approx_kl.item() == pytest.approx(0.120207, abs=1e-6)
    out.loss.backward()
    # d/dlogp of −ρA/4 = −ρA/4 where unclipped is active; 0 where the clip is active or masked:
    # t1: −0.5/4 = −0.125; t3: −3/4 = −0.75
    assert logp.grad.tolist()[0] == pytest.approx([0.0, -0.125, 0.0, -0.75, 0.0], abs=1e-6)


def test_ppo_value_loss_hand_values():
    # ε = 0.2:
    #   t0 V=1.0 V_old=0.5 R=1: clip(V)=0.7 → max(0², 0.3²) = 0.09 (clipped larger)
    #   t1 V=0.6 V_old=0.5 R=0: clip(V)=0.6 → 0.36 (equal, not counted as clipped)
    #   t2 V=0.0 V_old=0.5 R=1: clip(V)=0.3 → max(1.0, 0.49) = 1.0
    # loss = ½ (0.09 + 0.36 + 1.0) / 3 = 0.241667; clip_frac = 1/3
    values = torch.tensor([[1.0, 0.6, 0.0, 4.0]])
    old = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    returns = torch.tensor([[1.0, 0.0, 1.0, NAN]])  # masked: must not turn the loss into nan
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clip_frac = E.ppo_value_loss(values, old, returns, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.241667, abs=1e-6)
    assert clip_frac.item() == pytest.approx(1 / 3)


def test_entropy_from_logits_hand_values():
    # token 0 uniform over 4: ln 4 = 1.386294
    # token 1 logits (0, ln3, ln3, ln3): p = (0.1, 0.3, 0.3, 0.3),
    #   H = 0.1 ln 10 + 0.9 ln(10/3) = 0.230259 + 1.083576 = 1.313835
    # token 2 masked. mean = (1.386294 + 1.313835) / 2 = 1.350065
    l3 = math.log(3)
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, l3, l3, l3], [50.0, 0.0, 0.0, 0.0]]])
    assert E.entropy_from_logits(logits, torch.tensor([[1, 1, 0]])).item() == pytest.approx(1.350065, abs=1e-6)


def test_explained_variance_hand_values():
    # R = (1, 2, 3, 4): Var R = 1.25. V = (1, 3, 3, 3): R − V = (0, −1, 0, 1), Var = 0.5
    # → 1 − 0.5/1.25 = 0.6. Perfect V → 1; constant V → 0; constant R → nan.
    mask = torch.ones(1, 5, dtype=torch.bool)
    mask[0, 4] = False
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0, 99.0]])
    assert E.explained_variance(torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]]), returns, mask).item() == pytest.approx(0.6)
    assert E.explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert E.explained_variance(torch.full((1, 5), 7.0), returns, mask).item() == pytest.approx(0.0, abs=1e-7)
    assert math.isnan(E.explained_variance(returns, torch.ones(1, 5), mask).item())


# ---------------------------------------------------------------------------------------------
# KL controllers


def test_adaptive_kl_controller_hand_values_and_json_resume():
    # β = 0.1, target 6, horizon 10000, n = 256:
    #   KL 9   → e = clip(0.5) = 0.2   → β = 0.1·(1 + 0.2·256/10000) = 0.1·1.00512 = 0.100512
    #   KL 3   → e = clip(−0.5) = −0.2 → β = 0.100512·(1 − 0.00512) = 0.099997379
    #   KL 6.6 → e = 0.1 (unclipped)   → β = 0.099997379·1.00256 = 0.100253372
    c = E.AdaptiveKLController(beta=0.1, target=6, horizon=10000)
    assert c.update(9.0, 256) == pytest.approx(0.100512, abs=1e-9)
    assert c.update(torch.tensor(3.0), 256) == pytest.approx(0.099997379, abs=1e-9)
    resumed = E.kl_controller(json.loads(json.dumps(asdict(c))))
    assert resumed == c
    assert resumed.update(6.6, 256) == pytest.approx(0.100253372, abs=1e-9)
    with pytest.raises(ValueError, match="finite"):
        c.update(float("nan"), 1)
    with pytest.raises(ValueError, match="> 0"):
        E.AdaptiveKLController(beta=0.1, target=0, horizon=10)


def test_fixed_kl_controller_same_interface():
    c = E.FixedKLController(beta=0.05)
    assert c.update(1000.0, 256) == 0.05 and c.beta == 0.05
    assert E.kl_controller(json.loads(json.dumps(asdict(c)))) == c
    with pytest.raises(ValueError, match="unknown"):
        E.kl_controller({"kind": "pid", "beta": 1.0})


# ---------------------------------------------------------------------------------------------
# RLOO


def test_rloo_hand_values_grouped_and_flat():
    # prompt 0: r = (1, 2, 6): leave-one-out means (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5
    #           → A = (−3, −1.5, 4.5)
    # prompt 1: r = (0, 0, 3): means 1.5, 1.5, 0 → A = (−1.5, −1.5, 3)
    r = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    want = [[-3.0, -1.5, 4.5], [-1.5, -1.5, 3.0]]
    assert E.rloo_advantages(r).tolist() == want
    assert E.rloo_advantages(r.reshape(-1), k=3).tolist() == sum(want, [])
    # scores (1, 2), KL (3, −1), β = 0.1 → (1 − 0.3, 2 + 0.1) = (0.7, 2.1)
    assert E.rloo_rewards(torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0]), beta=0.1).tolist() == pytest.approx([0.7, 2.1])


def test_rloo_property_and_errors():
    # A_i = k/(k−1)·(r_i − mean_prompt), so advantages sum to 0 within each prompt.
    r = torch.randn(4, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    adv = E.rloo_advantages(r)
    assert torch.allclose(adv, 5 / 4 * (r - r.mean(1, keepdim=True)), atol=1e-12)
    with pytest.raises(ValueError, match="k >= 2"):
        E.rloo_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match="k >= 2"):
        E.rloo_advantages(torch.ones(3), k=1)
    with pytest.raises(ValueError, match="dividing"):
        E.rloo_advantages(torch.ones(7), k=2)
    with pytest.raises(ValueError, match="dividing"):
        E.rloo_advantages(torch.ones(6))
    with pytest.raises(ValueError, match="disagrees"):
        E.rloo_advantages(torch.ones(2, 3), k=2)


# ---------------------------------------------------------------------------------------------
# Best-of-N


def test_best_of_n_kl_hand_values():
    # N=1: 0;  N=2: ln 2 − 1/2 = 0.193147;  N=4: ln 4 − 3/4 = 0.636294
    assert E.best_of_n_kl(1) == 0.0
    assert E.best_of_n_kl(2) == pytest.approx(0.193147, abs=1e-6)
    assert E.best_of_n_kl(4) == pytest.approx(0.636294, abs=1e-6)
    with pytest.raises(ValueError):
        E.best_of_n_kl(0)


def test_expected_max_of_n_hand_m3_n2():
    # scores {4, 1, 2}: the three pairs have maxima 2 (1,2), 4 (1,4), 4 (2,4) → mean 10/3.
    # Formula: sorted (1, 2, 4), weights C(i−1, 1)/C(3, 2) = (0, 1, 2)/3 → (0 + 2 + 8)/3 = 10/3.
    assert E.expected_max_of_n(torch.tensor([4.0, 1.0, 2.0]), 2).item() == pytest.approx(10 / 3)
    with pytest.raises(ValueError, match=r"\[1, 3\]"):
        E.expected_max_of_n(torch.tensor([4.0, 1.0, 2.0]), 4)


def test_expected_max_of_n_equals_mean_over_all_subsets():
    # Exact unbiasedness: the estimator IS the average of max over every N-subset (ties included).
    gen = torch.Generator().manual_seed(4)
    scores = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    scores[0, 3] = scores[0, 5]  # a tie
    for n in range(1, 8):
        got = E.expected_max_of_n(scores, n)
        for p in range(3):
            subsets = itertools.combinations(scores[p].tolist(), n)
            want = [max(s) for s in subsets]
            assert got[p].item() == pytest.approx(sum(want) / len(want), abs=1e-10)
    assert torch.allclose(E.expected_max_of_n(scores, 1), scores.mean(-1), atol=1e-12)
    assert torch.allclose(E.expected_max_of_n(scores, 7), scores.amax(-1), atol=1e-12)


def test_expected_max_of_n_large_m_is_finite_and_monotone():
    # C(1000, 64) ≈ 1e99 would overflow a naive float computation of the weights.
    scores = torch.randn(1000, generator=torch.Generator().manual_seed(5))
    curve = [E.expected_max_of_n(scores, n).item() for n in (1, 2, 8, 64)]
    assert all(math.isfinite(v) for v in curve)
    assert curve == sorted(curve) and curve[-1] <= scores.max().item() + 1e-6


# ---------------------------------------------------------------------------------------------
# Bradley–Terry


def test_bradley_terry_hand_values_and_stability():
    # margins (1, 0, −3, 0): −log σ(m) = (0.313262, 0.693147, ln(1 + e³) = 3.048587, 0.693147)
    # accuracy = (1 + ½ + 0 + ½) / 4 = 0.5
    losses, acc = E.bradley_terry_loss(torch.tensor([1.0, 0.0, -2.0, 3.0]), torch.tensor([0.0, 0.0, 1.0, 3.0]))
    assert losses.tolist() == pytest.approx([0.313262, 0.693147, 3.048587, 0.693147], abs=1e-6)
    assert acc.item() == 0.5
    # Huge margins: a naive −log(sigmoid(m)) gives inf at −1000; logsigmoid gives 1000.
    far, acc = E.bradley_terry_loss(torch.tensor([-1000.0, 1000.0]), torch.tensor([0.0, 0.0]))
    assert far.tolist() == pytest.approx([1000.0, 0.0])
    assert acc.item() == 0.5
