"""Losses on data that is not a chosen/rejected pair: KTO (unpaired desirable / undesirable
completions) and RRHF (K ranked completions per prompt). Pure functions of log-prob tensors,
unreduced, like dpokit.losses.

KTO (Ethayarajh et al. 2024, eq. 7–8). With the log-ratio r(x, y) = log πθ(y|x) − log πref(y|x)
and a reference point z0 ≥ 0 (an estimate of KL(πθ ‖ πref), carrying no gradient):

    desirable y:    L = λ_D · (1 − σ(β (r − z0)))
    undesirable y:  L = λ_U · (1 − σ(β (z0 − r)))

z0 is estimated from *mismatched* pairs (x_i, y_j), j ≠ i: completions the policy was not
asked for, so their log-ratio measures how far the policy has moved overall, not how much it
likes its own answers: z0 = max(0, mean_i r(x_i, y_j(i))). Where it is computed matters:

  - odd batches: a mismatched partner must exist for every row, also for one row
    (`mismatched_partners` refuses n < 2 rather than pairing a row with itself);
  - gradient accumulation and several processes: z0 is one number for the whole optimizer
    step, so each micro-batch / rank contributes a (sum, count) and z0 is formed from the
    totals (`kto_reference_point`), never a mean of per-micro-batch means.

Eq. 8: the weights should satisfy 1 ≤ λ_D·n_D / (λ_U·n_U) ≤ 4/3 (n_D, n_U: desirable and
undesirable examples), so that a skewed data set does not tip the loss toward one side;
`kto_weight_ratio` computes it and `check_kto_weights` says what to change.

RRHF (Yuan et al. 2023, eq. 2–4): for K responses y_i with scores s_i and length-normalised
log-probs p_i = log πθ(y_i|x) / |y_i|,

    L_rank = Σ_{s_i < s_j} max(0, p_i − p_j),    L_ft = −log πθ(y_best|x),    L = w·L_rank + L_ft

(y_best: the highest score; ties in score contribute no ranking term). No reference model.
The paper's eq. 4 sums L_ft over the tokens of y_best with w = 1; the authors' code averages it
over the tokens (as p_i is) and weights the ranking term by w = 100. With the sum, a 50-token
response's NLL (~400 nats at the start on examples/rrhf.jsonl) outweighs the ranking hinge
(~0.02) by four orders of magnitude and the ranking is not learned, so the default here is the
code's: `ft_per_token=True`, and dpokit's `rrhf_rank_weight` defaults to 100.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


# -- KTO ----------------------------------------------------------------------------------------
def mismatched_partners(n: int) -> list[int]:
    """For rows 0..n−1, the row whose completion each row is paired with to estimate z0:
    j(i) = (i + 1) mod n, a different row for every i whenever n ≥ 2 (odd n included)."""
    if n < 2:
        raise ValueError(f"KTO's reference point needs at least 2 examples per batch to form mismatched pairs, got {n}")
    return [(i + 1) % n for i in range(n)]


def kto_reference_point(mismatched_logratio_sum: Tensor | float, count: int) -> Tensor:
    """z0 = max(0, Σ r(x_i, y_j(i)) / count) over every mismatched pair of the optimizer step
    (all micro-batches, all ranks summed before dividing); no gradient."""
    if count <= 0:
        raise ValueError("KTO's reference point needs at least one mismatched pair")
    total = torch.as_tensor(mismatched_logratio_sum, dtype=torch.float32).detach()
    return torch.clamp(total / count, min=0.0)


def kto_loss(policy_logps: Tensor, ref_logps: Tensor, desirable: Tensor, z0: Tensor | float, *, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-example KTO losses (B,) and the implicit rewards β·r (B, no gradient).

    `policy_logps`, `ref_logps`: summed completion log-probs (B,); `desirable`: bool (B,);
    `z0`: the step's reference point (kto_reference_point). At initialisation (policy =
    reference, so r = 0 and z0 = 0) every loss is λ·(1 − σ(0)) = λ/2."""
    r = policy_logps - ref_logps
    z0 = torch.as_tensor(z0, dtype=r.dtype, device=r.device).detach()
    good = desirable.to(torch.bool)
    losses = torch.where(
        good,
        desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))),
    )
    return losses, (beta * r).detach()


def kto_weight_ratio(n_desirable: int, n_undesirable: int, desirable_weight: float, undesirable_weight: float) -> float:
    """λ_D·n_D / (λ_U·n_U) (eq. 8 asks for a value in [1, 4/3]); inf without undesirable data."""
    if n_undesirable == 0 or undesirable_weight == 0:
        return float("inf")
    return desirable_weight * n_desirable / (undesirable_weight * n_undesirable)


def check_kto_weights(n_desirable: int, n_undesirable: int, desirable_weight: float, undesirable_weight: float) -> str | None:
    """None when eq. 8 holds; otherwise one line naming the ratio and a λ_D that satisfies it."""
    ratio = kto_weight_ratio(n_desirable, n_undesirable, desirable_weight, undesirable_weight)
    if 1.0 <= ratio <= 4 / 3:
        return None
    if n_desirable == 0 or n_undesirable == 0:
        return f"KTO needs desirable and undesirable examples (got {n_desirable} and {n_undesirable})"
    fit = undesirable_weight * n_undesirable / n_desirable  # λ_D giving ratio exactly 1
    return (f"λ_D·n_D / (λ_U·n_U) = {desirable_weight:g}·{n_desirable} / ({undesirable_weight:g}·{n_undesirable}) = {ratio:.3f}, "
            f"outside [1, 4/3] (Ethayarajh et al. 2024, eq. 8); e.g. desirable_weight={fit:.3g}…{fit * 4 / 3:.3g}")


# -- RRHF ---------------------------------------------------------------------------------------
def rrhf_loss(logps: Tensor, counts: Tensor, scores: Tensor, valid: Tensor | None = None, *,
              rank_weight: float = 1.0, ft_per_token: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Per-prompt RRHF losses (B,), with their ranking and fine-tuning parts (B,) each.

    `logps`: summed log-probs of each response (B, K); `counts`: its tokens (B, K);
    `scores`: (B, K); `valid`: which of the K slots hold a response (B, K; all when None).
    p = logps / counts; L_rank sums max(0, p_i − p_j) over valid pairs with s_i < s_j;
    L_ft = −p (ft_per_token) or −logps (eq. 4) of the best-scored valid response (first of equals)."""
    valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid.to(torch.bool)
    p = logps / counts.clamp(min=1).to(logps.dtype)
    worse = (scores[:, :, None] < scores[:, None, :]) & valid[:, :, None] & valid[:, None, :]  # [b, i, j]: s_i < s_j
    hinge = torch.relu(p[:, :, None] - p[:, None, :])
    rank = (hinge * worse).sum(dim=(1, 2))
    masked_scores = scores.masked_fill(~valid, float("-inf"))
    best = masked_scores.argmax(dim=1)
    ft = -(p if ft_per_token else logps).gather(1, best[:, None]).squeeze(1)
    return rank_weight * rank + ft, rank, ft
