"""Each loss against numbers worked out by hand (torchtune's trick: margins h = 0, 10, 20 at
β = 0.1 make βh = 0, 1, 2)."""

import math

import pytest
import torch

from dpokit import losses as L

# policy chosen − ref chosen = 0, 6, 15;  policy rejected − ref rejected = 0, −4, −5  →  h = 0, 10, 20
PC = torch.tensor([-10.0, -4.0, 5.0])
PR = torch.tensor([-12.0, -16.0, -17.0])
RC = torch.tensor([-10.0, -10.0, -10.0])
RR = torch.tensor([-12.0, -12.0, -12.0])
BETA = 0.1


def logsig(x):
    return math.log(1 / (1 + math.exp(-x)))


def test_dpo_hand_values_and_rewards():
    losses, cr, rr = L.dpo_loss(PC, PR, RC, RR, beta=BETA)
    assert losses.tolist() == pytest.approx([-logsig(0), -logsig(1), -logsig(2)], abs=1e-6)
    assert losses.tolist() == pytest.approx([0.693147, 0.313262, 0.126928], abs=1e-6)
    assert cr.tolist() == pytest.approx([0.0, 0.6, 1.5])
    assert rr.tolist() == pytest.approx([0.0, -0.4, -0.5])


def test_dpo_is_ln2_when_policy_equals_reference():
    x = torch.randn(5) * 30
    y = torch.randn(5) * 30
    losses, _, _ = L.dpo_loss(x, y, x.clone(), y.clone(), beta=0.37)
    assert torch.allclose(losses, torch.full((5,), math.log(2)))


def test_dpo_sign_prefers_chosen():
    # Raising the chosen log-prob must lower the loss (a sign error would raise it).
    pc = torch.tensor([-10.0], requires_grad=True)
    loss, _, _ = L.dpo_loss(pc, torch.tensor([-12.0]), torch.tensor([-10.0]), torch.tensor([-12.0]), beta=BETA)
    loss.sum().backward()
    assert pc.grad.item() == pytest.approx(-BETA * 0.5)


def test_cdpo_hand_values():
    eps = 0.2
    losses, _, _ = L.cdpo_loss(PC, PR, RC, RR, beta=BETA, label_smoothing=eps)
    want = [-(1 - eps) * logsig(z) - eps * logsig(-z) for z in (0, 1, 2)]
    assert losses.tolist() == pytest.approx(want, abs=1e-6)
    # βh=1: −0.8·log σ(1) − 0.2·log σ(−1) = 0.8·0.313262 + 0.2·1.313262 = 0.513262
    assert losses[1].item() == pytest.approx(0.513262, abs=1e-6)
    zero, _, _ = L.cdpo_loss(PC, PR, RC, RR, beta=BETA, label_smoothing=0.0)
    assert torch.allclose(zero, L.dpo_loss(PC, PR, RC, RR, beta=BETA)[0])


def test_robust_hand_values():
    eps = 0.2
    losses, _, _ = L.robust_dpo_loss(PC, PR, RC, RR, beta=BETA, label_smoothing=eps)
    # βh=1: (0.8·0.313262 − 0.2·1.313262) / 0.6 = (0.250610 − 0.262652) / 0.6 = −0.020071
    assert losses[1].item() == pytest.approx(-0.020071, abs=1e-5)
    # βh=0: (0.8·ln2 − 0.2·ln2) / 0.6 = ln 2
    assert losses[0].item() == pytest.approx(math.log(2), abs=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        L.robust_dpo_loss(PC, PR, RC, RR, beta=BETA, label_smoothing=0.5)


def test_ipo_hand_values():
    losses, _, _ = L.ipo_loss(PC, PR, RC, RR, beta=BETA)
    # 1/(2β) = 5  →  (0−5)², (10−5)², (20−5)²
    assert losses.tolist() == pytest.approx([25.0, 25.0, 225.0])


def test_hinge_hand_values():
    losses, _, _ = L.hinge_loss(PC, PR, RC, RR, beta=BETA)
    # max(0, 1 − βh) for βh = 0, 1, 2
    assert losses.tolist() == pytest.approx([1.0, 0.0, 0.0])
    half, _, _ = L.hinge_loss(PC, PR, RC, RR, beta=0.05)
    assert half.tolist() == pytest.approx([1.0, 0.5, 0.0])


def test_soft_label_reduces_to_dpo_and_cdpo():
    q1 = torch.ones(3)
    assert torch.allclose(L.soft_dpo_loss(PC, PR, RC, RR, beta=BETA, target_prob=q1)[0], L.dpo_loss(PC, PR, RC, RR, beta=BETA)[0])
    q = torch.full((3,), 0.8)
    assert torch.allclose(
        L.soft_dpo_loss(PC, PR, RC, RR, beta=BETA, target_prob=q)[0],
        L.cdpo_loss(PC, PR, RC, RR, beta=BETA, label_smoothing=0.2)[0],
    )
    # q = 0.5 at βh = 2: −0.5 log σ(2) − 0.5 log σ(−2) = 0.5·(0.126928 + 2.126928) = 1.126928
    half = L.soft_dpo_loss(PC, PR, RC, RR, beta=BETA, target_prob=torch.full((3,), 0.5))[0]
    assert half[2].item() == pytest.approx(1.126928, abs=1e-6)


def test_nll_per_token():
    assert L.nll_loss(torch.tensor([-6.0, -3.0]), torch.tensor([3, 1])).tolist() == [2.0, 3.0]


def test_rewards_carry_no_gradient():
    pc = PC.clone().requires_grad_()
    _, cr, _ = L.dpo_loss(pc, PR, RC, RR, beta=BETA)
    assert not cr.requires_grad


def test_registry_names_map_to_distinct_functions():
    fns = [spec.fn for spec in L.LOSSES.values()]
    assert len(set(fns)) == len(fns)
    assert {"dpo", "cdpo", "robust", "ipo", "hinge"} <= set(L.LOSSES)
    assert L.get_loss("dpo").fn is L.dpo_loss
    assert L.get_loss("ipo").fn is L.ipo_loss and L.get_loss("ipo").average_logps
    assert L.get_loss("robust").fn is L.robust_dpo_loss
    with pytest.raises(ValueError, match="valid: cdpo, dpo"):
        L.get_loss("dpoo")
