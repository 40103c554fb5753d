"""Panel DPO (dpokit.losses.panel_dpo_loss) against numbers worked out by hand, and its
consistency claim checked on the exact expected loss over every vote pattern."""

import itertools
import math

import pytest
import torch

from dpokit import losses as L
from dpokit.train.step import vote_counts

# h = 0, 10, 20 at β = 0.1 (as tests/test_losses.py): βh = 0, 1, 2
PC = torch.tensor([-10.0, -4.0, 5.0])
PR = torch.tensor([-12.0, -16.0, -17.0])
RC = torch.tensor([-10.0, -10.0, -10.0])
RR = torch.tensor([-12.0, -12.0, -12.0])
BETA = 0.1


def test_hand_values():
    counts = torch.tensor([[3.0, 0.0], [2.0, 1.0], [0.0, 2.0]])
    losses, cr, rr = L.panel_dpo_loss(PC, PR, RC, RR, beta=BETA, vote_counts=counts)
    # pair 0: unanimous for chosen, n=3, nβh = 0 → −(1/3) log σ(0) = ln2/3 = 0.231049
    # pair 1: split 2:1 → 0
    # pair 2: unanimous for rejected, n=2, nβh = 4 → −(1/2) log σ(−4) = (4 + log(1 + e^−4))/2 = 2.009075
    assert losses.tolist() == pytest.approx([0.231049, 0.0, 2.009075], abs=1e-6)
    assert cr.tolist() == pytest.approx([0.0, 0.6, 1.5])
    assert rr.tolist() == pytest.approx([0.0, -0.4, -0.5])


def test_one_vote_is_dpo_and_split_votes_have_no_gradient():
    one = torch.tensor([[1.0, 0.0]] * 3)
    assert torch.allclose(L.panel_dpo_loss(PC, PR, RC, RR, beta=BETA, vote_counts=one)[0], L.dpo_loss(PC, PR, RC, RR, beta=BETA)[0])
    pc = PC.clone().requires_grad_()
    losses, _, _ = L.panel_dpo_loss(pc, PR, RC, RR, beta=BETA, vote_counts=torch.tensor([[2.0, 1.0], [3.0, 0.0], [1.0, 1.0]]))
    losses.sum().backward()
    assert pc.grad[0].item() == 0.0 and pc.grad[2].item() == 0.0
    # unanimous pair 1 (n=3, βh=1): d/dπc of −(1/3) log σ(3β h) = −β σ(−3) = −0.1·0.047426
    assert pc.grad[1].item() == pytest.approx(-BETA / (1 + math.exp(3)), abs=1e-7)


def test_bad_counts_raise():
    with pytest.raises(ValueError, match="at least one vote"):
        L.panel_dpo_loss(PC, PR, RC, RR, beta=BETA, vote_counts=torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]))


def _expected_loss_and_grad(p: list[float], x: float) -> tuple[float, float]:
    """E[L] over all 2^n vote patterns of independent annotators (P_a = p[a]), at βh = x."""
    h = torch.tensor([x / BETA], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    total = torch.zeros(1, dtype=torch.float64)
    for pattern in itertools.product((True, False), repeat=len(p)):
        prob = math.prod(pa if v else 1 - pa for pa, v in zip(p, pattern))
        c = sum(pattern)
        counts = torch.tensor([[float(c), float(len(p) - c)]], dtype=torch.float64)
        total = total + prob * L.panel_dpo_loss(h, zero, zero, zero, beta=BETA, vote_counts=counts)[0]
    total.sum().backward()
    return total.item(), h.grad.item() * BETA  # d E[L] / d(βh)


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_expected_loss_is_minimised_at_the_mixture_utility_gap():
    # Panel: two sentiment annotators and one brevity annotator at T = 1 (w = 2/3, 1/3);
    # standardised gaps Δz_sentiment = 0.5, Δz_brevity = −3.
    p = [sig(0.5), sig(0.5), sig(-3.0)]
    du = (2 * 0.5 - 3.0) / 3  # ΔU = Σ_k w_k Δz_k = −2/3
    _, g = _expected_loss_and_grad(p, du)
    assert abs(g) < 1e-9
    assert _expected_loss_and_grad(p, du - 0.1)[1] < 0 < _expected_loss_and_grad(p, du + 0.1)[1]
    # Soft labels aim elsewhere: σ(βh*) = mean P = 0.430781 → βh* = ln(0.430781/0.569219) = −0.27866 (not −0.667).
    soft_target = math.log(sum(p) / 3 / (1 - sum(p) / 3))
    assert soft_target == pytest.approx(-0.27866, abs=1e-5)
    assert abs(soft_target - du) > 0.3


def test_vote_counts_from_the_trainer():
    class Item:
        def __init__(self, index):
            self.index = index

    got = vote_counts([Item(0), Item(1), Item(2)], {0: (3, 0), 2: (1, 2)})
    assert got.tolist() == [[3.0, 0.0], [1.0, 0.0], [1.0, 2.0]]


def test_registered():
    spec = L.get_loss("panel")
    assert spec.fn is L.panel_dpo_loss and spec.extra == ("vote_counts",) and not spec.reference_free
