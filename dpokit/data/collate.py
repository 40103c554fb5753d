"""Token batches for pairwise and SFT objectives (plain, padded path).

Batch layout (the contract every consumer relies on):

    input_ids       (2B, L) long   rows 0..B-1 = prompt+chosen, rows B..2B-1 = prompt+rejected
    attention_mask  (2B, L) long   1 on real tokens, 0 on right padding
    labels          (2B, L) long   token id on completion tokens, -100 on prompt and padding
                                   (unshifted: labels[t] is predicted from position t-1)
    pair_index      (B,)    long   index of each pair in its data set (reference-cache key)

With `include_rejected=False` (SFT) only the B chosen rows are built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedPair:
    """One preference pair as token ids. Completions end with EOS exactly once, unless
    truncation cut them (then they end where the budget ran out) or the record marked them
    unfinished (then they end with their last generated token)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    index: int


def resolve_pad_id(tokenizer) -> int:
    """The pad id to use in batches. Tokenizers of causal LMs often have none; padding is
    always masked out, so EOS is a safe stand-in."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has neither a pad token nor an EOS token")
    return int(tokenizer.eos_token_id)


def _row(prompt: list[int], completion: list[int]) -> tuple[list[int], list[int]]:
    ids = prompt + completion
    labels = [IGNORE_INDEX] * len(prompt) + completion
    return ids, labels


def collate_pairs(items: list[TokenizedPair], pad_id: int, *, include_rejected: bool = True) -> dict:
    """Right-padded batch in [chosen; rejected] order (see module docstring)."""
    completions = [(p.prompt_ids, p.chosen_ids) for p in items]
    if include_rejected:
        completions += [(p.prompt_ids, p.rejected_ids) for p in items]
    return {**pad_rows(completions, pad_id), "pair_index": torch.tensor([p.index for p in items], dtype=torch.long)}


def pad_rows(completions: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """(prompt ids, completion ids) per row -> right-padded input_ids, attention_mask and
    labels (prompt and padding masked with IGNORE_INDEX)."""
    rows = [_row(prompt, completion) for prompt, completion in completions]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[i, : len(labs)] = torch.tensor(labs, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
