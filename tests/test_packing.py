"""Exactness of the fast paths (issue 4, part 6): prefix sharing, padding-free packing and the
chunked output head give the plain padded path's per-pair log-probs and gradients.

The yardsticks are `collate_pairs` + `sequence_logps` and full logits + `logps_from_logits`;
everything runs in float32 on the tiny random llama.
"""

from __future__ import annotations

import random

import pytest
import torch

from dpokit.data.collate import TokenizedPair, collate_pairs
from dpokit.logprobs import logps_from_logits, sequence_logps
from dpokit.packing import (
    PackedBatch,
    ATTENTION_WEIGHT,
    plan_rows,
    pack_pairs,
    packed_pair_logps,
    plan_microbatches,
    segment_length,
)
from dpokit.testing import tiny_model

PAD = 258
MAX_LENGTH = 48  # the truncation budget for prompt + completion that the mixed pairs assume
RTOL = 1e-4


def _ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(256) for _ in range(n)]


def mixed_pairs() -> list[TokenizedPair]:
    """Pairs chosen to stress the layout: (prompt, chosen, rejected) lengths."""
    rng = random.Random(0)
    shapes = [
        (46, 2, 1),  # prompt fills almost all of MAX_LENGTH; 1-token rejected
        (5, 1, 9),  # 1-token chosen
        (3, 40, 2),  # chosen and rejected of very different lengths
        (12, 7, 7),
        (1, 3, 30),  # 1-token prompt: the first completion token is predicted from position 0
        (20, 11, 4),
    ]
    return [TokenizedPair(_ids(rng, p), _ids(rng, c), _ids(rng, r), 100 + i) for i, (p, c, r) in enumerate(shapes)]


def plain_logps(model, items, *, chunk_size=2048):
    batch = collate_pairs(items, PAD)
    return sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk_size=chunk_size).split_pairs()


def full_logits_logps(model, items):
    batch = collate_pairs(items, PAD)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logps_from_logits(logits, batch["labels"]).split_pairs()


def assert_same_logps(got, want):
    for g, w in zip(got[:2], want[:2]):
        torch.testing.assert_close(g, w, rtol=RTOL, atol=0.0)
    for g, w in zip(got[2:], want[2:]):
        assert torch.equal(g.cpu(), w.cpu())


def grads_of(model, fn) -> dict[str, torch.Tensor]:
    """Gradients of a fixed, asymmetric weighting of the per-pair log-probs, so a pair or a
    side landing in the wrong slot changes the result."""
    model.zero_grad(set_to_none=True)
    chosen, rejected = fn()[:2]
    w = torch.linspace(0.5, 1.5, chosen.shape[0])
    (w @ chosen - 0.7 * (w.flip(0) @ rejected)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(got, want):
    assert got.keys() == want.keys() and got
    for name in want:
        # Relative to the tensor's norm: element-wise rtol is meaningless for near-zero entries.
        err = (got[name] - want[name]).norm() / want[name].norm().clamp_min(1e-12)
        assert err <= RTOL, f"{name}: relative gradient error {err:.2e}"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_mixed_pairs_respect_max_length():
    for p in mixed_pairs():
        assert len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) <= MAX_LENGTH


# Budgets: no row limit (the planner picks the cheapest layout); a budget that forces several pairs per row and several
# rows; one pair per row (prefix sharing without packing).
BUDGETS = [None, 80, max(segment_length(p) for p in mixed_pairs())]


@pytest.mark.parametrize("budget", BUDGETS)
def test_packed_logps_equal_plain(model, budget):
    items = mixed_pairs()
    packed = pack_pairs(items, PAD, budget)
    if budget == 80:
        rows_used = packed.input_ids.shape[0]
        assert 1 < rows_used < len(items)  # the case really has shared rows and several rows
    with torch.no_grad():
        got = packed_pair_logps(model, packed, chunk_size=3)
        assert_same_logps(got, plain_logps(model, items))
        assert_same_logps(got, full_logits_logps(model, items))


@pytest.mark.parametrize("budget", BUDGETS)
def test_packed_gradients_equal_plain(model, budget):
    items = mixed_pairs()
    packed = pack_pairs(items, PAD, budget)
    got = grads_of(model, lambda: packed_pair_logps(model, packed, chunk_size=5))
    assert_same_grads(got, grads_of(model, lambda: full_logits_logps(model, items)))


def test_bool_mask_equals_float_mask(model):
    items = mixed_pairs()
    with torch.no_grad():
        as_float = packed_pair_logps(model, pack_pairs(items, PAD, 80))
        as_bool = packed_pair_logps(model, pack_pairs(items, PAD, 80, mask_dtype=torch.bool))
    assert_same_logps(as_bool, as_float)


def test_chunked_head_equals_unchunked(model):
    items = mixed_pairs()
    packed = pack_pairs(items, PAD, 80)
    for fn in (
        lambda c: packed_pair_logps(model, packed, chunk_size=c),
        lambda c: plain_logps(model, items, chunk_size=c),
    ):
        with torch.no_grad():
            assert_same_logps(fn(3), fn(10**6))
        assert_same_grads(grads_of(model, lambda: fn(3)), grads_of(model, lambda: fn(10**6)))


def test_rejected_never_sees_chosen(model):
    """Changing only the chosen tokens leaves every rejected log-prob unchanged."""
    items = mixed_pairs()
    swapped = [TokenizedPair(p.prompt_ids, [(t + 1) % 256 for t in p.chosen_ids], p.rejected_ids, p.index) for p in items]
    with torch.no_grad():
        a = packed_pair_logps(model, pack_pairs(items, PAD, None))
        b = packed_pair_logps(model, pack_pairs(swapped, PAD, None))
    torch.testing.assert_close(a[1], b[1], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(a[0], b[0])


def test_empty_prompt_and_empty_completion_match_plain(model):
    rng = random.Random(1)
    items = [
        TokenizedPair([], _ids(rng, 6), _ids(rng, 3), 0),  # plain path cannot score token 0
        TokenizedPair(_ids(rng, 4), _ids(rng, 5), [], 1),
        TokenizedPair(_ids(rng, 2), [], _ids(rng, 1), 2),
    ]
    with torch.no_grad():
        got = packed_pair_logps(model, pack_pairs(items, PAD, 16))
        assert_same_logps(got, plain_logps(model, items))
    assert got[2].tolist() == [5, 5, 0] and got[3].tolist() == [2, 0, 1]


def test_lora_model_matches_plain():
    peft = pytest.importorskip("peft")
    base = tiny_model(seed=3)
    # init_lora_weights=False: random B as well as A, so the adapter changes the outputs.
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = peft.get_peft_model(base, config)
    items = mixed_pairs()
    packed = pack_pairs(items, PAD, 80)
    with torch.no_grad():
        got = packed_pair_logps(model, packed, chunk_size=4)
        assert_same_logps(got, plain_logps(model, items))
        with model.disable_adapter():
            off = packed_pair_logps(model, packed)
        assert not torch.allclose(off[0], got[0])
    want = grads_of(model, lambda: full_logits_logps(model, items))
    assert all("lora_" in n for n in want)
    assert_same_grads(grads_of(model, lambda: packed_pair_logps(model, packed, chunk_size=4)), want)


def test_layout_of_one_row():
    """Exact tensors for two small pairs in one row of budget 12 (plus one pad)."""
    a = TokenizedPair([10, 11], [20, 21], [30], 7)  # P=2, C=2, R=1 -> 5 tokens
    b = TokenizedPair([12], [22], [31, 32], 8)  # P=1, C=1, R=2 -> 4 tokens
    c = TokenizedPair([13, 14, 15, 16, 17, 18, 19, 40], [23, 24], [33], 9)  # 11 tokens, own row
    packed = pack_pairs([a, b, c], PAD, 12, mask_dtype=torch.bool)
    assert packed.input_ids.tolist() == [
        [10, 11, 20, 21, 30, 12, 22, 31, 32, PAD, PAD],
        [13, 14, 15, 16, 17, 18, 19, 40, 23, 24, 33],
    ]
    assert packed.position_ids[0].tolist() == [0, 1, 2, 3, 2, 0, 1, 1, 2, 0, 0]
    assert packed.position_ids[1].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 8]
    T = 11
    # Pairs in input order a, b, c; slots chosen = i, rejected = 3 + i.
    assert packed.targets.tolist() == [20, 21, 30, 22, 31, 32, 23, 24, 33]
    assert packed.source.tolist() == [1, 2, 1, 5, 5, 7, T + 7, T + 8, T + 7]
    assert packed.owner.tolist() == [0, 0, 3, 1, 4, 4, 2, 2, 5]
    assert packed.pair_index.tolist() == [7, 8, 9]
    expected = [
        # 10 11 20 21 30 | 12 22 31 32 | pad pad
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0],  # rejected 30: prompt and itself, not chosen
        [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0],  # pair b starts: sees nothing of pair a
        [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],  # padding sees only itself (no all-blocked rows)
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    ]
    assert packed.attention_mask.shape == (2, 1, T, T)
    assert packed.attention_mask[0, 0].int().tolist() == expected
    as_float = pack_pairs([a, b, c], PAD, 12).attention_mask
    assert as_float.dtype == torch.float32
    assert torch.equal(as_float == 0, packed.attention_mask)
    assert (as_float[as_float != 0] == torch.finfo(torch.float32).min).all()


def test_planner_keeps_budget_and_every_pair_once():
    rng = random.Random(5)
    items = [TokenizedPair(*(_ids(rng, rng.randint(lo, 40)) for lo in (0, 1, 1)), i) for i in range(60)]
    for budget in (max(map(segment_length, items)), 150, 400, 10**6):
        plan = plan_microbatches(items, budget)
        assert all(sum(map(segment_length, mb)) <= budget for mb in plan)
        seen = [p.index for mb in plan for p in mb]
        assert sorted(seen) == list(range(60))
        assert all([p.index for p in mb] == sorted(p.index for p in mb) for mb in plan)  # order kept inside
        if budget == 10**6:
            assert len(plan) == 1
    # First-fit fills earlier bins: lengths 6, 6, 3 with budget 10 -> [[6, 3], [6]].
    small = [TokenizedPair([1] * n, [], [], i) for i, n in enumerate((6, 6, 3))]
    assert [[p.index for p in mb] for mb in plan_microbatches(small, 10)] == [[0, 2], [1]]


def test_row_planner_keeps_budget_and_every_item_once():
    rng = random.Random(11)
    for _ in range(200):
        lengths = [rng.randint(1, 400) for _ in range(rng.randint(1, 12))]
        budget = rng.randint(max(lengths), 1500)
        rows = plan_rows(lengths, budget)
        assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in r) <= budget for r in rows)
        assert all(r == sorted(r) for r in rows)


def test_plan_rows_weighs_padding_against_attention():
    cost = lambda k, w: k * w * (1 + ATTENTION_WEIGHT * w)  # noqa: E731
    # 4 pairs of ~270 tokens: 512-token rows only fit one pair each (2+1+1 would overflow);
    # a 1024 cap allows 2 rows of 540, cheaper than 4 rows padded to 300.
    lengths = [300, 280, 260, 240]
    assert plan_rows(lengths, 512) == [[0], [1], [2], [3]]
    assert plan_rows(lengths, 1024) == [[0, 3], [1, 2]]
    assert cost(2, 540) < cost(4, 300)
    # Equal lengths need no padding one per row, and attention is then smallest.
    assert plan_rows([168] * 4, 1024) == [[0], [1], [2], [3]]
    # Benchmark-like lengths: pairs of 200/190/150/140 go two to a row (340, 340) rather than
    # one per row padded to 200.
    assert plan_rows([200, 190, 150, 140], 1024) == [[0, 3], [1, 2]]
    assert cost(2, 340) < cost(4, 200)
    # One long pair and short ones: a single row (no padding) beats padding a short row to 500.
    assert plan_rows([500, 60, 50, 40], 1024) == [[0, 1, 2, 3]]
    assert cost(1, 650) < cost(2, 500)


def test_pack_pairs_uses_the_cheapest_layout():
    items = [TokenizedPair([1] * 4, [2] * 3, [3] * 3, i) for i in range(4)]  # 10 tokens each
    assert pack_pairs(items, PAD, 32).input_ids.shape == (4, 10)  # no padding, least attention
    uneven = [TokenizedPair([1] * n, [2], [3], i) for i, n in enumerate((98, 8, 8, 8))]  # 100, 10, 10, 10
    assert pack_pairs(uneven, PAD, 200).input_ids.shape == (1, 130)  # not 4 rows padded to 100
    assert pack_pairs(uneven, PAD, 100).input_ids.shape == (2, 100)  # the cap forces the long one alone


def test_planner_rejects_oversized_pair():
    items = [TokenizedPair([1] * 5, [2] * 5, [3] * 5, 0)]
    with pytest.raises(ValueError, match="budget"):
        plan_microbatches(items, 14)
    with pytest.raises(ValueError, match="budget"):
        pack_pairs(items, PAD, 14)
    assert len(plan_microbatches(items, 15)) == 1


def test_microbatches_packed_separately_equal_one_batch(model):
    """Packing micro-batches planned by tokens and concatenating gives the whole batch's
    per-pair log-probs (by data-set index)."""
    items = mixed_pairs()
    with torch.no_grad():
        want = dict(zip([p.index for p in items], plain_logps(model, items)[0].tolist()))
        for mb in plan_microbatches(items, 70):
            packed: PackedBatch = pack_pairs(mb, PAD)
            chosen = packed_pair_logps(model, packed)[0]
            for idx, value in zip(packed.pair_index.tolist(), chosen.tolist()):
                assert value == pytest.approx(want[idx], rel=RTOL)


def test_bfloat16_model_gets_a_bfloat16_mask():
    """A float32 mask is recast for a bf16 model (blocked entries at bf16's minimum, not -inf)
    and the result stays close to the plain path in the same precision."""
    model = tiny_model().to(torch.bfloat16)
    items = mixed_pairs()
    with torch.no_grad():
        got = packed_pair_logps(model, pack_pairs(items, PAD, 80))
        want = plain_logps(model, items)
    assert all(torch.isfinite(t).all() for t in got[:2])
    for g, w in zip(got[:2], want[:2]):
        torch.testing.assert_close(g, w, rtol=1e-2, atol=0.0)
