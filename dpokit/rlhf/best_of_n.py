"""Best-of-N on the reward–KL frontier: sample M completions per prompt ONCE from the reference,
score each with the reward model and with the ground truth, and read off the whole curve
N = 1, 2, 4, … ≤ M exactly, without resampling.

For a selector s (the reward model's score, or the ground truth itself = the oracle) and the
ground truth g of the same M samples, the expected ground truth of the sample that s ranks
highest among N drawn without replacement from the M is

    E_N = Σ_{i=1..M} w_i · g_[i],     w_i = C(i−1, N−1) / C(M, N)

with the samples in ascending order of s (g_[i] = ground truth of the i-th lowest s): sample i
is the selected one in exactly C(i−1, N−1) of the C(M, N) subsets (those that hold it and
N−1 of the i−1 below it). With s = g this is `estimators.expected_max_of_n`.

Ties in s: the selected sample among tied top scores is taken uniformly at random, and E_N is
its exact expectation; in the formula each tied group's g is replaced by the group's mean.
(A uniformly random tie-break is the same as a uniformly random order inside each tied group,
and averaging Σ w_i g_[i] over those orders gives the group means.) The result thus does not
depend on the order the samples were drawn in.

KL of Best-of-N to the reference: `best_of_n_kl(N)` = log N − (N−1)/N, an upper bound
(Beirami et al. 2024), used for both selectors. Each frontier point's CI is over prompts, of
the per-prompt E_N (`dpokit.eval.stats.mean_ci95`; with one prompt it is (nan, nan)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dpokit.eval.stats import mean_ci95
from dpokit.generate import Completion, sample_completions
from dpokit.rlhf.estimators import best_of_n_kl, expected_max_of_n
from dpokit.rlhf.rollout import build_rollout_batch, sequence_scores

DEFAULT_NS = (1, 2, 4, 8, 16, 32, 64)


def max_of_n_weights(m: int, n: int) -> torch.Tensor:
    """(M,) float64: w_i = C(i−1, N−1)/C(M, N), the chance that the i-th lowest of M is the
    highest of N drawn without replacement (the weights `expected_max_of_n` applies)."""
    if int(n) != n or int(m) != m or not 1 <= n <= m:
        raise ValueError(f"N must be an integer in [1, M={m}], got {n}")
    total = math.comb(m, n)
    # Python's int / int is correctly rounded even for huge C(M, N).
    return torch.tensor([math.comb(i - 1, n - 1) / total for i in range(1, m + 1)], dtype=torch.float64)


def _tie_group_means(ordered_selector: torch.Tensor, ordered_values: torch.Tensor) -> torch.Tensor:
    """Each value replaced by the mean of the values whose (sorted) selector equals its own."""
    new_group = torch.ones_like(ordered_selector, dtype=torch.long)
    new_group[..., 1:] = (ordered_selector[..., 1:] != ordered_selector[..., :-1]).long()
    group = new_group.cumsum(-1) - 1
    sums = torch.zeros_like(ordered_values).scatter_add_(-1, group, ordered_values)
    counts = torch.zeros_like(ordered_values).scatter_add_(-1, group, torch.ones_like(ordered_values))
    return (sums / counts.clamp(min=1)).gather(-1, group)


def expected_selected_of_n(selector: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """E[values of the sample with the highest `selector` among N of the M], over the last dim
    (ties uniformly at random, see the module docstring). float64, shape = values.shape[:-1]."""
    if selector.shape != values.shape:
        raise ValueError(f"selector {tuple(selector.shape)} and values {tuple(values.shape)} differ in shape")
    s, v = selector.detach().to(torch.float64), values.detach().to(torch.float64)
    if not (torch.isfinite(s).all() and torch.isfinite(v).all()):
        raise ValueError("Best-of-N needs finite scores and ground-truth values")
    weights = max_of_n_weights(s.shape[-1], n).to(s.device)
    order = s.argsort(dim=-1, stable=True)
    ordered = _tie_group_means(s.gather(-1, order), v.gather(-1, order))
    return (ordered * weights).sum(-1)


def resolve_ns(m: int, ns=None) -> list[int]:
    """The N of the curve: those of DEFAULT_NS up to M when not given; each N checked ≤ M."""
    ns = [n for n in DEFAULT_NS if n <= m] if ns is None else list(ns)
    for n in ns:
        max_of_n_weights(m, n)  # the one check of N against M, with its message
    return ns


def _point(selector: str, n: int, per_prompt: torch.Tensor) -> dict:
    mean, (lo, hi) = mean_ci95(per_prompt.tolist())
    return {"method": "best-of-n", "selector": selector, "n": n, "kl": best_of_n_kl(n), "reward_mean": mean, "reward_ci95": [lo, hi]}


def frontier_points(truth: torch.Tensor, rm_scores: torch.Tensor | None, ns=None) -> list[dict]:
    """Frontier points from (prompts, M) ground truth and reward-model scores of the same
    samples: per N, the reward-model selector (when there are scores) and the oracle."""
    points = []
    for n in resolve_ns(truth.shape[-1], ns):
        if rm_scores is not None:
            points.append(_point("reward-model", n, expected_selected_of_n(rm_scores, truth, n)))
        points.append(_point("oracle", n, expected_max_of_n(truth, n)))
    return points


def within_prompt_pair_accuracy(truth: torch.Tensor, scores: torch.Tensor, min_gap: float = 0.0) -> dict:
    """How often `scores` order two samples of the same prompt as `truth` does, over every such
    pair whose ground-truth gap is ≥ `min_gap` (and not 0); a tie in scores counts 1/2.
    (prompts, M) tensors → {"accuracy", "pairs"}. With M samples per prompt this measures a reward
    model on M(M−1)/2 pairs per prompt instead of one: the pairs share samples, so the spread
    of the estimate is set by the prompts more than by the pair count."""
    m = truth.shape[-1]
    d_truth = truth[:, :, None] - truth[:, None, :]
    d_score = (scores[:, :, None] - scores[:, None, :]).to(d_truth.dtype)
    upper = torch.ones(m, m, dtype=torch.bool).triu(diagonal=1)
    use = upper & (d_truth.abs() >= min_gap) & (d_truth != 0)
    agree = (torch.sign(d_truth) == torch.sign(d_score)).to(torch.float64) + 0.5 * (d_score == 0).to(torch.float64)
    n = int(use.sum())
    return {"accuracy": float(agree[use].mean()) if n else None, "pairs": n}


@dataclass
class BestOfNSamples:
    """M samples per prompt from the reference and their scores, (prompts, M) each."""

    prompts: list[str]
    completions: list[list[Completion]]
    truth: torch.Tensor
    rm_scores: torch.Tensor | None


@torch.no_grad()
def _reward_model_scores(reward_model, tokenizer, prompts, completions, batch_size: int) -> torch.Tensor:
    """(prompts, M) reward-model score of every sample, at its last completion token."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(reward_model.parameters()).device
    rows = [(tokenizer(p, add_special_tokens=False)["input_ids"], c.token_ids) for p, row in zip(prompts, completions) for c in row]
    scores = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = build_rollout_batch([p for p, _ in chunk], [c for _, c in chunk], pad_id).to(device)
        scores.append(sequence_scores(reward_model, batch).cpu())
    return torch.cat(scores).reshape(len(prompts), -1)


def sample_best_of_n(reference, tokenizer, prompts: list[str], *, reward_fn, reward_model=None, m: int = 64,
                     max_new_tokens: int = 32, temperature: float = 1.0, batch_size: int = 64, seed: int = 0,
                     progress: bool = False) -> BestOfNSamples:
    """Sample M completions per prompt from the reference (KV cache, seeded: the same call
    draws the same samples) and score them with the ground truth and the reward model."""
    comps = sample_completions(reference, tokenizer, prompts, n_per_prompt=m, max_new_tokens=max_new_tokens,
                               temperature=temperature, batch_size=batch_size, seed=seed, progress=progress, desc="best-of-n")
    truth = torch.tensor(reward_fn([c.text for row in comps for c in row]), dtype=torch.float64).reshape(len(prompts), m)
    rm = None if reward_model is None else _reward_model_scores(reward_model, tokenizer, prompts, comps, batch_size)
    return BestOfNSamples(list(prompts), comps, truth, rm)


def best_of_n_frontier(reference, tokenizer, prompts: list[str], *, reward_fn, reward_model=None, m: int = 64,
                       ns=None, **sampling) -> list[dict]:
    """The Best-of-N frontier points (module docstring) of `reference` on held-out `prompts`;
    `sampling` goes to `sample_best_of_n` (max_new_tokens, temperature, batch_size, seed)."""
    ns = resolve_ns(m, ns)  # a bad N fails before any sampling
    samples = sample_best_of_n(reference, tokenizer, prompts, reward_fn=reward_fn, reward_model=reward_model, m=m, **sampling)
    return frontier_points(samples.truth, samples.rm_scores, ns)
