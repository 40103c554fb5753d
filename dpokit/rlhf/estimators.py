"""Estimators of the RLHF baseline: pure functions of tensors, no model and no I/O.

Layout shared by the per-token functions: tensors are (batch, T), right padded, with a
`mask` of the same shape (bool or 0/1) that is 1 on the completion tokens that count.
Positions where the mask is 0 never contribute to a value, whatever they hold (even inf or
nan), and outputs are 0 there. Gradients through such entries are finite only if the entries
are (torch.where passes 0·inf = nan back), so differentiable inputs should be finite.

Log-probabilities are those of the sampled tokens: `logp[b, t] = log π(y_t | x, y_<t)`.
Each function states its formula and source; docs/rlhf.md collects them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------
# Masked statistics


def _valid(mask: Tensor) -> Tensor:
    return mask.bool()


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ x over valid positions (all of them, or along `dim`)."""
    kept = torch.where(_valid(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ x·m / Σ m over valid positions (all of them, or along `dim`)."""
    count = _valid(mask).sum() if dim is None else _valid(mask).sum(dim)
    return masked_sum(x, mask, dim) / count.to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, *, unbiased: bool = True) -> Tensor:
    """Variance of x over all valid positions; `unbiased` applies Bessel's n/(n−1), as TRL's
    `masked_var` does (so whitened advantages match TRL's)."""
    n = int(_valid(mask).sum())
    if n == 0 or (unbiased and n < 2):
        raise ValueError(f"variance needs at least {2 if unbiased else 1} valid positions, got {n}")
    centered = x - masked_mean(x, mask)
    var = masked_mean(centered * centered, mask)
    return var * (n / (n - 1)) if unbiased else var


def masked_whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x − mean) / sqrt(var + eps) over valid positions (unbiased var), 0 elsewhere.

    With `shift_mean=False` the mean is added back: only the scale changes (TRL's option,
    used for rewards whose sign matters)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(_valid(mask), whitened, torch.zeros((), dtype=x.dtype, device=x.device))


# ---------------------------------------------------------------------------------------------
# KL estimators (Schulman 2020, "Approximating KL divergence")
#
# For y ~ π and log r = log π_ref(y) − log π(y):  E_π[k1] = E_π[k3] = KL(π‖π_ref) exactly;
# k2 is biased (its expectation is an f-divergence that agrees with KL to second order) but
# has low variance; k3 is unbiased, never negative, and has low variance when π ≈ π_ref.


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = −log r = log π(y) − log π_ref(y), per token."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = ½ (log r)², per token."""
    log_r = ref_logp - logp
    return 0.5 * log_r * log_r


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = (r − 1) − log r, per token (expm1 keeps it exact when r ≈ 1)."""
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k1") -> Tensor:
    """The per-token KL estimator named `kind` (k1, k2 or k3)."""
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"KL estimator {kind!r} unknown; use one of {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](logp, ref_logp)


# ---------------------------------------------------------------------------------------------
# PPO with a KL penalty (Ziegler et al. 2019; Ouyang et al. 2022, InstructGPT)


def last_valid_index(mask: Tensor) -> Tensor:
    """Index of the last valid position of each row, (batch,); every row needs one."""
    valid = _valid(mask)
    if not bool(valid.any(-1).all()):
        raise ValueError("every row needs at least one valid (mask = 1) position")
    positions = torch.arange(valid.shape[-1], device=valid.device)
    return torch.where(valid, positions, -1).amax(-1)


def ppo_token_rewards(scores: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, *, beta: float) -> tuple[Tensor, Tensor]:
    """Per-token rewards of PPO-RLHF: (rewards, kl), both (batch, T), 0 off the mask.

        r_t = −β·k1_t                       on every completion token
        r_T += score                        at the last valid token T of each row

    (Ziegler et al. 2019; InstructGPT eq. 2: R = r_θ(x, y) − β log π(y|x)/π_ref(y|x),
    with the log-ratio spread over tokens.) `scores` is (batch,)."""
    valid = _valid(mask)
    kl = torch.where(valid, kl_k1(logp, ref_logp), torch.zeros((), dtype=logp.dtype, device=logp.device))
    rewards = -beta * kl
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards = rewards.index_put((rows, last_valid_index(mask)), scores.to(rewards.dtype), accumulate=True)
    return rewards, kl


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16): (advantages, returns).

        δ_t = r_t + γ V_{t+1} − V_t,     A_t = Σ_l (γλ)^l δ_{t+l},     returns R_t = A_t + V_t

    with V = 0 after the last valid token. Invalid positions are skipped, not treated as
    steps: each valid token links to the next valid token of its row (for a right-padded
    completion this is the usual recursion). Both outputs are targets: no gradient."""
    valid = _valid(mask)
    zeros = torch.zeros_like(values[:, 0])
    next_value, next_adv = zeros, zeros
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        keep = valid[:, t]
        advantages[:, t] = torch.where(keep, adv, zeros)
        next_value = torch.where(keep, values[:, t], next_value)
        next_adv = torch.where(keep, adv, next_adv)
    returns = torch.where(valid, advantages + values, torch.zeros_like(values))
    return advantages, returns


@dataclass(frozen=True)
class PolicyLoss:
    loss: Tensor  # scalar, differentiable
    clip_frac: Tensor  # share of valid tokens where the clipped term is the active one
    approx_kl: Tensor  # k3 estimate of KL(π_old ‖ π) on the sampled tokens


def ppo_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, clip_eps: float = 0.2) -> PolicyLoss:
    """Clipped surrogate (Schulman et al. 2017, eq. 7), ρ = π(y_t)/π_old(y_t):

        L = masked mean of −min(ρA, clip(ρ, 1−ε, 1+ε)A)

    approx_kl = mean((ρ − 1) − log ρ): k3 with r = π/π_old on tokens sampled from π_old."""
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return PolicyLoss(loss, clip_frac, approx_kl)


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *, clip_eps: float = 0.2) -> tuple[Tensor, Tensor]:
    """Clipped value loss (as in OpenAI baselines' PPO2 and TRL): (loss, clip_frac).

        L = ½ · masked mean of max((V − R)², (clip(V, V_old − ε, V_old + ε) − R)²)

    clip_frac = share of valid tokens where the clipped term is the larger."""
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    clipped_values = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped_loss > unclipped_loss).float(), mask)
    return loss, clip_frac


def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Masked mean over tokens of H = logsumexp(z) − Σ_v softmax(z)_v z_v, logits (batch, T, V),
    computed in float32."""
    z = logits.float()
    entropy = torch.logsumexp(z, dim=-1) - (F.softmax(z, dim=-1) * z).sum(-1)
    return masked_mean(entropy, mask)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 − Var(R − V) / Var(R) over valid tokens: 1 = perfect value function, 0 = no better
    than a constant, negative = worse. nan when the returns are constant."""
    var_returns = masked_var(returns, mask, unbiased=False)
    var_residual = masked_var(returns - values, mask, unbiased=False)
    if float(var_returns) == 0.0:
        return torch.tensor(float("nan"), dtype=returns.dtype, device=returns.device)
    return 1 - var_residual / var_returns


# ---------------------------------------------------------------------------------------------
# KL coefficient controllers (Ziegler et al. 2019). State is plain floats, so a
# controller goes into a JSON checkpoint with `asdict` and comes back with `kl_controller`.


@dataclass
class AdaptiveKLController:
    """β ← β (1 + e·n/horizon),  e = clip(KL/target − 1, −0.2, 0.2)  after a batch of n samples
    whose measured KL was `KL` (the log-space proportional controller of Ziegler et al. 2019,
    with their K_β = n/horizon as TRL has it)."""

    beta: float
    target: float
    horizon: float
    kind: str = "adaptive"

    def __post_init__(self):
        self.beta, self.target, self.horizon = float(self.beta), float(self.target), float(self.horizon)
        if not (self.beta > 0 and self.target > 0 and self.horizon > 0):
            raise ValueError(f"adaptive KL controller needs beta, target, horizon > 0, got {self}")

    def update(self, current_kl: float, n_steps: int) -> float:
        kl = float(current_kl)
        if not math.isfinite(kl):
            raise ValueError(f"KL must be finite to adapt beta, got {kl}")
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.beta *= 1 + error * n_steps / self.horizon
        return self.beta


@dataclass
class FixedKLController:
    """β stays as given; same interface as the adaptive controller."""

    beta: float
    kind: str = "fixed"

    def __post_init__(self):
        self.beta = float(self.beta)
        if not self.beta >= 0:
            raise ValueError(f"fixed KL controller needs beta >= 0, got {self.beta}")

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.beta


def kl_controller(state: dict) -> AdaptiveKLController | FixedKLController:
    """The controller whose `dataclasses.asdict` is `state` (resume from a JSON checkpoint)."""
    kinds = {"adaptive": AdaptiveKLController, "fixed": FixedKLController}
    kind = state.get("kind")
    if kind not in kinds:
        raise ValueError(f"KL controller kind {kind!r} unknown; use one of {sorted(kinds)}")
    return kinds[kind](**state)


# ---------------------------------------------------------------------------------------------
# RLOO (Ahmadian et al. 2024, "Back to basics"; the leave-one-out baseline of Kool et al. 2019)


def rloo_rewards(scores: Tensor, kl: Tensor, *, beta: float) -> Tensor:
    """Sequence-level shaped reward r_i = score_i − β·KL_i, KL_i = Σ_t k1 of completion i."""
    return scores - beta * kl


def rloo_advantages(rewards: Tensor, k: int | None = None) -> Tensor:
    """A_i = r_i − (1/(k−1)) Σ_{j≠i} r_j over the k samples of the same prompt.

    `rewards` is (n_prompts, k), or flat (n_prompts·k,) prompt-major (the k samples of a prompt
    adjacent, as `repeat_interleave` of the prompts makes them) with `k` given. The output has
    the input's shape. k = 1 has no leave-one-out baseline and is an error."""
    if rewards.dim() == 2:
        if k is not None and k != rewards.shape[1]:
            raise ValueError(f"k={k} disagrees with rewards of shape {tuple(rewards.shape)}")
        k = rewards.shape[1]
    elif rewards.dim() == 1:
        if k is None or k < 1 or rewards.numel() % k:
            raise ValueError(f"flat rewards ({rewards.numel()}) need k dividing their count, got k={k}")
    else:
        raise ValueError(f"rewards must be (n_prompts, k) or flat, got shape {tuple(rewards.shape)}")
    if k < 2:
        raise ValueError("RLOO needs k >= 2 samples per prompt (k = 1 leaves no baseline)")
    grouped = rewards.reshape(-1, k)
    baseline = (grouped.sum(-1, keepdim=True) - grouped) / (k - 1)
    return (grouped - baseline).reshape(rewards.shape)


# ---------------------------------------------------------------------------------------------
# Best-of-N


def best_of_n_kl(n: int) -> float:
    """KL(π_BoN ‖ π) ≤ log N − (N−1)/N: the formula used for Best-of-N since Stiennon et al.
    2020, which Beirami et al. 2024 prove is an upper bound, not the exact value. 0 at N = 1."""
    if int(n) != n or n < 1:
        raise ValueError(f"N must be an integer >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def expected_max_of_n(scores: Tensor, n: int) -> Tensor:
    """Unbiased estimate of E[max of N i.i.d. scores] from M >= N samples, over the last dim:
    the mean of the max over all C(M, N) subsets, in closed form via order statistics

        E[max of N] = Σ_{i=N..M} C(i−1, N−1) / C(M, N) · s_(i)      (s_(1) ≤ … ≤ s_(M))

    (s_(i) is the max of exactly C(i−1, N−1) subsets; the same U-statistic idea as the pass@k
    estimator of Chen et al. 2021). One set of M samples per prompt thus
    gives the whole Best-of-N curve N = 1..M. float64 result, shape = scores.shape[:-1]."""
    m = scores.shape[-1]
    if int(n) != n or not 1 <= n <= m:
        raise ValueError(f"N must be an integer in [1, {m}] (the number of samples), got {n}")
    total = math.comb(m, n)
    # Python's int / int is correctly rounded even for huge C(M, N): no overflow, no lgamma error.
    weights = torch.tensor([math.comb(i - 1, n - 1) / total for i in range(1, m + 1)], dtype=torch.float64)
    ordered = scores.detach().to(torch.float64).sort(dim=-1).values
    return (ordered * weights.to(ordered.device)).sum(-1)


# ---------------------------------------------------------------------------------------------
# Reward model loss (Bradley & Terry 1952; Ouyang et al. 2022 eq. 1)


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor) -> tuple[Tensor, Tensor]:
    """(per-pair loss −log σ(r_c − r_r), accuracy): the BT negative log-likelihood, through
    logsigmoid so large margins neither overflow nor round to 0. Accuracy is the share of pairs
    with r_c > r_r, ties counting ½ (a constant model scores 0.5, as chance)."""
    margin = r_chosen - r_rejected
    losses = -F.logsigmoid(margin)
    with torch.no_grad():
        accuracy = ((margin > 0).float() + 0.5 * (margin == 0).float()).mean()
    return losses, accuracy

