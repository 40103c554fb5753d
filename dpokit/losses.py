"""Preference losses: pure functions of per-pair log-probability tensors.

Notation (design.md §2): πc, πr = policy log-probs of the chosen / rejected completion,
rc, rr = the reference's, all of shape (batch,);

    h = (πc − rc) − (πr − rr)          the log-ratio margin
    chosen_reward   = β (πc − rc)      implicit rewards (DPO paper §5)
    rejected_reward = β (πr − rr)

Every loss returns `(losses, chosen_rewards, rejected_rewards)`, each (batch,), unreduced;
rewards carry no gradient. The caller reduces (mean) and decides whether log-probs are summed
over tokens or averaged per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
LossOutput = tuple[Tensor, Tensor, Tensor]


def _margin_and_rewards(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    chosen_ratio, rejected_ratio = pc - rc, pr - rr
    h = chosen_ratio - rejected_ratio
    return h, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta: float) -> LossOutput:
    """DPO (Rafailov et al. 2023, eq. 7):  L = −log σ(β h).

    At initialisation (policy = reference) h = 0 and L = ln 2."""
    h, cr, rr = _margin_and_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    return -F.logsigmoid(beta * h), cr, rr


def cdpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta: float, label_smoothing: float) -> LossOutput:
    """Conservative DPO (Mitchell 2023), labels flipped with probability ε:

        L = −(1 − ε) log σ(β h) − ε log σ(−β h)

    ε = 0 is DPO."""
    _check_epsilon(label_smoothing, upper=1.0)
    h, cr, rr = _margin_and_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    eps = label_smoothing
    return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h), cr, rr


def robust_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta: float, label_smoothing: float) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024, unbiased under label-flip rate ε < 0.5):

        L = [−(1 − ε) log σ(β h) + ε log σ(−β h)] / (1 − 2ε)
    """
    _check_epsilon(label_smoothing, upper=0.5)
    h, cr, rr = _margin_and_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    return losses, cr, rr


def ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta: float) -> LossOutput:
    """IPO (Azar et al. 2023, eq. 17):  L = (h − 1/(2β))².

    Here β plays the paper's τ. Whether h uses summed or per-token-mean log-probs is the
    caller's choice (`average_logps`); dpokit averages for IPO by default, as TRL does."""
    h, cr, rr = _margin_and_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    return (h - 1 / (2 * beta)) ** 2, cr, rr


def hinge_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta: float) -> LossOutput:
    """Hinge / SLiC (Zhao et al. 2023) / RSO (Liu et al. 2024):  L = max(0, 1 − β h)."""
    h, cr, rr = _margin_and_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    return torch.relu(1 - beta * h), cr, rr


def soft_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta: float, target_prob: Tensor) -> LossOutput:
    """Soft-label DPO for annotator disagreement: with q = P(chosen ≻ rejected) from votes,

        L = −q log σ(β h) − (1 − q) log σ(−β h)

    q = 1 is DPO; a constant q = 1 − ε is cDPO."""
    h, cr, rr = _margin_and_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    q = target_prob
    return -q * F.logsigmoid(beta * h) - (1 - q) * F.logsigmoid(-beta * h), cr, rr


def nll_loss(chosen_logps: Tensor, chosen_counts: Tensor) -> Tensor:
    """Per-token negative log-likelihood of each target:  L = −logp / |y|  (SFT, Preferred-FT)."""
    return -chosen_logps / chosen_counts.clamp(min=1)


def _check_epsilon(eps: float, *, upper: float) -> None:
    if not 0.0 <= eps < upper:
        raise ValueError(f"label_smoothing must be in [0, {upper}), got {eps}")


@dataclass(frozen=True)
class LossSpec:
    """A registry entry: the function and which extra keyword arguments it takes."""

    fn: Callable[..., LossOutput]
    extra: tuple[str, ...] = ()
    average_logps: bool = False  # default for whether h uses per-token-mean log-probs


LOSSES: dict[str, LossSpec] = {
    "dpo": LossSpec(dpo_loss),
    "cdpo": LossSpec(cdpo_loss, ("label_smoothing",)),
    "robust": LossSpec(robust_dpo_loss, ("label_smoothing",)),
    "ipo": LossSpec(ipo_loss, average_logps=True),
    "hinge": LossSpec(hinge_loss),
    "soft": LossSpec(soft_dpo_loss, ("target_prob",)),
}


def get_loss(name: str) -> LossSpec:
    """The registry entry for `name`, or a clear error listing the valid names."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))}") from None
