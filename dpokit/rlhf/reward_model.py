"""A scalar-head reward model built from a causal LM, scored at the last completion token.

The model is `AutoModelForSequenceClassification` with `num_labels=1` (for llama:
`LlamaForSequenceClassification`, backbone `model`, linear head `score`), its config carrying
`pad_token_id`. Saved with `save_reward_model`, it loads back with plain
`AutoModelForSequenceClassification.from_pretrained(dir)`, as TRL's RewardTrainer output does.

Why scores are not read from the model's own forward: HF's sequence-classification models
pool at the last token that is not `pad_token_id`. Causal-LM tokenizers often have no pad
token, so dpokit pads with EOS (`resolve_pad_id`); every completion ends with EOS, so HF would
pool one token early (on the token before EOS) in every row. Here the backbone's hidden
states are read at positions known from the attention mask instead.

The reward of a pair (Ouyang et al. 2022, eq. 1): r(x, y) = score-head output at the last
token of [prompt + completion], trained with the Bradley–Terry loss −log σ(r_c − r_r).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from dpokit.data.collate import TokenizedPair, collate_pairs, resolve_pad_id
from dpokit.models import _torch_dtype, load_tokenizer, resolve_model_path, save_model
from dpokit.rlhf.estimators import bradley_terry_loss

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Build, save, load


def build_reward_model(name: str | os.PathLike, *, dtype: str | torch.dtype = "float32", device: str | torch.device | None = None,
                       zero_head: bool = False):
    """(model, tokenizer): a fresh reward model on the backbone of the causal LM `name` (a
    directory, the bundled alias or a cached hub id; see `dpokit.models.resolve_model_path`).

    The backbone weights come from the checkpoint; the `score` head (hidden → 1, no bias) is
    newly initialised (transformers reports it as MISSING: that is expected), drawn at random
    or, with `zero_head` (what `dpokit rm` trains from), set to zero: every reward starts at 0,
    the first update moves only the head, and the backbone's gradient grows with the head, so
    the pretrained features are not pushed around by a random projection's gradient before the
    head has learned anything (the argument of linear-probe-then-fine-tune, Kumar et al. 2022).
    `pad_token_id` is set to the pad id batches use, so the saved config is complete."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(name)
    if not (path / "config.json").exists():
        raise ValueError(f"{path} has no config.json: a reward model needs a full model directory, not a LoRA adapter")
    tokenizer = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        # one output (num_labels=1), given as a one-entry label map: passing num_labels alone makes
        # transformers warn that it disagrees with the base config's 2-entry map
        id2label={0: "reward"},
        label2id={"reward": 0},
        pad_token_id=resolve_pad_id(tokenizer),
        dtype=_torch_dtype(dtype),
        attn_implementation="sdpa",
    )
    if zero_head:
        torch.nn.init.zeros_(backbone_and_head(model)[1].weight)
    log.info("reward model %s on the backbone of %s", type(model).__name__, path)
    return _placed(model, device).eval(), tokenizer


def _check_reward_config(config, where: str) -> None:
    if config.num_labels != 1:
        raise ValueError(f"{where} is not a reward model: num_labels={config.num_labels}, expected 1")
    if config.get_text_config().pad_token_id is None:
        raise ValueError(f"{where} has no pad_token_id in its config")


def save_reward_model(model, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write the reward model and tokenizer (safetensors, via `dpokit.models.save_model`);
    `AutoModelForSequenceClassification.from_pretrained(out_dir)` loads it with num_labels=1."""
    _check_reward_config(model.config, "the model to save")
    return save_model(model, tokenizer, out_dir)


def load_reward_model(path: str | os.PathLike, *, dtype: str | torch.dtype = "float32", device: str | torch.device | None = None):
    """(model, tokenizer) of a directory written by `save_reward_model` (or by TRL's
    RewardTrainer), in eval mode; anything that is not a one-output classifier is refused."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=_torch_dtype(dtype), attn_implementation="sdpa")
    _check_reward_config(model.config, str(path))
    return _placed(model, device).eval(), load_tokenizer(path)


def _placed(model, device):
    """`model` on `device`, or on this process's device (dpokit.accel) when None."""
    if device is None:
        from dpokit import accel

        device = accel.current().device
    return model.to(device)


# ---------------------------------------------------------------------------------------------
# Scoring


def backbone_and_head(model):
    """(backbone, scalar `score` head) of a reward or value model, peft-wrapped or not."""
    # peft wraps the classifier; LoRA layers live inside its modules, so the unwrapped parts
    # still apply them.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "score", None)
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"{type(base).__name__} has no linear `score` head; build it with build_reward_model")
    return base.base_model, head


def score_rows(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
    """(N,) float32 rewards: the head applied to the backbone's hidden state at `last_index`
    of each row (right-padded rows; the positions are given, never guessed from pad ids)."""
    backbone, head = backbone_and_head(model)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return head(hidden[rows, last_index]).squeeze(-1).float()


def reward_batch(items: list[TokenizedPair], pad_id: int) -> dict:
    """[prompt+chosen; prompt+rejected] rows, right padded (`collate_pairs`), with the index
    of each row's last real token (its last completion token)."""
    batch = collate_pairs(items, pad_id)
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "last_index": batch["attention_mask"].sum(1) - 1,
    }


def pair_rewards(model, items: list[TokenizedPair], pad_id: int, pack_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected), each (len(items),), with gradient if grad is enabled.

    `pack_tokens` > 0: the prompt is encoded once per pair ([prompt | chosen | rejected] with the
    block mask of `dpokit.packing`, rows of at most that many tokens) and each reward is read at
    its branch's last token; the same numbers as the padded rows up to float rounding."""
    if pack_tokens > 0:
        from dpokit.packing import pack_for, packed_hidden

        backbone, head = backbone_and_head(model)
        packed = pack_for(model, items, pad_id, pack_tokens)
        hidden = packed_hidden(backbone, packed)
        scores = head(hidden.reshape(-1, hidden.shape[-1]).index_select(0, packed.ends)).squeeze(-1).float()
        return scores[: len(items)], scores[len(items) :]
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in reward_batch(items, pad_id).items()}
    scores = score_rows(model, batch["input_ids"], batch["attention_mask"], batch["last_index"])
    return scores[: len(items)], scores[len(items) :]


@dataclass(frozen=True)
class BTStep:
    loss: torch.Tensor  # mean Bradley–Terry loss over the pairs, differentiable
    accuracy: torch.Tensor  # share of pairs with r_c > r_r (ties ½)
    chosen_rewards: torch.Tensor  # (B,), detached
    rejected_rewards: torch.Tensor  # (B,), detached


def bt_step(model, items: list[TokenizedPair], pad_id: int, pack_tokens: int = 0) -> BTStep:
    """Score a batch of pairs and compute the Bradley–Terry loss; the caller runs backward and
    the optimizer."""
    chosen, rejected = pair_rewards(model, items, pad_id, pack_tokens)
    losses, accuracy = bradley_terry_loss(chosen, rejected)
    return BTStep(losses.mean(), accuracy, chosen.detach(), rejected.detach())
