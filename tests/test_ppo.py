"""PPO on the tiny model: the loop's invariants at the first update, and that it learns a
checkable reward (a property of the sampled text), with full weights and with LoRA."""

import math

import pytest
import torch

from dpokit.rlhf.ppo import PPOTrainer
from dpokit.rlhf.ppo_config import PPOConfig
from dpokit.testing import tiny_model, tiny_tokenizer

PROMPTS = [f"q{i}:" for i in range(16)]


def lowercase_share(texts):
    """Share of characters that are a-z: about 10% for the random tiny model (26 of 260 ids)."""
    return [sum("a" <= ch <= "z" for ch in t) / max(len(t), 1) for t in texts]


def tiny_value_model(seed=1):
    from transformers import LlamaForSequenceClassification

    config = tiny_model().config
    config.num_labels, config.pad_token_id = 1, 258
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(config).eval()


def make_trainer(tmp_path, policy=None, **kw):
    base = dict(reward="sentiment", steps=3, rollout_size=16, minibatch_size=8, ppo_epochs=2, max_new_tokens=8,
                lr=3e-3, kl_coef=0.01, output_dir=str(tmp_path / "ppo"), progress=False, seed=5)
    base.update(kw)
    return PPOTrainer(PPOConfig(**base), policy=policy or tiny_model(), tokenizer=tiny_tokenizer(),
                      value_model=tiny_value_model(), prompts=PROMPTS, reward_fn=lowercase_share, log=lambda *a: None)


def test_first_update_starts_from_the_reference_and_the_old_policy(tmp_path):
    """Policy = reference = old policy at round 0: KL 0, and the first minibatch sees ratio 1
    (no clipping, approx-KL 0)."""
    trainer = make_trainer(tmp_path, ppo_epochs=1, minibatch_size=16)
    batch, texts = trainer.rollout(0)
    scores, truth = trainer.score(batch, texts)
    prep = trainer.prepare(batch, scores)
    assert prep["seq_kl"].abs().max() < 1e-5 and prep["seq_kl_k3"].abs().max() < 1e-5
    # Whitened advantages: mean 0, variance 1 over the valid tokens.
    adv, mask = prep["advantages"], batch.mask
    assert float((adv * mask).sum() / mask.sum()) == pytest.approx(0.0, abs=1e-5)
    stats = trainer.update(batch, prep, 0)
    assert stats["clip_frac"] == 0.0 and stats["approx_kl"] == pytest.approx(0.0, abs=1e-6)


def test_same_seed_same_run(tmp_path):
    a = [make_trainer(tmp_path / "a").round(r) for r in range(1)]
    b = [make_trainer(tmp_path / "b").round(r) for r in range(1)]
    for x, y in zip(a, b):
        for key in ("reward/ground_truth", "kl", "policy_loss", "value_loss"):
            assert x[key] == y[key], key


def test_round_prompts_cover_the_set_once_per_pass(tmp_path):
    trainer = make_trainer(tmp_path, rollout_size=6, minibatch_size=6)
    seen = sum((trainer.round_prompts(r) for r in range(8)), [])  # 48 = 3 passes over 16
    for p in range(3):
        assert sorted(seen[16 * p : 16 * (p + 1)]) == sorted(PROMPTS)


def test_ppo_raises_a_checkable_reward(tmp_path):
    """The reward is the share of a-z characters in the sample (about 0.1 for the random model);
    12 rounds of PPO must raise it well above where it started, while KL to the reference grows
    from 0."""
    trainer = make_trainer(tmp_path, steps=12)
    rounds = [trainer.round(r) for r in range(12)]
    first = rounds[0]["reward/ground_truth"]
    last = sum(r["reward/ground_truth"] for r in rounds[-3:]) / 3
    assert first < 0.2 and last > first + 0.15, (first, last)
    assert rounds[0]["kl"] == pytest.approx(0.0, abs=1e-4) and rounds[-1]["kl"] > 0.1
    assert all(math.isfinite(r["value_loss"]) for r in rounds)


def test_lora_policy_uses_the_adapter_off_as_reference_and_improves_its_surrogate(tmp_path):
    """With LoRA no copy is made: the reference is the adapter switched off (KL 0 before any
    update); an update changes only adapter weights, and it moves log π in the direction of the
    advantages: Σ A·(log π_new − log π_old) > 0 on the rollout it was trained on."""
    from dpokit.models import LoraSettings, apply_lora

    policy = apply_lora(tiny_model(), LoraSettings(r=8, alpha=16, target_modules=("q_proj", "v_proj", "up_proj", "down_proj")))
    trainer = make_trainer(tmp_path, policy=policy, lr=1e-2)
    assert trainer.reference is None
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    batch, texts = trainer.rollout(0)
    prep = trainer.prepare(batch, trainer.score(batch, texts)[0])
    assert prep["seq_kl"].abs().max() < 1e-5
    trainer.update(batch, prep, 0)
    with torch.no_grad():
        from dpokit.rlhf.rollout import policy_token_logps

        moved = policy_token_logps(policy, batch) - prep["old_logp"]
    assert float((prep["advantages"] * moved * batch.mask).sum()) > 0
    assert all(torch.equal(p, frozen[n]) for n, p in policy.named_parameters() if not p.requires_grad)


def test_run_ppo_with_a_reward_model_saves_policy_and_value(tmp_path, tiny_dirs):
    """The command's library path: prompts from a file, reward = the reward model's score at the
    last completion token (logged beside the ground truth), value model started from the reward
    model; the saved policy and value model reload with plain transformers."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from dpokit.rlhf.ppo_run import run_ppo
    from dpokit.train.metrics import read_metrics

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "p{i}:"}}\n' for i in range(6)))
    cfg = PPOConfig(model=str(tiny_dirs / "lm"), reward_model=str(tiny_dirs / "rm"), prompts=str(prompts), steps=2,
                    rollout_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=4, output_dir=str(tmp_path / "run"),
                    progress=False)
    run_ppo(cfg, log=lambda *a: None)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    for r in records:  # trained on the reward model's score; VADER (in [-1, 1]) logged beside it
        assert math.isfinite(r["reward/model"]) and -1 <= r["reward/ground_truth"] <= 1
        assert r["reward/model"] != r["reward/ground_truth"]
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_dirs / "rm").eval()
    value = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "value").eval()
    assert value.num_labels == 1
    assert any(not torch.equal(a, b) for a, b in zip(rm.state_dict().values(), value.state_dict().values()))
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")


def test_prompt_file_errors_name_the_line(tmp_path, tiny_dirs):
    """(The command's view of every rule: tests/test_rm_ppo_commands.py.)"""
    from dpokit.data.records import DataError
    from dpokit.rlhf.ppo_run import load_prompts

    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: field 'prompt'"):
        load_prompts(PPOConfig(model=str(tiny_dirs / "lm"), reward="sentiment", prompts=str(bad)))


def test_resumed_ppo_equals_the_uninterrupted_run(tmp_path):
    """4 rounds straight vs. a new trainer (fresh weights) resumed from the round-2 checkpoint:
    same metrics from round 3 on and bit-identical policy and value weights. Every draw of a round
    is seeded by its number, so no RNG state has to travel; the optimizer state and the adaptive
    KL controller do (kl_target > 0 makes β move)."""
    import shutil

    from dpokit.train.metrics import read_metrics

    kw = dict(steps=4, save_every=2, kl_target=0.5, kl_horizon=50)
    full = make_trainer(tmp_path / "full", output_dir=str(tmp_path / "full"), **kw)
    full.fit()
    part_dir = tmp_path / "part"
    part_dir.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-000002", part_dir / "checkpoint-000002")
    resumed = make_trainer(tmp_path / "part", output_dir=str(part_dir), **kw)
    resumed.fit(resume="latest")
    a, b = read_metrics(tmp_path / "full" / "metrics.jsonl"), read_metrics(part_dir / "metrics.jsonl")
    assert [r["step"] for r in b] == [3, 4]
    for x, y in zip(a[2:], b):
        for key in ("reward/ground_truth", "kl", "kl_coef", "policy_loss", "value_loss"):
            assert x[key] == y[key], key
    assert a[2]["kl_coef"] != a[0]["kl_coef"]  # the controller really moved β
    for m1, m2 in ((full.policy, resumed.policy), (full.value_model, resumed.value_model)):
        assert all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_ppo_resume_refuses_tampered_or_foreign_checkpoints(tmp_path):
    import json

    from dpokit.train.checkpoint import CheckpointError

    make_trainer(tmp_path, steps=2, save_every=1).fit()
    ck = tmp_path / "ppo" / "checkpoint-000001"
    other = make_trainer(tmp_path, steps=2, save_every=1, lr=1e-3)
    with pytest.raises(CheckpointError, match="lr"):
        other.restore(ck)
    (ck / "optimizer.pt").write_bytes(b"\x80\x04N.")  # a pickle is never loaded
    with pytest.raises(CheckpointError, match="pickle"):
        make_trainer(tmp_path, steps=2, save_every=1).restore(ck)
    (ck / "optimizer.pt").unlink()
    state = json.loads((ck / "state.json").read_text())
    (ck / "state.json").write_text(json.dumps({**state, "kind": "dpo"}))
    with pytest.raises(CheckpointError, match="not a PPO checkpoint"):
        make_trainer(tmp_path, steps=2, save_every=1).restore(ck)


def test_a_reward_that_fails_on_one_completion_names_it(tmp_path):
    """The whole round's call raises; scoring each completion alone finds the one it fails on,
    and the error names round, sample, prompt and completion. A reward returning too few
    values is refused too, never padded."""
    from dpokit.rlhf.online import RewardError

    trainer = make_trainer(tmp_path)
    batch, texts = trainer.rollout(1)
    target = texts[5]

    def picky(ts):
        if target in ts:
            raise KeyError("no score for this one")
        return lowercase_share(ts)

    trainer.reward_fn = picky
    i = texts.index(target)
    with pytest.raises(RewardError, match=rf"^round 2, sample {i + 1} of 16 \(prompt '{trainer.round_prompts(1)[i]}', completion .*: the ground-truth reward raised KeyError"):
        trainer.score(batch, texts, 1)
    trainer.reward_fn = lambda ts: lowercase_share(ts)[:-1]
    with pytest.raises(RewardError, match=r"^round 2 \(16 samples\): the ground-truth reward is not 16 numbers \(ValueError: returned shape \(15,\) for 16"):
        trainer.score(batch, texts, 1)


def test_a_fresh_value_head_is_drawn_from_the_seed(tiny_dirs):
    """No reward or value model given: the value head is new, drawn from `seed` alone, so two
    runs of one config start alike whatever the global RNG holds, and the global RNG is left
    as it was."""
    from dpokit.rlhf.ppo_run import build_value_model

    cfg = PPOConfig(model=str(tiny_dirs / "lm"), reward="sentiment", seed=3)
    heads = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        heads.append(build_value_model(cfg).score.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    build_value_model(cfg)
    assert torch.equal(torch.rand(3), expected)
    assert not torch.equal(build_value_model(PPOConfig(model=str(tiny_dirs / "lm"), reward="sentiment", seed=4)).score.weight, heads[0])


def test_a_forced_resume_trains_with_the_new_lr_and_kl_settings(tmp_path):
    """After a stop the advice is "lower lr or raise kl_coef, then --resume --force": the
    optimizer's moments and the round come from the checkpoint, but lr (both groups) and the KL
    controller from the new config. Unchanged settings keep the checkpoint's controller."""
    make_trainer(tmp_path, steps=2, save_every=1, kl_target=0.5, kl_horizon=50).fit()
    ck = tmp_path / "ppo" / "checkpoint-000001"
    same = make_trainer(tmp_path, steps=2, save_every=1, kl_target=0.5, kl_horizon=50)
    same.restore(ck)
    assert same.kl_ctl.beta != 0.01  # the adaptive controller moved β in round 1
    other = make_trainer(tmp_path, steps=2, save_every=1, lr=1e-3, kl_coef=0.2)
    assert other.restore(ck, force=True) == 1
    assert [g["lr"] for g in other.optimizer.param_groups] == [1e-3, 1e-3]
    assert other.kl_ctl.beta == 0.2 and type(other.kl_ctl).__name__ == "FixedKLController"
    assert other.optimizer.state_dict()["state"][0]["exp_avg"].abs().sum() > 0  # moments restored


def test_one_pass_logps_and_entropy_equal_their_plain_computations():
    """The rollout's old pass gives log π of each completion token and π's entropy at its
    position from one forward: equal to the chunked log-probs of the update path and to the
    entropy of the full logits (positions P + j − 1 predict completion token j)."""
    from dpokit.rlhf.estimators import entropy_from_logits
    from dpokit.rlhf.rollout import build_rollout_batch, policy_token_logps, policy_token_logps_and_entropy

    model = tiny_model()
    batch = build_rollout_batch([[5, 6, 7], [9]], [[10, 11, 258], [12, 13, 14, 15]], pad_id=258)
    with torch.no_grad():
        logp, entropy = policy_token_logps_and_entropy(model, batch, chunk_size=3)  # chunks cut across rows
        torch.testing.assert_close(logp, policy_token_logps(model, batch), rtol=1e-5, atol=1e-6)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        for b, (p, c) in enumerate(((3, 3), (1, 4))):
            rows = logits[b : b + 1, p - 1 : p - 1 + c]
            for j in range(c):
                want = entropy_from_logits(rows[:, j : j + 1], torch.ones(1, 1))
                assert float(entropy[b, j]) == pytest.approx(float(want), rel=1e-5)
    assert float(entropy[0, 3:].abs().sum()) == 0.0 and float(logp[0, 3:].abs().sum()) == 0.0  # off the mask
