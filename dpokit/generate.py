"""Batched sampling from a causal LM with the KV cache (HF `model.generate`).

Prompts are tokenized one by one and left-padded by hand, so every row's last prompt
token sits in the final column and generation starts in step for the whole batch; the
attention mask hides the padding (transformers derives position ids from it). Rows are
sorted by prompt length before batching so little compute goes to padding.

Sampling is plain ancestral sampling at a temperature: top_p = 1.0 and top_k = 0 (off),
so samples come from the model's own distribution (scaled by 1/temperature), which is
what a KL estimate from policy samples assumes.

Precision: fp32 by default. `autocast_bf16=True` (opt-in: the instructions study sets it when
its mixed_precision resolves to bf16, dpokit.accel) runs the generate calls under bf16 autocast,
which is faster on CPUs with bf16 instructions and on GPUs. The sampled tokens then differ from
fp32 sampling at the same seed; they are still draws from the model's distribution up to the
bf16 rounding of its logits. Log-probs of the samples (the KL estimate, the trainers) are
computed elsewhere (dpokit.logprobs, dpokit.eval.policy_eval) in fp32, whatever was used here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from dpokit import accel


@dataclass
class Completion:
    """One sampled continuation.

    text:      decoded with skip_special_tokens (no prompt, no EOS, no padding)
    token_ids: the generated ids, without prompt or padding; ends with the EOS id
               when `finished` (the model chose to stop, and that choice has a log-prob)
    finished:  True if EOS was generated within max_new_tokens
    """

    text: str
    token_ids: list[int]
    finished: bool


def _eos_ids(model, tokenizer, eos_token_id) -> list[int]:
    if eos_token_id is not None:
        ids = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
    elif tokenizer.eos_token_id is not None:
        ids = [tokenizer.eos_token_id]
    else:
        cfg = model.generation_config.eos_token_id
        ids = [] if cfg is None else (list(cfg) if isinstance(cfg, (list, tuple)) else [cfg])
    if not ids:
        raise ValueError("no EOS token: pass eos_token_id or use a tokenizer that has one")
    return [int(i) for i in ids]


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[[...], ...] -> input_ids, attention_mask of shape (B, max_len), padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _trim(generated: list[int], eos: set[int]) -> tuple[list[int], bool]:
    """Cut a generated row after its first EOS (what follows is padding)."""
    for j, tok in enumerate(generated):
        if tok in eos:
            return generated[: j + 1], True
    return generated, False


def sample_completions(
    model,
    tokenizer,
    prompts: list[str],
    *,
    n_per_prompt: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    greedy: bool = False,
    progress: bool = True,
    desc: str = "sampling",
    add_special_tokens: bool = False,
    eos_token_id: int | list[int] | None = None,
    autocast_bf16: bool = False,
) -> list[list[Completion]]:
    """Sample `n_per_prompt` completions for every prompt; result[i][k] is the k-th
    completion of prompts[i].

    Prompts are used verbatim (apply a chat template beforehand if you want one);
    `add_special_tokens` is passed to the tokenizer (e.g. to add a BOS).
    The same call (same model, prompts, settings and seed) returns the same samples:
    the RNG is seeded inside a forked RNG state, so the caller's global RNG is left
    untouched. With `greedy=True` decoding is argmax and `temperature` is ignored.
    `autocast_bf16`: generate under bf16 autocast on the model's device, for speed (other tokens
    than fp32 sampling at the same seed; module docstring). False (the default) is fp32.
    """
    if n_per_prompt < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError("n_per_prompt, max_new_tokens and batch_size must be >= 1")
    if not greedy and temperature <= 0:
        raise ValueError("temperature must be > 0 (use greedy=True for argmax decoding)")
    eos = _eos_ids(model, tokenizer, eos_token_id)
    # No pad token (common for causal LMs): pad with EOS; padding is masked and trimmed anyway.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    device = next(model.parameters()).device

    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    if any(len(e) == 0 for e in encoded):
        raise ValueError("empty prompt after tokenization; generation needs at least one token")
    # One row per (prompt, k); longest first so the first batch shows the worst case in the ETA.
    rows = [(i, k) for i in range(len(prompts)) for k in range(n_per_prompt)]
    rows.sort(key=lambda r: -len(encoded[r[0]]))

    gen_kwargs = dict(
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad_id,
        use_cache=True,
    )
    if greedy:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        gen_kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)

    results: list[list[Completion | None]] = [[None] * n_per_prompt for _ in prompts]
    eos_set = set(eos)
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    bar = tqdm(total=len(rows), desc=desc, unit="seq", disable=not progress)
    try:
        # no_grad, not inference_mode: under inference_mode autocast re-casts every fp32 weight to
        # bf16 at every layer call of every decode step (its cast cache skips it there); under
        # no_grad each weight is cast once per call here (the cache keeps only weights that require
        # grad: a frozen model's are still re-cast). The casts are exact: same samples.
        with torch.random.fork_rng(devices=devices), torch.no_grad(), accel.autocast(autocast_bf16, device):
            torch.manual_seed(seed)
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                input_ids, attention_mask = _left_pad([encoded[i] for i, _ in chunk], pad_id, device)
                out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **gen_kwargs)
                new = out[:, input_ids.shape[1]:].tolist()
                for (i, k), generated in zip(chunk, new):
                    token_ids, finished = _trim(generated, eos_set)
                    text = tokenizer.decode(token_ids, skip_special_tokens=True)
                    results[i][k] = Completion(text=text, token_ids=token_ids, finished=finished)
                bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return results  # type: ignore[return-value]
