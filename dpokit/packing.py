"""Prefix sharing and padding-free packing of preference pairs.

Each pair becomes one segment; the prompt is encoded once and both completions attend to it:

    segment of pair i:   [ prompt (P) | chosen (C) | rejected (R) ]
    position_ids:          0 .. P-1     P .. P+C-1   P .. P+R-1      (rejected restarts at P)

    who sees whom (rows = queries, columns = keys; causal inside each block):
                 prompt  chosen  rejected
      prompt       ◣       .        .
      chosen       ■       ◣        .
      rejected     ■       .        ◣          (never the chosen tokens)

Several segments share a row up to a token budget (padding-free packing); segments in one row
never see each other (block-diagonal mask), and right padding only fills the row to the
longest row of the batch:

    row 0: [ seg a | seg b | seg c ]
    row 1: [ seg d       | seg e | pad pad ]

Scoring cannot use shifted labels: in the packed row the position before the first rejected
token is the last *chosen* token, but that token is predicted from the last *prompt* position.
So the pack carries an explicit gather: for every scored token, the flat index (row * T + t)
of the hidden state that predicts it, the token id, and the output slot it sums into
(pair i's chosen -> slot i, its rejected -> slot B + i, in the caller's pair order):

    chosen token j   <- hidden at P-1+j                        (j = 0: last prompt position)
    rejected token k <- hidden at P-1 if k = 0, else P+C+k-1

With an empty prompt the first token of each completion has no predicting position; like
the plain padded path (which scores labels[1:]) it is then not scored.

Memory: the mask is dense, rows x T x T. Float32 costs 4·R·T² bytes (64 MB for one row of
4,096 tokens). We build an *additive float* mask on purpose: transformers 5.24 hands a 4D mask
to SDPA as-is, and torch's CPU flash kernel converts a bool mask to float in every layer and
saves each copy for the backward pass (L copies); a float mask is shared by all layers.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from dpokit.data.collate import TokenizedPair
from dpokit.logprobs import DEFAULT_CHUNK, model_body_and_head, token_logps

PROMPT, CHOSEN, REJECTED = 0, 1, 2


@dataclass
class PackedBatch:
    """Packed pairs, ready for one forward pass (see module docstring for the layout)."""

    input_ids: torch.Tensor  # (R, T) long; pad_id after the last segment of a row
    attention_mask: torch.Tensor  # (R, 1, T, T) float additive (0 / dtype min) or bool (True = attend)
    position_ids: torch.Tensor  # (R, T) long; rejected positions restart at len(prompt)
    source: torch.Tensor  # (M,) long: flat index r*T + t of the hidden state predicting each scored token
    targets: torch.Tensor  # (M,) long: the scored token ids
    owner: torch.Tensor  # (M,) long: output slot, i = chosen of pair i, B + i = its rejected
    ends: torch.Tensor  # (2B,) long: flat index of each slot's last completion token (reward models read there)
    pair_index: torch.Tensor  # (B,) long: data-set index of each pair, in the caller's order

    @property
    def num_pairs(self) -> int:
        return int(self.pair_index.shape[0])

    def to(self, device) -> "PackedBatch":
        return PackedBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def segment_length(pair: TokenizedPair) -> int:
    """Tokens the pair occupies when packed: prompt once, then both completions."""
    return len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)


def _first_fit(lengths: list[int], budget: int) -> list[list[int]]:
    """Greedy first-fit: each item, in input order, goes into the first bin with room.
    Returns bins of item positions; inside a bin positions keep their input order."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        if n > budget:
            raise ValueError(f"pair at position {i} needs {n} tokens packed, over the budget of {budget}")
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(budget - n)
    return bins


# What a packed row costs, in token-units: width · (1 + ATTENTION_WEIGHT · width). The linear
# layers cost the same per token; masked attention over a row costs its width squared.
# Measured on SmolLM2-135M (benchmarks/README.md: one 672-token row vs two of ~350 run
# 3.56 vs 3.42 s), which gives 2.9e-4; the FLOP ratio (attention ~4·d·L·3 per token per unit
# width against 6·N per token) gives 2.6e-4.
ATTENTION_WEIGHT = 2.9e-4


def _deal(lengths: list[int], k: int) -> tuple[list[list[int]], list[int]]:
    """Longest first, each segment to the currently shortest of k rows (LPT)."""
    rows: list[list[int]] = [[] for _ in range(k)]
    fill = [0] * k
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min(range(k), key=lambda r: (fill[r], r))
        rows[r].append(i)
        fill[r] += lengths[i]
    return rows, fill


def _check_budget(lengths: list[int], budget: int) -> None:
    for i, n in enumerate(lengths):
        if n > budget:
            raise ValueError(f"pair at position {i} needs {n} tokens packed, over the budget of {budget}")


def _tidy(rows: list[list[int]]) -> list[list[int]]:
    # Inside a row positions keep their input order; rows are ordered by their first position.
    return sorted(sorted(row) for row in rows if row)


def plan_rows(lengths: list[int], budget: int) -> list[list[int]]:
    """The row layout that costs least, within rows of at most `budget` tokens.

    Every row is padded to the widest, and attention grows with a row's square, so neither
    "fewest rows" nor "one pair per row" is best in general: 4 pairs of ~270 tokens fit 3
    rows of 512 only as 2+1+1, padded by 25%, while 2 rows of ~540 waste 1%. For each number
    of rows k from the fewest that can fit up to one per segment, deal the segments evenly
    (LPT) and keep the layout whose k · width · (1 + ATTENTION_WEIGHT · width) is smallest."""
    _check_budget(lengths, budget)
    best, best_cost = None, float("inf")
    for k in range(max(1, -(-sum(lengths) // budget)), len(lengths) + 1):
        rows, fill = _deal(lengths, k)
        width = max(fill)
        if width > budget:
            continue
        cost = k * width * (1 + ATTENTION_WEIGHT * width)
        if cost < best_cost:
            best, best_cost = rows, cost
    return _tidy(best)


def plan_microbatches(items: list[TokenizedPair], max_tokens: int) -> list[list[TokenizedPair]]:
    """Split pairs into micro-batches of at most `max_tokens` packed tokens each.

    Greedy first-fit in input order: a later, short pair may join an earlier micro-batch, so
    micro-batches are not contiguous slices of `items`, but inside each one the input order
    is kept, and every pair appears exactly once. A pair longer than the budget on its own
    raises ValueError (raise the budget to at least `max(segment_length(p))`).

    Micro-batches hold different numbers of pairs: scale per-pair losses by the pairs of the
    whole step, not of the micro-batch, when accumulating gradients."""
    if max_tokens <= 0:
        raise ValueError("max_tokens must be positive")
    bins = _first_fit([segment_length(p) for p in items], max_tokens)
    return [[items[i] for i in b] for b in bins]


def _segment(pair: TokenizedPair, base: int, chosen_slot: int, rejected_slot: int):
    """Token ids, positions, branch codes and the gather entries of one segment whose first
    token sits at flat index `base` (= row * T + offset)."""
    p, c, r = (torch.tensor(x, dtype=torch.long) for x in (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids))
    P, C, R = len(p), len(c), len(r)
    ids = torch.cat([p, c, r])
    pos = torch.cat([torch.arange(P + C), torch.arange(P, P + R)])
    branch = torch.tensor([PROMPT] * P + [CHOSEN] * C + [REJECTED] * R, dtype=torch.long)
    # Predicting positions, relative to the segment start (see module docstring).
    src_c = torch.arange(P - 1, P + C - 1)
    src_r = torch.cat([torch.tensor([P - 1]), torch.arange(P + C, P + C + max(R - 1, 0))])[:R]
    src = torch.cat([src_c, src_r])
    tgt = torch.cat([c, r])
    own = torch.cat([torch.full((C,), chosen_slot), torch.full((R,), rejected_slot)])
    keep = src >= 0  # empty prompt: the first completion token is not scored, as in the plain path
    return ids, pos, branch, (src[keep] + base, tgt[keep], own[keep])


def block_mask(segment: torch.Tensor, branch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(R, 1, T, T) mask from per-token segment ids and branch codes, both (R, T).

    Query q may see key k iff both are in the same segment, k <= q, and k is a prompt token
    or in q's own branch (so rejected never sees chosen). Float dtypes give an additive mask
    (0 or the dtype's minimum); torch.bool gives True where attention is allowed."""
    T = segment.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment.device).tril()
    same_seg = segment[:, :, None] == segment[:, None, :]
    branch_ok = (branch[:, None, :] == PROMPT) | (branch[:, :, None] == branch[:, None, :])
    allowed = (same_seg & branch_ok & causal)[:, None]
    if dtype == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segment.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def block_mask_cast(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An additive float mask in another float dtype, blocked entries at that dtype's minimum
    (a plain .to() would turn float32's minimum into -inf in bfloat16)."""
    blocked = mask < 0
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(blocked, torch.finfo(dtype).min)


def pack_pairs(
    items: list[TokenizedPair],
    pad_id: int,
    max_tokens_per_row: int | None = None,
    *,
    mask_dtype: torch.dtype = torch.float32,
) -> PackedBatch:
    """Pack pairs into rows of at most `max_tokens_per_row` tokens, in the cheapest layout
    (`plan_rows`); None sets no limit on a row's width (the planner may still choose
    several rows, when they cost less than one long one).
    Outputs of `packed_pair_logps` come back in the order of `items` whatever the rows.

    Row budget, measured (SmolLM2-135M, fp32, 1 CPU thread, 8 pairs of ~60/60/43 tokens,
    forward+backward): plain padded 22.1 s, one row of 1,245 tokens 15.7 s, rows <= 512
    13.1 s, one pair per row 12.6 s. The masked attention costs T² per row whatever the
    blocks, so long rows lose; keep the budget near one to a few segments (~512 tokens).

    Pass `mask_dtype` = the model's compute dtype (e.g. torch.bfloat16) for half-precision
    models, or torch.bool for a boolean mask (costlier on CPU, see module docstring)."""
    if not items:
        raise ValueError("pack_pairs needs at least one pair")
    lengths = [segment_length(p) for p in items]
    budget = sum(lengths) if max_tokens_per_row is None else max_tokens_per_row
    rows = plan_rows(lengths, budget)
    width = max(sum(lengths[i] for i in row) for row in rows)
    B = len(items)

    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    # Padding gets a segment id of its own per position (negative, never shared), so a pad
    # token sees only itself: no fully masked query rows, hence no NaN in forward or backward.
    segment = -1 - torch.arange(width).repeat(len(rows), 1)
    branch = torch.zeros((len(rows), width), dtype=torch.long)
    gathers, ends = [], torch.zeros(2 * B, dtype=torch.long)
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            ids, pos, br, gather = _segment(items[i], r * width + offset, i, B + i)
            end = offset + len(ids)
            input_ids[r, offset:end], position_ids[r, offset:end], branch[r, offset:end] = ids, pos, br
            segment[r, offset:end] = i
            gathers.append(gather)
            chosen_end = offset + len(items[i].prompt_ids) + len(items[i].chosen_ids) - 1
            ends[i], ends[B + i] = r * width + chosen_end, r * width + end - 1
            offset = end
    source, targets, owner = (torch.cat(parts) for parts in zip(*gathers))
    return PackedBatch(
        input_ids=input_ids,
        attention_mask=block_mask(segment, branch, mask_dtype),
        position_ids=position_ids,
        source=source,
        targets=targets,
        owner=owner,
        ends=ends,
        pair_index=torch.tensor([p.index for p in items], dtype=torch.long),
    )


def packed_hidden(body, packed: PackedBatch) -> torch.Tensor:
    """The decoder body's last hidden states (R, T, H) of the packed rows, under the block mask
    (recast to the body's dtype when it differs)."""
    mask = packed.attention_mask
    param_dtype = next(body.parameters()).dtype
    if mask.is_floating_point() and mask.dtype != param_dtype:
        # Re-derive from "blocked" so the fill value is the minimum of the new dtype.
        mask = block_mask_cast(mask, param_dtype)
    return body(
        input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids, use_cache=False
    ).last_hidden_state


def packed_pair_logps(
    model, packed: PackedBatch, chunk_size: int = DEFAULT_CHUNK
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen_logps, rejected_logps, chosen_counts, rejected_counts), each (B,), in the
    order the pairs were given to `pack_pairs`; log-probs summed over completion tokens in
    float32, with gradients when grad is enabled. Same numbers as the plain padded path
    (`collate_pairs` + `sequence_logps`) up to float rounding.

    One body forward for all rows; then the output head runs on the M gathered hidden states
    only, in checkpointed chunks of `chunk_size` (dpokit.logprobs.token_logps)."""
    body, head = model_body_and_head(model)
    hidden = packed_hidden(body, packed)  # (R, T, H)
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, packed.source)  # (M, H)
    lp = token_logps(h, packed.targets, head, chunk_size)  # (M,) float32
    B = packed.num_pairs
    sums = torch.zeros(2 * B, dtype=torch.float32, device=lp.device).index_add(0, packed.owner, lp)
    counts = torch.bincount(packed.owner, minlength=2 * B)
    return sums[:B], sums[B:], counts[:B], counts[B:]



def pack_for(model, items: list[TokenizedPair], pad_id: int, pack_tokens: int) -> PackedBatch:
    """`items` packed for `model`: rows of at most `pack_tokens` tokens (a longer pair gets a row
    of its own rather than an error), the mask in the model's dtype, on the model's device."""
    budget = max(pack_tokens, max(segment_length(p) for p in items))
    param = next(model.parameters())
    return pack_pairs(items, pad_id, budget, mask_dtype=param.dtype).to(param.device)


def pairs_logps(model, items: list[TokenizedPair], pad_id: int, pack_tokens: int, chunk_size: int = DEFAULT_CHUNK):
    """`packed_pair_logps` of `items` packed for `model` (`pack_for`). What the policy step and
    the model references both call."""
    return packed_pair_logps(model, pack_for(model, items, pad_id, pack_tokens), chunk_size=chunk_size)
