"""Preference losses: pure functions of per-pair log-probability tensors.

Notation: πc, πr = policy log-probs of the chosen / rejected completion,
rc, rr = the reference's, all of shape (batch,);

    h = (πc − rc) − (πr − rr)          the log-ratio margin
    chosen_reward   = β (πc − rc)      implicit rewards (DPO paper §5)
    rejected_reward = β (πr − rr)

Every loss returns `(losses, chosen_rewards, rejected_rewards)`, each (batch,), unreduced;
rewards carry no gradient. The caller reduces (mean) and decides whether log-probs are summed
over tokens or averaged per token.

Reference-free losses (SimPO, ORPO; `LossSpec.reference_free`) take only the policy's
per-token mean log-probs ℓc = πc/|yc|, ℓr = πr/|yr|, as `(policy_chosen_logps,
policy_rejected_logps)`: the trainer then runs no reference pass and holds no reference.
"""

from __future__ import annotations

import math
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


def panel_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta: float,
                   vote_counts: Tensor) -> LossOutput:
    """Panel DPO (ours, for a panel of annotators who disagree systematically): with
    n = votes on the pair (c for chosen + r for rejected, `vote_counts` (B, 2)),

        L = −(1/n) [ 1{r = 0} log σ(n β h) + 1{c = 0} log σ(−n β h) ]

    Only unanimous pairs carry loss; a split vote gives L = 0 and no gradient. A pair
    without votes counts as one vote for chosen (c = 1, r = 0): then L is DPO's.

    Why (the derivation is in docs/studies.md): annotators a = 1..n vote independently,
    a for chosen with probability P_a. Setting the expected gradient to zero,
    Π_a P_a · σ(−nβh) = Π_a (1 − P_a) · σ(nβh), gives

        n β h* = Σ_a logit P_a          (the minimiser of the expected loss)

    For Bradley–Terry annotators, P_a = σ(Δz_k(a) / T) with Δz the standardised score gap of
    the annotator's criterion k(a), this is β h* = Σ_k w_k Δz_k / T = ΔU / T: the implicit
    reward recovers the mixture's expected utility U = Σ_k w_k z_k (w_k = criterion k's share
    of the panel), whatever the disagreement. Soft labels give σ(βh*) = (1/n) Σ_a P_a (the
    vote share, which counts preferences instead of weighing them) and majority labels
    σ(βh*) = P(majority prefers chosen). The 1/n keeps the gradient in βh the size of DPO's."""
    h, cr, rr = _margin_and_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    counts = torch.as_tensor(vote_counts, dtype=h.dtype, device=h.device).reshape(-1, 2)
    for_chosen, for_rejected = counts[:, 0], counts[:, 1]
    n = for_chosen + for_rejected
    if bool((n <= 0).any()) or bool((counts < 0).any()):
        raise ValueError("vote_counts must be non-negative with at least one vote per pair")
    z = n * beta * h
    all_chosen, all_rejected = (for_rejected == 0).to(h.dtype), (for_chosen == 0).to(h.dtype)
    losses = -(all_chosen * F.logsigmoid(z) + all_rejected * F.logsigmoid(-z)) / n
    return losses, cr, rr


def simpo_loss(policy_chosen_logps, policy_rejected_logps, *, beta: float, gamma: float) -> LossOutput:
    """SimPO (Meng et al. 2024, eq. 6), no reference; ℓ = per-token mean log-probs:

        L = −log σ(β ℓc − β ℓr − γ)

    γ is the target reward margin (the paper uses β ≈ 2–2.5 with γ/β ≈ 0.5).
    Rewards: β ℓc, β ℓr (the paper's length-normalised implicit reward, eq. 4)."""
    chosen, rejected = beta * policy_chosen_logps, beta * policy_rejected_logps
    return -F.logsigmoid(chosen - rejected - gamma), chosen.detach(), rejected.detach()


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − eˣ) for x < 0, accurate everywhere (Mächler 2012, "Accurately computing
    log(1 − exp(−|a|))"): log(−expm1(x)) for x > −ln 2, log1p(−eˣ) below.

    The naive log1p(−eˣ) loses precision near 0: in fp32, e^(−1e-6) rounds to 1 − 1.013e-6."""
    near = x > -math.log(2)
    # Feed each branch a harmless value where it is not used: torch.where passes a zero
    # gradient to the unused branch, and 0 · ∞ from log(0) there would still make a NaN.
    safe = torch.full_like(x, -1.0)
    x_near, x_far = torch.where(near, x, safe), torch.where(near, safe, x)
    return torch.where(near, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


# ℓ = 0 exactly (every token predicted with probability 1 in float32) would give odds = ∞ and
# ∞ − ∞ in the odds ratio; ℓ is clamped just below 0 (gradients are kept for ℓ below it).
_MAX_MEAN_LOGP = -1e-7


def log_odds(mean_logps: Tensor) -> Tensor:
    """log odds(y) = log[P / (1 − P)] = ℓ − log(1 − e^ℓ), with P = e^ℓ the per-token
    geometric-mean probability (Hong et al. 2024, §4.1); finite for ℓ ≤ 0."""
    ell = mean_logps.clamp(max=_MAX_MEAN_LOGP)
    return ell - log1mexp(ell)


def orpo_loss(policy_chosen_logps, policy_rejected_logps, *, beta: float, lam: float) -> LossOutput:
    """ORPO (Hong et al. 2024, eqs. 6–7), no reference; ℓ = per-token mean log-probs:

        L = NLL(chosen)/|chosen| − λ log σ(log odds_c − log odds_r),   NLL/|y| = −ℓc

    λ ≈ 0.1–0.25. Rewards: β ℓc, β ℓr, as for SimPO (β is not in L; it only scales these
    metrics). Not λ log odds: β ℓ stays informative at λ = 0, and the accuracies agree either
    way, since log odds increases with ℓ."""
    odds_ratio = log_odds(policy_chosen_logps) - log_odds(policy_rejected_logps)
    losses = -policy_chosen_logps - lam * F.logsigmoid(odds_ratio)
    return losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach()


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
    # fn takes policy log-probs only: the trainer builds, caches and calls no reference.
    reference_free: bool = False


LOSSES: dict[str, LossSpec] = {
    "dpo": LossSpec(dpo_loss),
    "cdpo": LossSpec(cdpo_loss, ("label_smoothing",)),
    "robust": LossSpec(robust_dpo_loss, ("label_smoothing",)),
    "ipo": LossSpec(ipo_loss, average_logps=True),
    "hinge": LossSpec(hinge_loss),
    "soft": LossSpec(soft_dpo_loss, ("target_prob",)),
    "panel": LossSpec(panel_dpo_loss, ("vote_counts",)),
    "simpo": LossSpec(simpo_loss, ("gamma",), average_logps=True, reference_free=True),
    "orpo": LossSpec(orpo_loss, ("lam",), average_logps=True, reference_free=True),
}


def get_loss(name: str) -> LossSpec:
    """The registry entry for `name`, or a clear error listing the valid names."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))}") from None
