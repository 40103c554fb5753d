"""Per-sequence log-probabilities of completion tokens: the single source of log-probs for
every loss, the reference, scoring and evaluation.

For each row n of a batch with labels y (-100 where not scored):

    logp[n]  = Σ_t  log softmax(W h[n, t-1])[y[n, t]]     over t with y[n, t] != -100
    count[n] = #{t : y[n, t] != -100}

The output head is applied to the hidden states of scored positions only, in chunks of
`chunk_size` tokens, so the full (rows × length × vocab) logits never exist. Under autograd
each chunk is checkpointed: its logits are recomputed in the backward pass instead of kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from dpokit.data.collate import IGNORE_INDEX  # the batch layout's "not scored" label

DEFAULT_CHUNK = 2048


@dataclass
class SequenceLogps:
    logps: torch.Tensor  # (N,) float32, summed over completion tokens
    counts: torch.Tensor  # (N,) long, completion tokens per row

    def split_pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """For a [chosen; rejected] batch: (chosen_logps, rejected_logps, chosen_n, rejected_n)."""
        half = self.logps.shape[0] // 2
        return self.logps[:half], self.logps[half:], self.counts[:half], self.counts[half:]


def model_body_and_head(model):
    """(decoder body returning hidden states, output head) of a causal LM, peft-wrapped or not.

    LoRA layers live inside the base model's modules, so calling the body still applies them
    (and `disable_adapter()` still switches them off)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "final_logit_softcapping", None):
        raise NotImplementedError("logit soft-capping models are not supported by the chunked head")
    return base.get_decoder(), base.get_output_embeddings()


def _chunk_logps(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    # float32 log-softmax even under bf16 autocast: sums of thousands of log-probs need it.
    logits = F.linear(hidden, weight, bias).float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logps(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """log p(target | hidden) for T selected positions: hidden (T, H), targets (T,) -> (T,)."""
    pieces = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_chunk_logps, h, t, head.weight, head.bias, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(h, t, head.weight, head.bias))
    if not pieces:
        return hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(pieces)


def gather_scored(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shift by one and keep scored positions: hidden (N, L, H), labels (N, L) ->
    (hidden of predicting positions (T, H), targets (T,), row of each (T,))."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets)
    return hidden[:, :-1][mask], targets[mask], rows[mask]


def sequence_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    position_ids: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> SequenceLogps:
    """Summed completion log-probs and token counts per row (see module docstring).

    `attention_mask` may be the usual (N, L) padding mask or a 4D (N, 1, L, L) mask (packed
    sequences); `position_ids` restart positions inside packed rows."""
    body, head = model_body_and_head(model)
    hidden = body(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    h, targets, rows = gather_scored(hidden, labels)
    lp = token_logps(h, targets, head, chunk_size)
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=lp.device).index_add(0, rows, lp)
    counts = (labels[:, 1:] != IGNORE_INDEX).sum(-1)
    return SequenceLogps(sums, counts)


def batch_logps(model, batch: dict, *, chunk_size: int = DEFAULT_CHUNK) -> SequenceLogps:
    """`sequence_logps` on a collated batch (dpokit.data.collate layout)."""
    return sequence_logps(
        model, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk_size=chunk_size
    )


def logps_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> SequenceLogps:
    """The plain computation from full logits (N, L, V): the yardstick fast paths are tested
    against."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return SequenceLogps((picked * mask).sum(-1), mask.sum(-1))
