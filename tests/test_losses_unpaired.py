"""KTO and RRHF against numbers worked out by hand (dpokit.losses_unpaired)."""

import math

import pytest
import torch

from dpokit import losses_unpaired as U


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_kto_hand_values():
    # r = policy − ref = 2, −2, 0, −5; desirable, undesirable, desirable, undesirable; z0 = 1, β = 0.1
    policy = torch.tensor([-10.0, -20.0, -5.0, -30.0])
    ref = torch.tensor([-12.0, -18.0, -5.0, -25.0])
    good = torch.tensor([True, False, True, False])
    losses, rewards = U.kto_loss(policy, ref, good, 1.0, beta=0.1, desirable_weight=1.0, undesirable_weight=1.5)
    expected = [1 - sig(0.1), 1.5 * (1 - sig(0.3)), 1 - sig(-0.1), 1.5 * (1 - sig(0.6))]
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert losses.tolist() == pytest.approx([0.475021, 0.638336, 0.524979, 0.531516], abs=1e-6)
    assert rewards.tolist() == pytest.approx([0.2, -0.2, 0.0, -0.5])
    assert not rewards.requires_grad


def test_kto_is_half_lambda_at_initialisation_and_its_gradients_point_the_right_way():
    x = torch.randn(4) * 20
    losses, _ = U.kto_loss(x, x.clone(), torch.tensor([True, False, True, False]), 0.0, beta=0.3,
                           desirable_weight=2.0, undesirable_weight=1.0)
    assert losses.tolist() == pytest.approx([1.0, 0.5, 1.0, 0.5])
    p = torch.tensor([-5.0, -5.0], requires_grad=True)
    U.kto_loss(p, torch.tensor([-5.0, -5.0]), torch.tensor([True, False]), 0.5, beta=0.1)[0].sum().backward()
    assert p.grad[0] < 0 < p.grad[1]  # raise the desirable completion, lower the undesirable one


def test_kto_reference_point_is_one_number_per_step_and_never_negative():
    assert float(U.kto_reference_point(torch.tensor(3.0 - 1.0), 2)) == pytest.approx(1.0)
    assert float(U.kto_reference_point(-4.0, 2)) == 0.0  # clamped at 0
    # Two micro-batches (or ranks): sums 5 over 2 pairs and −1 over 1 pair -> 4/3, not the mean of means 0.75.
    assert float(U.kto_reference_point(5.0 + -1.0, 2 + 1)) == pytest.approx(4 / 3)
    z = U.kto_reference_point(torch.tensor(2.0, requires_grad=True), 1)
    assert not z.requires_grad
    with pytest.raises(ValueError):
        U.kto_reference_point(1.0, 0)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7])
def test_mismatched_partners_never_pair_a_row_with_itself(n):
    partners = U.mismatched_partners(n)
    assert all(j != i for i, j in enumerate(partners))
    assert sorted(partners) == list(range(n))  # every completion used once
    assert U.mismatched_partners(3) == [1, 2, 0]


def test_mismatched_partners_refuse_a_single_row():
    with pytest.raises(ValueError, match="at least 2"):
        U.mismatched_partners(1)


def test_kto_weight_check_eq8():
    assert U.kto_weight_ratio(100, 100, 1.0, 1.0) == 1.0
    assert U.check_kto_weights(100, 100, 1.0, 1.0) is None
    assert U.check_kto_weights(100, 90, 1.0, 1.0) is None  # 1.11 in [1, 4/3]
    msg = U.check_kto_weights(300, 100, 1.0, 1.0)
    assert "= 3.000" in msg and "desirable_weight=0.333…0.444" in msg
    assert U.check_kto_weights(50, 100, 1.0, 1.0) is not None  # 0.5 < 1
    assert "needs desirable and undesirable" in U.check_kto_weights(10, 0, 1.0, 1.0)


def test_rrhf_hand_values():
    # Row 0: p = −10/5, −6/2, −9/3 = −2, −3, −3; scores 0.1, 0.9, 0.5.
    #   s0<s1: max(0, −2+3) = 1;  s0<s2: max(0, −2+3) = 1;  s2<s1: max(0, −3+3) = 0  -> rank 2; best = 1 -> ft 6.
    # Row 1: p = −2, −1, (invalid); scores tie 0.5, 0.5 (and 9.0 in an invalid slot) -> rank 0; best = slot 0 -> ft 4.
    logps = torch.tensor([[-10.0, -6.0, -9.0], [-4.0, -4.0, -100.0]])
    counts = torch.tensor([[5, 2, 3], [2, 4, 1]])
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.5, 0.5, 9.0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    total, rank, ft = U.rrhf_loss(logps, counts, scores, valid, ft_per_token=False)  # the paper's eq. 4
    assert rank.tolist() == [2.0, 0.0]
    assert ft.tolist() == [6.0, 4.0]
    assert total.tolist() == [8.0, 4.0]
    total100, _, ft_mean = U.rrhf_loss(logps, counts, scores, valid, rank_weight=100.0)  # the authors' code
    assert ft_mean.tolist() == [3.0, 2.0]  # −(−6/2), −(−4/2): per-token NLL of the best
    assert total100.tolist() == [203.0, 2.0]


def test_rrhf_gradient_pushes_the_better_response_up():
    logps = torch.tensor([[-10.0, -6.0]], requires_grad=True)  # p = −2 (worse, s=0), −3 (better, s=1)
    total, _, _ = U.rrhf_loss(logps, torch.tensor([[5, 2]]), torch.tensor([[0.0, 1.0]]))
    total.sum().backward()
    # d/dlogp0 = +1/5 (hinge lowers the worse one); d/dlogp1 = −1/2 (hinge) − 1/2 (per-token NLL of the best).
    assert logps.grad[0].tolist() == pytest.approx([0.2, -1.0])
