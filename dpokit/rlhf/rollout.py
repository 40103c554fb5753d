"""Rollouts as tensors, and the per-token quantities PPO needs from them.

A rollout row is `prompt ids | completion ids`, right-padded. Per-token tensors have one
column per COMPLETION token (column j = the j-th generated token), shape (B, C) with C the
longest completion, and a mask that is 1 on real completion tokens:

    logp[b, j]   = log π(y_j | x, y_<j)          from the hidden state at position P_b + j − 1
    value[b, j]  = V(x, y_<j)                    the value head on that same hidden state
                                                 (the state in which token j is chosen)

where P_b is row b's prompt length. Only those hidden states go through the output head
(`dpokit.logprobs.token_logps`, chunked), so the full (B × L × vocab) logits never exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpokit.logprobs import model_body_and_head, token_logps
from dpokit.rlhf.reward_model import backbone_and_head, score_rows


@dataclass
class RolloutBatch:
    input_ids: torch.Tensor  # (B, L) long, right-padded [prompt | completion]
    attention_mask: torch.Tensor  # (B, L) long, 1 on real tokens
    prompt_lengths: torch.Tensor  # (B,) long
    completion_ids: torch.Tensor  # (B, C) long, 0 off the mask
    mask: torch.Tensor  # (B, C) float, 1 on real completion tokens

    @property
    def positions(self) -> torch.Tensor:
        """(B, C) index of the hidden state that predicts each completion token (clamped to
        a valid index off the mask; those entries are never used)."""
        cols = torch.arange(self.mask.shape[1], device=self.mask.device)
        pos = self.prompt_lengths[:, None] + cols[None, :] - 1
        return pos.clamp(max=self.input_ids.shape[1] - 1)

    def to(self, device) -> "RolloutBatch":
        return RolloutBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.prompt_lengths, self.completion_ids, self.mask)))

    def select(self, rows: torch.Tensor) -> "RolloutBatch":
        return RolloutBatch(self.input_ids[rows], self.attention_mask[rows], self.prompt_lengths[rows], self.completion_ids[rows], self.mask[rows])


def build_rollout_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> RolloutBatch:
    """Right-padded rows from token-id lists. Every prompt needs ≥ 1 token (the first completion
    token is predicted from it) and every completion ≥ 1 token."""
    if len(prompt_ids) != len(completion_ids) or not prompt_ids:
        raise ValueError("need as many completions as prompts, and at least one of each")
    if any(not p for p in prompt_ids) or any(not c for c in completion_ids):
        raise ValueError("every prompt and every completion needs at least one token")
    rows = [p + c for p, c in zip(prompt_ids, completion_ids)]
    width, cmax = max(map(len, rows)), max(map(len, completion_ids))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    comp = torch.zeros((len(rows), cmax), dtype=torch.long)
    mask = torch.zeros((len(rows), cmax), dtype=torch.float32)
    for i, (row, c) in enumerate(zip(rows, completion_ids)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        comp[i, : len(c)] = torch.tensor(c)
        mask[i, : len(c)] = 1.0
    lengths = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
    return RolloutBatch(input_ids, attention, lengths, comp, mask)


def _hidden_at(body, batch: RolloutBatch) -> torch.Tensor:
    """Hidden states (B, C, H) at the positions that predict each completion token."""
    hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state
    pos = batch.positions
    return hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))


def policy_token_logps(model, batch: RolloutBatch, chunk_size: int = 2048) -> torch.Tensor:
    """(B, C) log π of each completion token (0 off the mask); differentiable."""
    body, head = model_body_and_head(model)
    h = _hidden_at(body, batch)
    valid = batch.mask.bool()
    lp = token_logps(h[valid], batch.completion_ids[valid], head, chunk_size)
    out = torch.zeros(batch.mask.shape, dtype=torch.float32, device=lp.device)
    return out.masked_scatter(valid, lp)


@torch.no_grad()
def policy_token_logps_and_entropy(model, batch: RolloutBatch, chunk_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π of each completion token, entropy H = logsumexp(z) − Σ softmax(z)·z of π at its
    position), each (B, C), 0 off the mask: one forward for both, no gradient. What a rollout's
    "old" pass needs: the entropy is logged, and a second forward for it cost ~10% of a round."""
    body, head = model_body_and_head(model)
    valid = batch.mask.bool()
    h, targets = _hidden_at(body, batch)[valid], batch.completion_ids[valid]
    logps, entropies = [], []
    for start in range(0, h.shape[0], chunk_size):
        z = head(h[start : start + chunk_size]).float()
        lse = torch.logsumexp(z, dim=-1)
        logps.append(z.gather(-1, targets[start : start + chunk_size, None]).squeeze(-1) - lse)
        entropies.append(lse - (torch.softmax(z, dim=-1) * z).sum(-1))
    out = [torch.zeros(batch.mask.shape, dtype=torch.float32, device=h.device) for _ in range(2)]
    if logps:
        out = [o.masked_scatter(valid, torch.cat(parts)) for o, parts in zip(out, (logps, entropies))]
    return out[0], out[1]


def token_values(value_model, batch: RolloutBatch) -> torch.Tensor:
    """(B, C) value estimates V(x, y_<j) (0 off the mask); differentiable."""
    body, head = backbone_and_head(value_model)
    v = head(_hidden_at(body, batch)).squeeze(-1).float()
    return v * batch.mask


@torch.no_grad()
def sequence_scores(reward_model, batch: RolloutBatch) -> torch.Tensor:
    """(B,) reward-model score read at the last completion token of each row (the hidden state
    that has seen the whole completion, EOS included when it was generated)."""
    return score_rows(reward_model, batch.input_ids, batch.attention_mask, batch.attention_mask.sum(-1) - 1)
