"""One micro-batch: policy log-probs → reference log-probs (unless the loss needs none) → loss
→ metric sums.

This is the only place where the objectives meet the model; the loop around it only handles
order, accumulation, optimizer, logging and checkpoints.
"""

from __future__ import annotations

import torch

from dpokit import accel
from dpokit.data.collate import TokenizedPair, collate_pairs
from dpokit.logprobs import batch_logps
from dpokit.losses import get_loss, nll_loss
from dpokit.train.metrics import MetricSums


def autocast_context(cfg):
    """bf16 autocast on this process's device when the (resolved) config asks for it."""
    return accel.autocast(cfg.autocast_bf16)


def policy_pair_logps(model, items: list[TokenizedPair], pad_id: int, cfg):
    """(chosen_logps, rejected_logps, chosen_counts, rejected_counts) of the policy, each (B,).

    With `packing` the prompt is encoded once per pair ([prompt|chosen|rejected] with a block
    mask, dpokit.packing); otherwise the padded [chosen; rejected] batch. Both are tested to
    give the same numbers."""
    if cfg.packing:
        from dpokit.packing import pairs_logps

        return pairs_logps(model, items, pad_id, cfg.pack_tokens, cfg.chunk_size)
    out = batch_logps(model, _on_model_device(model, collate_pairs(items, pad_id)), chunk_size=cfg.chunk_size)
    return out.split_pairs()


def _on_model_device(model, batch: dict) -> dict:
    device = next(model.parameters()).device
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def processed_tokens(items: list[TokenizedPair], cfg, *, pairs: bool = True) -> int:
    """Tokens the policy forward actually reads (prompt once per pair when packing)."""
    total = 0
    for p in items:
        if hasattr(p, "response_ids"):  # RRHF: the prompt with each of its K responses, padded rows
            total += sum(len(p.prompt_ids) + len(r) for r in p.response_ids)
            continue
        prompt, c, r = len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)
        if not pairs:
            total += prompt + c
        elif cfg.packing:
            total += prompt + c + r
        else:
            total += 2 * prompt + c + r
    return total


def target_probs(items: list[TokenizedPair], votes: dict[int, tuple[int, int]] | None) -> torch.Tensor:
    """q = P(chosen ≻ rejected) from annotator votes (1 where a pair has none)."""
    qs = []
    for p in items:
        v = (votes or {}).get(p.index)
        qs.append(1.0 if not v or sum(v) == 0 else v[0] / (v[0] + v[1]))
    return torch.tensor(qs, dtype=torch.float32)


def vote_counts(items: list[TokenizedPair], votes: dict[int, tuple[int, int]] | None) -> torch.Tensor:
    """(votes for chosen, votes for rejected) per pair, (B, 2); (1, 0) where a pair has none:
    a plain pair is one vote for its chosen side (loss=panel is then DPO)."""
    return torch.tensor([list((votes or {}).get(p.index) or (1, 0)) for p in items], dtype=torch.float32)


def pairwise_step(model, reference, items, pad_id, cfg, *, votes=None) -> tuple[torch.Tensor, MetricSums]:
    """Unreduced per-pair losses (B,) with gradients, plus this micro-batch's metric sums.

    For a reference-free loss (SimPO, ORPO) `reference` may be None and is never called: the
    loss gets the policy's log-probs only, per-token means unless `average_logps` says no."""
    spec = get_loss(cfg.loss)
    with autocast_context(cfg):
        pc, pr, nc, nr = accel.call(model, policy_pair_logps, items, pad_id, cfg)
    average = spec.average_logps if cfg.average_logps is None else cfg.average_logps
    # per-token mean log-probs (IPO's, SimPO's, ORPO's default) or sums
    logps = [pc / nc, pr / nr] if average else [pc, pr]
    if not spec.reference_free:
        if reference is None:
            raise ValueError(f"loss={cfg.loss} needs a reference backend")
        rc, rr = reference.pair_logps(items, pad_id)
        logps += [rc / nc, rr / nr] if average else [rc, rr]
    losses, chosen_rewards, rejected_rewards = spec.fn(*logps, **_loss_kwargs(spec, cfg, items, votes))
    if cfg.rpo_alpha:  # RPO (Pang et al. 2024): α·NLL(chosen)/|chosen| keeps the chosen likelihood up
        losses = losses + cfg.rpo_alpha * nll_loss(pc, nc)
    sums = MetricSums()
    sums.add_pairs(losses, chosen_rewards, rejected_rewards, pc.detach(), pr.detach())
    return losses, sums


def _loss_kwargs(spec, cfg, items, votes) -> dict:
    """The loss function's keyword arguments, from the config (and votes for soft labels)."""
    kwargs = {"beta": cfg.beta}
    if "label_smoothing" in spec.extra:
        kwargs["label_smoothing"] = cfg.label_smoothing
    if "target_prob" in spec.extra:
        kwargs["target_prob"] = target_probs(items, votes)
    if "vote_counts" in spec.extra:
        kwargs["vote_counts"] = vote_counts(items, votes)
    if "gamma" in spec.extra:
        kwargs["gamma"] = cfg.simpo_gamma
    if "lam" in spec.extra:
        kwargs["lam"] = cfg.orpo_lambda
    return kwargs


def sft_step(model, items, pad_id, cfg) -> tuple[torch.Tensor, MetricSums]:
    """Preferred-FT: per-token NLL of the chosen completion, per pair (B,)."""
    with autocast_context(cfg):
        out = accel.call(model, _chosen_logps, items, pad_id, cfg)
    losses = nll_loss(out.logps, out.counts)
    sums = MetricSums()
    sums.add_pairs(losses, chosen_logps=out.logps.detach())
    return losses, sums


def _chosen_logps(model, items, pad_id, cfg):
    batch = _on_model_device(model, collate_pairs(items, pad_id, include_rejected=False))
    return batch_logps(model, batch, chunk_size=cfg.chunk_size)


def reward_model_step(model, items, pad_id, cfg) -> tuple[torch.Tensor, MetricSums]:
    """Bradley–Terry: per-pair −log σ(r(x, y_c) − r(x, y_r)) (B,), the rewards read at each
    completion's last token (prefix-shared packing when `cfg.packing`). The metrics use the
    rewards' names (rewards/chosen, rewards/margins, rewards/accuracies ...)."""
    from dpokit.rlhf.estimators import bradley_terry_loss
    from dpokit.rlhf.reward_model import pair_rewards

    with autocast_context(cfg):
        chosen, rejected = accel.call(model, pair_rewards, items, pad_id, cfg.pack_tokens if cfg.packing else 0)
    losses, _ = bradley_terry_loss(chosen, rejected)
    sums = MetricSums()
    sums.add_pairs(losses, chosen.detach(), rejected.detach())
    return losses, sums


def kto_logratios(model, reference, items, pad_id, cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r_own, r_mismatched, policy_own_logps, ref_own_logps), each (B,): the log-ratios
    log π/π_ref of each example's own completion (with gradients) and of its mismatched
    partner's completion under its prompt (no gradient), from one packed pass
    (dpokit.data.unpaired: the pair's chosen slot is its own completion, rejected the partner's)."""
    with autocast_context(cfg):
        pc, pr, _, _ = accel.call(model, policy_pair_logps, items, pad_id, cfg)
    rc, rr = reference.pair_logps(items, pad_id)
    return pc - rc, (pr - rr).detach(), pc, rc


def kto_step(model, reference, items, pad_id, cfg, *, labels: dict[int, bool], z0=None) -> tuple[torch.Tensor, MetricSums]:
    """Per-example KTO losses (B,) and metric sums. `z0`: the step's reference point when the
    step spans several micro-batches or ranks (the trainer computes it first over all of them);
    None: this micro-batch is the whole step and z0 comes from its own mismatched pairs."""
    from dpokit.losses_unpaired import kto_loss, kto_reference_point

    own, mismatched, pc, rc = kto_logratios(model, reference, items, pad_id, cfg)
    if z0 is None:
        z0 = kto_reference_point(mismatched.sum(), len(items))
    desirable = torch.tensor([labels[p.index] for p in items], device=own.device)
    losses, rewards = kto_loss(pc, rc, desirable, z0, beta=cfg.beta, desirable_weight=cfg.kto_desirable_weight,
                               undesirable_weight=cfg.kto_undesirable_weight)
    sums = MetricSums()
    sums.add("loss", losses)
    sums.add("logps/chosen", pc)
    sums.add("rewards/desirable", rewards[desirable])
    sums.add("rewards/undesirable", rewards[~desirable])
    sums.add("kto/z0", torch.as_tensor(z0, dtype=torch.float32).reshape(1).expand(len(items)))
    return losses, sums


def _ranked_logps(model, items, pad_id):
    """(summed log-probs (B, K), token counts (B, K), valid (B, K)) of every response of every
    record, as one padded batch of prompt + response rows (K may differ between records)."""
    from dpokit.data.collate import pad_rows

    k = max(len(p.response_ids) for p in items)
    batch = pad_rows([(p.prompt_ids, r) for p in items for r in p.response_ids], pad_id)
    out = batch_logps(model, _on_model_device(model, batch))
    logps = out.logps.new_zeros(len(items), k)
    counts = out.counts.new_ones(len(items), k)
    valid = torch.zeros(len(items), k, dtype=torch.bool, device=logps.device)
    row = 0
    for b, p in enumerate(items):
        n = len(p.response_ids)
        logps[b, :n], counts[b, :n], valid[b, :n] = out.logps[row : row + n], out.counts[row : row + n], True
        row += n
    return logps, counts, valid


def rrhf_step(model, items, pad_id, cfg) -> tuple[torch.Tensor, MetricSums]:
    """Per-record RRHF losses (B,) (dpokit.losses_unpaired.rrhf_loss): no reference."""
    from dpokit.losses_unpaired import rrhf_loss

    with autocast_context(cfg):
        logps, counts, valid = accel.call(model, _ranked_logps, items, pad_id)
    k = logps.shape[1]
    scores = torch.tensor([list(p.scores) + [float("-inf")] * (k - len(p.scores)) for p in items], device=logps.device)
    losses, rank, ft = rrhf_loss(logps, counts, scores, valid, rank_weight=cfg.rrhf_rank_weight)
    sums = MetricSums()
    sums.add("loss", losses)
    sums.add("rrhf/rank", rank)
    sums.add("rrhf/ft", ft)
    return losses, sums
