"""The Bradley–Terry reward model core on the tiny offline llama: built from a causal-LM
directory, scored at the last completion token, trained on a checkable rule, saved and
reloaded with plain transformers.

Tolerance 1e-5 for score comparisons: the same float32 weights run on differently shaped
(padded vs unpadded) inputs, so only the order of floating-point reductions differs."""

import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from dpokit.data.collate import TokenizedPair
from dpokit.models import save_model
from dpokit.rlhf.reward_model import (
    backbone_and_head,
    bt_step,
    build_reward_model,
    load_reward_model,
    pair_rewards,
    reward_batch,
    save_reward_model,
    score_rows,
)
from dpokit.testing import tiny_model, tiny_tokenizer

EOS = 258  # <|im_end|> in the tiny tokenizer; it is also the pad id when there is no pad token
TOL = 1e-5


@pytest.fixture()
def causal_dir(tmp_path):
    """A tiny causal LM saved with a tokenizer that has NO pad token (pad falls back to EOS)."""
    return save_model(tiny_model(), tiny_tokenizer(), tmp_path / "causal")


@pytest.fixture()
def reward_model(causal_dir):
    torch.manual_seed(0)  # the fresh score head is drawn from the global RNG
    model, tokenizer = build_reward_model(causal_dir)
    return model, tokenizer


def _pairs():
    # Different prompt and completion lengths, every completion ending with EOS (= pad id here),
    # so HF's pad-id pooling would pick the wrong token in every row.
    return [
        TokenizedPair([10, 11, 12], [20, 21, EOS], [30, EOS], index=0),
        TokenizedPair([13], [22, 23, 24, 25, 26, EOS], [31, 32, 33, EOS], index=1),
        TokenizedPair([14, 15, 16, 17, 18], [27, EOS], [34, 35, 36, 37, 38, 39, 40, EOS], index=2),
    ]


def _unpadded_reference(model, ids: list[int]) -> float:
    # HF's own forward on one unpadded row; with pad_token_id None and batch size 1 it pools
    # the final position, which is the last completion token: an independent reference.
    pad = model.config.pad_token_id
    model.config.pad_token_id = None
    try:
        return model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    finally:
        model.config.pad_token_id = pad


def test_build_gives_scalar_head_on_the_causal_backbone(causal_dir, reward_model):
    model, tokenizer = reward_model
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == EOS  # tokenizer has no pad token → EOS stands in
    assert tuple(model.score.weight.shape) == (1, 64)
    causal = tiny_model()
    assert torch.equal(model.model.embed_tokens.weight, causal.model.embed_tokens.weight)
    assert torch.equal(model.model.layers[1].mlp.up_proj.weight, causal.model.layers[1].mlp.up_proj.weight)


def test_zero_head_scores_every_sequence_zero_and_leaves_the_backbone(causal_dir):
    model, _ = build_reward_model(causal_dir, zero_head=True)
    assert torch.count_nonzero(model.score.weight) == 0
    ids = torch.tensor([[10, 11, 12, EOS], [13, 14, 15, 16]])
    with torch.no_grad():
        assert torch.equal(score_rows(model, ids, torch.ones_like(ids), torch.tensor([3, 3])), torch.zeros(2))
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, tiny_model().model.layers[0].self_attn.q_proj.weight)


def test_pad_token_of_the_tokenizer_is_used(tmp_path):
    path = save_model(tiny_model(), tiny_tokenizer(with_pad=True), tmp_path / "with_pad")
    model, _ = build_reward_model(path)
    assert model.config.pad_token_id == 259


def test_scores_equal_unpadded_forward_at_last_completion_token(reward_model):
    model, _ = reward_model
    items = _pairs()
    with torch.no_grad():
        chosen, rejected = pair_rewards(model, items, pad_id=EOS)
        want_c = [_unpadded_reference(model, p.prompt_ids + p.chosen_ids) for p in items]
        want_r = [_unpadded_reference(model, p.prompt_ids + p.rejected_ids) for p in items]
    assert chosen.tolist() == pytest.approx(want_c, abs=TOL)
    assert rejected.tolist() == pytest.approx(want_r, abs=TOL)
    # The rows really are padded (else this test would not exercise padding).
    assert int(reward_batch(items, EOS)["attention_mask"].eq(0).sum()) > 0


def test_padding_does_not_change_scores(reward_model):
    model, _ = reward_model
    items = _pairs()
    with torch.no_grad():
        alone = [pair_rewards(model, [p], pad_id=EOS) for p in items]
        together = pair_rewards(model, items, pad_id=EOS)
        # A different pad id fills the padding with other tokens: scores must not move.
        other_pad = pair_rewards(model, items, pad_id=0)
    for i, (c, r) in enumerate(alone):
        assert together[0][i].item() == pytest.approx(c.item(), abs=TOL)
        assert together[1][i].item() == pytest.approx(r.item(), abs=TOL)
    assert torch.allclose(other_pad[0], together[0], atol=TOL)
    assert torch.allclose(other_pad[1], together[1], atol=TOL)


def _vocab_rule_pairs(n: int, seed: int) -> list[TokenizedPair]:
    # Chosen completions use byte ids 0..127, rejected ones 128..255: a rule the reward model
    # can only satisfy by reading the completion, whatever the prompt.
    rng = random.Random(seed)

    def tokens(lo, hi):
        return [rng.randrange(lo, hi) for _ in range(rng.randint(2, 6))]

    return [
        TokenizedPair(tokens(0, 256), tokens(0, 128) + [EOS], tokens(128, 256) + [EOS], index=i)
        for i in range(n)
    ]


def test_training_learns_a_checkable_rule(reward_model):
    model, _ = reward_model
    train, held_out = _vocab_rule_pairs(128, seed=1), _vocab_rule_pairs(64, seed=2)
    with torch.no_grad():
        before = bt_step(model, held_out, EOS).accuracy.item()
    torch.manual_seed(0)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(40):
        batch = [train[(step * 16 + j) % len(train)] for j in range(16)]
        out = bt_step(model, batch, EOS)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = bt_step(model, held_out, EOS)
    # Held-out pairs never seen in training: 0.9 is far above the ~0.5 of the random head.
    assert after.accuracy.item() >= 0.9, (before, after.accuracy.item())
    assert before < 0.8


def test_save_and_reload_with_plain_transformers(reward_model, tmp_path):
    model, tokenizer = reward_model
    with torch.no_grad():
        model.score.weight.normal_()  # a head that differs from any fresh init
        want = pair_rewards(model, _pairs(), EOS)
    out = save_reward_model(model, tokenizer, tmp_path / "rm")
    plain = AutoModelForSequenceClassification.from_pretrained(out)
    assert plain.config.num_labels == 1 and plain.config.pad_token_id == EOS
    reloaded, _ = load_reward_model(out)
    with torch.no_grad():
        for loaded in (plain, reloaded):
            got = pair_rewards(loaded, _pairs(), EOS)
            assert torch.allclose(got[0], want[0], atol=TOL) and torch.allclose(got[1], want[1], atol=TOL)


def test_save_refuses_a_model_without_pad_id(reward_model, tmp_path):
    model, tokenizer = reward_model
    model.config.pad_token_id = None
    with pytest.raises(ValueError, match="pad_token_id"):
        save_reward_model(model, tokenizer, tmp_path / "rm")
    assert not (tmp_path / "rm").exists()


def test_load_refuses_a_causal_lm_directory(causal_dir):
    # A causal LM loads as a 2-label classifier by default: not a reward model.
    with pytest.raises(ValueError, match="num_labels=2"):
        load_reward_model(causal_dir)


def test_build_refuses_an_adapter_directory(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="LoRA adapter"):
        build_reward_model(tmp_path)


@pytest.mark.parametrize("pack_tokens", [1, 12, 1000])
def test_packed_rewards_equal_unpadded_forward(reward_model, pack_tokens):
    """Prefix sharing: each pair as one [prompt | chosen | rejected] segment under the block
    mask, rewards read at each branch's last token; one pair per row (budget 1), several pairs
    per row, and everything in few rows. Includes 1-token prompts and a 2-token rejected; a
    1-token completion is added too. Gradients flow through the packed path."""
    model, _ = reward_model
    items = _pairs() + [TokenizedPair([19, 20], [EOS], [41, 42, EOS], index=3)]
    chosen, rejected = pair_rewards(model, items, EOS, pack_tokens=pack_tokens)
    for i, p in enumerate(items):
        assert chosen[i].item() == pytest.approx(_unpadded_reference(model, p.prompt_ids + p.chosen_ids), abs=TOL)
        assert rejected[i].item() == pytest.approx(_unpadded_reference(model, p.prompt_ids + p.rejected_ids), abs=TOL)
    (chosen - rejected).sum().backward()
    assert model.score.weight.grad is not None and model.score.weight.grad.abs().sum() > 0


def test_head_lr_puts_the_head_in_its_own_group_and_the_schedule_scales_both(causal_dir):
    from dpokit.config import TrainConfig
    from dpokit.train.optim import build_optimizer, build_scheduler

    model, _ = build_reward_model(causal_dir, zero_head=True)
    cfg = TrainConfig(objective="rm", lr=1e-5, head_lr=1e-3, warmup_steps=2, schedule="constant")
    _, head = backbone_and_head(model)
    opt = build_optimizer(model.parameters(), cfg, head=head)
    assert [g["lr"] for g in opt.param_groups] == [1e-5, 1e-3]
    assert [id(p) for p in opt.param_groups[1]["params"]] == [id(head.weight)]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    sched = build_scheduler(opt, cfg, 10)
    assert sched.get_last_lr() == pytest.approx([0.5e-5, 0.5e-3])  # warmup step 1 of 2
    # head_lr=0: one group at lr, as for every other objective.
    assert len(build_optimizer(model.parameters(), TrainConfig(objective="rm", lr=1e-5), head=head).param_groups) == 1


@pytest.mark.parametrize("changes, message", [
    ({"objective": "dpo", "head_lr": 1e-3}, "head_lr applies to objective=rm"),
    ({"objective": "rm", "head_lr": 1e-3, "optimizer_in_backward": True, "max_grad_norm": 0.0}, "second parameter group"),
])
def test_head_lr_misuse_is_a_config_error(changes, message):
    from dpokit.config import ConfigError, TrainConfig, validate_train_config

    with pytest.raises(ConfigError, match=message):
        validate_train_config(TrainConfig(**changes))
