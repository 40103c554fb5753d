"""Batched sampling on the tiny offline model: shapes, seeding, EOS, padding, prompts."""

import pytest
import torch

from dpokit.generate import Completion, sample_completions
from dpokit.testing import tiny_model, tiny_tokenizer

EOS = 258
PROMPTS = ["I watched this thriller about", "a", "hello there, friend"]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _sample(model, tok, prompts=PROMPTS, **kw):
    kw = {"n_per_prompt": 2, "max_new_tokens": 12, "progress": False, **kw}
    return sample_completions(model, tok, prompts, **kw)


def _ids(result):
    return [[c.token_ids for c in row] for row in result]


def test_shapes_and_types(model, tok):
    out = _sample(model, tok, n_per_prompt=3, batch_size=4)
    assert len(out) == len(PROMPTS)
    assert all(len(row) == 3 for row in out)
    for row in out:
        for c in row:
            assert isinstance(c, Completion)
            # A random model almost never picks EOS (1 in 260), so rows run to the budget.
            assert len(c.token_ids) <= 12
            assert c.finished == (c.token_ids[-1] == EOS)
            assert not c.finished or len(c.token_ids) <= 12


def test_same_seed_same_samples_other_seed_differs(model, tok):
    a = _sample(model, tok, seed=3)
    b = _sample(model, tok, seed=3)
    c = _sample(model, tok, seed=4)
    assert _ids(a) == _ids(b)
    assert [[x.text for x in row] for row in a] == [[x.text for x in row] for row in b]
    assert _ids(a) != _ids(c)
    # Completions of one prompt are independent draws, not copies.
    assert a[0][0].token_ids != a[0][1].token_ids


def test_caller_rng_untouched(model, tok):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _sample(model, tok, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_greedy_matches_plain_forward_argmax(model, tok):
    """Greedy tokens equal the argmax of an uncached, unpadded forward pass: checks the
    KV cache, left padding (prompts of different lengths share a batch) and that the
    prompt is excluded from token_ids."""
    out = _sample(model, tok, n_per_prompt=1, greedy=True, batch_size=3)
    for prompt, row in zip(PROMPTS, out):
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        gen = row[0].token_ids
        assert len(gen) == 12 and not row[0].finished
        full = torch.tensor([prompt_ids + gen[:-1]])
        with torch.no_grad():
            logits = model(full).logits[0]
        predicted = logits[len(prompt_ids) - 1:].argmax(-1).tolist()
        assert predicted == gen
        assert row[0].text == tok.decode(gen, skip_special_tokens=True)


def _eos_boost(model, bias: float):
    """Raise the EOS logit so rows stop at different steps inside one batch."""
    def hook(_module, _inputs, output):
        output = output.clone()
        output[..., EOS] += bias
        return output
    return model.lm_head.register_forward_hook(hook)


@pytest.mark.parametrize("with_pad", [False, True])
def test_stops_at_eos_and_strips_padding(model, with_pad):
    tok = tiny_tokenizer(with_pad=with_pad)
    assert (tok.pad_token_id is not None) == with_pad
    handle = _eos_boost(model, 3.0)  # p(EOS) ~ 7% per step
    try:
        out = _sample(model, tok, n_per_prompt=8, max_new_tokens=40, batch_size=8, seed=1)
    finally:
        handle.remove()
    flat = [c for row in out for c in row]
    finished = [c for c in flat if c.finished]
    assert finished and len(finished) < len(flat)  # some stop, some hit the budget
    lengths = {len(c.token_ids) for c in finished}
    assert len(lengths) > 1  # stopped at different steps within a batch
    for c in flat:
        # EOS at most once and only at the end; never padding (259) in the ids.
        assert c.token_ids.count(EOS) == (1 if c.finished else 0)
        assert not c.finished or c.token_ids[-1] == EOS
        assert 259 not in c.token_ids
        assert len(c.token_ids) == 40 or c.finished
        assert "<|im_end|>" not in c.text


def test_first_token_eos_gives_empty_text(model, tok):
    handle = _eos_boost(model, 100.0)
    try:
        out = _sample(model, tok, n_per_prompt=1)
    finally:
        handle.remove()
    for row in out:
        assert row[0] == Completion(text="", token_ids=[EOS], finished=True)


def test_batch_size_does_not_change_greedy(model, tok):
    a = _sample(model, tok, greedy=True, batch_size=1)
    b = _sample(model, tok, greedy=True, batch_size=16)
    assert _ids(a) == _ids(b)


def test_bad_arguments(model, tok):
    with pytest.raises(ValueError):
        _sample(model, tok, temperature=0.0)
    with pytest.raises(ValueError):
        _sample(model, tok, n_per_prompt=0)
