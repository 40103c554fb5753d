"""Evaluate a policy against its reference with a ground-truth reward: sample both on the
same held-out prompts with the same settings, score, and compare.

    reward mean ± 95% CI      per model
    win rate                  policy sample k vs reference sample k of the same prompt
    KL(π‖π_ref)               E_{y~π}[log π(y|x) − log π_ref(y|x)], from policy samples
    length                    mean completion tokens
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpokit.data.collate import TokenizedPair, collate_pairs, resolve_pad_id
from dpokit.eval.stats import mean_ci95, sequence_kl, win_rate
from dpokit.generate import Completion, sample_completions
from dpokit.logprobs import batch_logps


@dataclass
class SampleSet:
    """Completions of one model on a prompt list: texts[i][k], rewards[i][k], lengths[i][k]."""

    prompts: list[str]
    completions: list[list[Completion]]
    rewards: list[list[float]]

    def flat_rewards(self) -> list[float]:
        return [r for row in self.rewards for r in row]

    def lengths(self) -> list[int]:
        return [len(c.token_ids) for row in self.completions for c in row]

    def to_json(self) -> list[dict]:
        return [
            {"prompt": p, "completions": [c.text for c in cs], "token_ids": [c.token_ids for c in cs],
             "finished": [c.finished for c in cs], "rewards": rs}
            for p, cs, rs in zip(self.prompts, self.completions, self.rewards)
        ]

    @classmethod
    def from_json(cls, rows: list[dict]) -> "SampleSet":
        comps = [[Completion(t, ids, f) for t, ids, f in zip(r["completions"], r["token_ids"], r["finished"])] for r in rows]
        return cls([r["prompt"] for r in rows], comps, [r["rewards"] for r in rows])


def sample_and_score(model, tokenizer, prompts, reward_fn, *, n_per_prompt, max_new_tokens, temperature, batch_size, seed, progress=True, desc="sampling") -> SampleSet:
    comps = sample_completions(
        model, tokenizer, prompts, n_per_prompt=n_per_prompt, max_new_tokens=max_new_tokens,
        temperature=temperature, batch_size=batch_size, seed=seed, progress=progress, desc=desc,
    )
    rewards = [reward_fn([c.text for c in row]) for row in comps]
    return SampleSet(prompts, comps, rewards)


@torch.no_grad()
def completion_logps(model, tokenizer, samples: SampleSet, batch_size: int = 16, temperature: float = 1.0) -> list[float]:
    """log π(y|x) of every sampled completion (summed over its generated tokens), flat order.

    Scores `token_ids` as generated, so EOS counts only for finished completions: the same
    rule the training data follows via the records' `*_finished` flags (data/tokenize).
    `temperature` T ≠ 1: the log-probs of the tempered distribution the samples were drawn
    from, log softmax(logits / T)[y_t] summed over t (ancestral sampling at T, dpokit.generate)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    items = []
    for prompt, row in zip(samples.prompts, samples.completions):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for c in row:
            ids = c.token_ids or [resolve_pad_id(tokenizer)]
            items.append(TokenizedPair(prompt_ids, ids, ids, len(items)))
    model.eval()
    pad_id, out = resolve_pad_id(tokenizer), []
    for start in range(0, len(items), batch_size):
        batch = collate_pairs(items[start : start + batch_size], pad_id, include_rejected=False)
        out += (batch_logps(model, batch).logps if temperature == 1.0 else _tempered_logps(model, batch, temperature)).tolist()
    return out


def _tempered_logps(model, batch: dict, temperature: float) -> torch.Tensor:
    """Summed log softmax(logits / T) of each row's labelled tokens, through the same chunked
    head as `batch_logps`: logits / T = (h / T)·Wᵀ + b / T, so the hidden states and the bias
    are scaled instead of the (T, vocab) logits."""
    from types import SimpleNamespace

    from dpokit.logprobs import gather_scored, model_body_and_head, token_logps

    body, head = model_body_and_head(model)
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    h, targets, rows = gather_scored(hidden, batch["labels"])
    scaled = SimpleNamespace(weight=head.weight, bias=None if head.bias is None else head.bias / temperature)
    lp = token_logps(h / temperature, targets, scaled)
    return torch.zeros(batch["labels"].shape[0], dtype=torch.float32, device=lp.device).index_add(0, rows, lp)


def compare(reference: SampleSet, policy: SampleSet, policy_logps=None, ref_logps=None) -> dict:
    """The summary numbers of policy vs reference (see module docstring)."""
    ref_mean, ref_ci = mean_ci95(reference.flat_rewards())
    pol_mean, pol_ci = mean_ci95(policy.flat_rewards())
    k = min(len(reference.rewards[0]), len(policy.rewards[0]))
    pol_paired = [r for row in policy.rewards for r in row[:k]]
    ref_paired = [r for row in reference.rewards for r in row[:k]]
    out = {
        "reference": {"reward_mean": ref_mean, "reward_ci95": list(ref_ci),
                      "length_mean": sum(reference.lengths()) / len(reference.lengths())},
        "policy": {"reward_mean": pol_mean, "reward_ci95": list(pol_ci),
                   "length_mean": sum(policy.lengths()) / len(policy.lengths())},
        "reward_gain": pol_mean - ref_mean,
        "win_rate": win_rate(pol_paired, ref_paired),
        "n_heldout": len(policy.prompts),
        "samples_per_prompt": k,
    }
    if policy_logps is not None:
        out["kl"] = sequence_kl(policy_logps, ref_logps)
    return out


def side_by_side(reference: SampleSet, policy: SampleSet, n: int) -> list[dict]:
    """A few examples for the report: prompt, first reference and first policy completion."""
    step = max(1, len(policy.prompts) // max(n, 1))
    rows = []
    for i in range(0, len(policy.prompts), step)[:n]:
        rows.append({
            "prompt": policy.prompts[i], "reference": reference.completions[i][0].text,
            "policy": policy.completions[i][0].text, "reference_reward": reference.rewards[i][0],
            "policy_reward": policy.rewards[i][0],
        })
    return rows
