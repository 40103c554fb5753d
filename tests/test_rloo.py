"""RLOO on the tiny model: the advantage and loss wiring checked by hand on a rollout with
known scores, KL 0 at round 0, that it learns a checkable reward (with full weights and with
LoRA), the clipped multi-epoch option, and the command's library path."""

import copy
import math

import pytest
import torch

from dpokit.config import ConfigError
from dpokit.rlhf.rloo import RLOOTrainer, clipped_sequence_losses, run_rloo
from dpokit.rlhf.rloo_config import RLOOConfig
from dpokit.rlhf.rollout import policy_token_logps
from dpokit.testing import tiny_model, tiny_tokenizer

PROMPTS = [f"q{i}:" for i in range(16)]


def lowercase_share(texts):
    """Share of characters that are a-z: about 10% for the random tiny model (26 of 260 ids)."""
    return [sum("a" <= ch <= "z" for ch in t) / max(len(t), 1) for t in texts]


def make_trainer(tmp_path, policy=None, **kw):
    base = dict(reward="sentiment", steps=3, rollout_prompts=8, k=4, minibatch_size=32, max_new_tokens=8, lr=1e-2,
                kl_coef=0.01, output_dir=str(tmp_path / "rloo"), progress=False, seed=5)
    base.update(kw)
    return RLOOTrainer(RLOOConfig(**base), policy=policy or tiny_model(), tokenizer=tiny_tokenizer(), prompts=PROMPTS,
                       reward_fn=lowercase_share, log=lambda *a: None)


def test_advantages_and_loss_by_hand(tmp_path, monkeypatch):
    """2 prompts × k=3 with known scores; micro-batches of 4 straddle the two prompts. At round
    0 KL is 0, so A_i = s_i − mean of the other two; the logged loss and the gradient are those
    of −Σ A_i·log π(y_i) / 6 computed here from the rollout's own tensors."""
    trainer = make_trainer(tmp_path, rollout_prompts=2, k=3, minibatch_size=4, kl_coef=0.5, max_grad_norm=0.0)
    batch, texts = trainer.rollout(0)
    assert batch.mask.shape[0] == 6
    scores = torch.tensor([1.0, 2.0, 4.0, 0.0, 0.0, 3.0])
    monkeypatch.setattr(trainer, "score", lambda b, t: (scores, scores))
    prep = trainer.prepare(batch, trainer.score(batch, texts)[0])
    # Policy = reference at round 0: both KL estimates vanish (up to float32 rounding of two
    # identical forward passes, far below the 1e-4 that would move an advantage visibly).
    assert prep["seq_kl"].abs().max() < 1e-4 and prep["seq_kl_k3"].abs().max() < 1e-4
    by_hand = torch.tensor([1 - 3.0, 2 - 2.5, 4 - 1.5, 0 - 1.5, 0 - 1.5, 3 - 0.0])
    torch.testing.assert_close(prep["advantages"], by_hand, atol=1e-4, rtol=0)

    reference_copy = copy.deepcopy(trainer.policy).train()
    logp = (policy_token_logps(reference_copy, batch) * batch.mask).sum(-1)
    hand_loss = -(prep["advantages"] * logp).sum() / 6
    hand_loss.backward()
    hand_norm = torch.stack([p.grad.norm() for p in reference_copy.parameters() if p.grad is not None]).norm()

    stats = trainer.update(batch, prep)
    # float32 sums of ~50 log-probs in a different order: agreement to 1e-5 relative.
    assert stats["loss"] == pytest.approx(hand_loss.item(), rel=1e-5)
    assert stats["grad_norm"] == pytest.approx(float(hand_norm), rel=1e-4)
    assert stats["skipped_steps"] == 0

    # After the step the policy has left the reference: KL_i = Σ_t (log π − log π_ref) and the
    # shaped reward s_i − β·KL_i (β = 0.5) enter the leave-one-out baseline.
    after = trainer.prepare(batch, scores)
    with torch.no_grad():
        kl = ((policy_token_logps(trainer.policy, batch) - policy_token_logps(trainer.reference, batch)) * batch.mask).sum(-1)
    assert kl.abs().min() > 1e-3
    shaped = scores - 0.5 * kl
    loo = torch.stack([shaped[i] - (shaped[3 * (i // 3) : 3 * (i // 3) + 3].sum() - shaped[i]) / 2 for i in range(6)])
    # Same float32 forwards, summed in another order: 1e-5 absolute on rewards of size ~1.
    torch.testing.assert_close(after["seq_kl"], kl, atol=1e-5, rtol=0)
    torch.testing.assert_close(after["advantages"], loo, atol=1e-5, rtol=0)


def test_same_seed_same_run(tmp_path):
    a = make_trainer(tmp_path / "a").round(0)
    b = make_trainer(tmp_path / "b").round(0)
    for key in ("reward/ground_truth", "kl", "loss", "grad_norm", "entropy"):
        assert a[key] == b[key], key


def test_rloo_raises_a_checkable_reward(tmp_path):
    """The reward is the share of a-z characters (about 0.1 for the random model); 12 rounds of
    8 prompts × 4 samples, one REINFORCE step each, must raise it well above where it started
    (it reaches ~0.7), while KL to the reference grows from 0."""
    trainer = make_trainer(tmp_path, steps=12)
    rounds = [trainer.round(r) for r in range(12)]
    first = rounds[0]["reward/ground_truth"]
    last = sum(r["reward/ground_truth"] for r in rounds[-3:]) / 3
    assert first < 0.2 and last > first + 0.3, (first, last)
    assert rounds[0]["kl"] == pytest.approx(0.0, abs=1e-4) and rounds[-1]["kl"] > 1.0
    assert all(math.isfinite(r["loss"]) and r["skipped_steps"] == 0 for r in rounds)


def test_lora_reference_is_the_adapter_off(tmp_path):
    """With LoRA no copy is made: the reference is the adapter switched off, so KL is 0 before
    any update and the reference log-probs do not move when the adapter trains. An update
    changes only adapter weights, in the direction of the advantages:
    Σ A_i·(log π_new(y_i) − log π_old(y_i)) > 0 on the rollout it was trained on."""
    from dpokit.models import LoraSettings, apply_lora

    policy = apply_lora(tiny_model(), LoraSettings(r=8, alpha=16, target_modules=("q_proj", "v_proj", "up_proj", "down_proj")))
    trainer = make_trainer(tmp_path, policy=policy, lr=2e-2)
    assert trainer.reference is None
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    batch, texts = trainer.rollout(0)
    prep = trainer.prepare(batch, trainer.score(batch, texts)[0])
    assert prep["seq_kl"].abs().max() < 1e-4
    ref_before = trainer._ref_token_logps(batch)
    trainer.update(batch, prep)
    with torch.no_grad():
        moved = (policy_token_logps(policy, batch) * batch.mask).sum(-1) - prep["old_logp"]
    assert float((prep["advantages"] * moved).sum()) > 0
    assert torch.equal(trainer._ref_token_logps(batch), ref_before)
    assert trainer.prepare(batch, prep["rewards"])["seq_kl"].abs().max() > 1e-3
    assert all(torch.equal(p, frozen[n]) for n, p in policy.named_parameters() if not p.requires_grad)


def test_clipped_sequence_losses_by_hand():
    """ρ = e^{log π − log π_old}; A > 0 caps the gain at 1+ε, A < 0 keeps the larger penalty;
    at ρ = 1 the gradient in log π is −A, REINFORCE's."""
    old = torch.zeros(3)
    seq = torch.tensor([math.log(1.5), math.log(1.5), 0.0], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 2.0])
    losses, clipped = clipped_sequence_losses(seq, old, adv, clip_eps=0.2)
    torch.testing.assert_close(losses.detach(), torch.tensor([-1.2, 1.5, -2.0]))
    assert clipped.tolist() == [True, False, False]
    losses.sum().backward()
    torch.testing.assert_close(seq.grad, torch.tensor([0.0, 1.5, -2.0]))


def test_two_epochs_clip_only_after_the_first(tmp_path):
    """ppo_epochs=2: the first step sees ρ = 1 (nothing clipped), the second a moved policy."""
    trainer = make_trainer(tmp_path, ppo_epochs=2, clip_eps=0.05, lr=3e-2)
    batch, texts = trainer.rollout(0)
    prep = trainer.prepare(batch, trainer.score(batch, texts)[0])
    trainer.policy.train()
    first = trainer._step(batch, prep)
    second = trainer._step(batch, prep)
    assert first["clip_frac"] == 0.0 and second["clip_frac"] > 0


@pytest.mark.parametrize("override, field", [({"k": 1}, "k"), ({"reward": "model"}, "reward_model"), ({"rollout_prompts": 0}, "rollout_prompts")])
def test_bad_settings_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field):
        RLOOConfig(**{"reward": "sentiment", **override}).validate()


def test_run_rloo_with_a_reward_model_saves_the_policy(tmp_path, tiny_dirs):
    """Prompts from a file, reward = the reward model's score (logged beside VADER's ground
    truth), the policy saved under final/ and loadable with plain transformers, changed."""
    from transformers import AutoModelForCausalLM

    from dpokit.train.metrics import read_metrics

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "p{i}:"}}\n' for i in range(6)))
    cfg = RLOOConfig(model=str(tiny_dirs / "lm"), reward_model=str(tiny_dirs / "rm"), prompts=str(prompts), steps=2,
                     rollout_prompts=2, k=2, minibatch_size=3, max_new_tokens=4, lr=1e-2,
                     output_dir=str(tmp_path / "run"), progress=False)
    run_rloo(cfg, log=lambda *a: None)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert math.isfinite(r["reward/model"]) and -1 <= r["reward/ground_truth"] <= 1
        assert r["reward/model"] != r["reward/ground_truth"]
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    start = AutoModelForCausalLM.from_pretrained(tiny_dirs / "lm")
    assert any(not torch.equal(a, b) for a, b in zip(saved.state_dict().values(), start.state_dict().values()))
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "rloo_summary.json").exists()
