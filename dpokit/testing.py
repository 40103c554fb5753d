"""Tiny, fully offline models and tokenizers for tests and smoke runs.

Nothing here touches a model hub: the tokenizer is built in memory (byte level, no
merges, so one byte = one token and expected ids can be worked out by hand) and the
model is a randomly initialised 2-layer llama of width 64.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# SmolLM2-style chat markup, so chat-data code paths see the same shape as the real model.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_vocab() -> dict[str, int]:
    # The GPT-2 byte->unicode table: every byte is one visible symbol, one token.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    return {ch: i for i, ch in enumerate(sorted(alphabet))}


def tiny_tokenizer(*, with_pad: bool = False, eos: str = "<|im_end|>") -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: ids 0..255 are bytes (in `ByteLevel.alphabet()` order),
    then `<|endoftext|>`=256, `<|im_start|>`=257, `<|im_end|>`=258 (and `<pad>`=259 if asked).

    By default it has no pad token, like many causal LM tokenizers, so code must cope.
    """
    vocab = _byte_vocab()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    fast.eos_token = eos
    fast.bos_token = None
    if with_pad:
        fast.add_special_tokens({"pad_token": "<pad>"})
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def tiny_model(vocab_size: int = 260, *, seed: int = 0, layers: int = 2, width: int = 64) -> LlamaForCausalLM:
    """A random llama (2 layers, width 64, 4 heads) in float32, eval mode."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=width * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=258,
        bos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.config._attn_implementation = "sdpa"
    return model.eval()
