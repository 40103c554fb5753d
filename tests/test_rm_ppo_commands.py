"""The RLHF commands a user runs, on the tiny model: `dpokit rm` learns a checkable preference,
saves a reward model that plain transformers loads, and resumes exactly; `dpokit ppo` and
`dpokit rloo` train from that reward model; bad settings are one line and exit 2."""

import dataclasses
import json
import math
import random
import shutil

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from dpokit.cli import main
from dpokit.testing import tiny_model, tiny_tokenizer


def _word(rng, letters):
    return "".join(rng.choice(letters) for _ in range(rng.randint(3, 6)))


@pytest.fixture(scope="module")
def case_pairs(tmp_path_factory):
    """A checkable preference: the chosen answer is lowercase, the rejected one capitals."""
    rng = random.Random(0)
    lines = []
    for i in range(96):
        prompt = f"q{i} {_word(rng, 'abcdefghij')}:"
        lines.append(json.dumps({"prompt": prompt, "chosen": " " + _word(rng, "klmnopqrst"),
                                 "rejected": " " + _word(rng, "KLMNOPQRST")}))
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def rm_args(tiny_lm, pairs, out, *extra):
    return ["rm", f"model={tiny_lm / 'lm'}", f"data={pairs}", f"output_dir={out}", "lr=3e-3", "batch_size=8", "epochs=2",
            "eval_fraction=0.25", "progress=false", "max_length=64", "max_prompt_length=32", *extra]


def test_rm_command_learns_the_preference_and_saves_a_loadable_reward_model(tmp_path, tiny_lm, case_pairs):
    assert main(rm_args(tiny_lm, case_pairs, tmp_path / "rm")) == 0
    summary = json.loads((tmp_path / "rm" / "train_summary.json").read_text())
    assert summary["objective"] == "rm"
    # 24 held-out pairs of prompts never trained on: the rule (case) is learnt, not the pairs.
    assert summary["eval"]["rewards/accuracies"] >= 0.9
    # The head starts at zero (build_reward_model(zero_head=True)): every reward 0, first loss log 2.
    first = json.loads((tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "final").eval()
    assert model.num_labels == 1 and model.config.pad_token_id is not None
    tok = tiny_tokenizer()
    ids = lambda text: torch.tensor([tok("q: " + text)["input_ids"] + [258]])
    with torch.no_grad():
        assert model(ids(" lmnop")).logits.item() > model(ids(" LMNOP")).logits.item()


def test_rm_head_lr_is_the_heads_step_size(tmp_path, tiny_lm, case_pairs):
    # One AdamW step from the zero head moves each head weight by exactly ±head_lr (m̂/√v̂ = ±1);
    # the backbone's gradient is zero at that step (it flows through the zero head), so it stays.
    out = tmp_path / "rm"
    assert main(rm_args(tiny_lm, case_pairs, out, "max_steps=1", "head_lr=0.05", "lr=1e-4", "schedule=constant",
                        "max_grad_norm=0")) == 0
    after = AutoModelForSequenceClassification.from_pretrained(out / "final").state_dict()
    assert torch.allclose(after["score.weight"].abs(), torch.full_like(after["score.weight"], 0.05), rtol=1e-4)
    before = tiny_model().state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("model."))


def test_rm_resume_is_bit_identical(tmp_path, tiny_lm, case_pairs):
    full = tmp_path / "full"
    assert main(rm_args(tiny_lm, case_pairs, full, "max_steps=6", "save_every=3")) == 0
    # A run that got as far as the step-3 checkpoint, resumed by a new command.
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(full / "checkpoint-000003", part / "checkpoint-000003")
    assert main(rm_args(tiny_lm, case_pairs, part, "max_steps=6", "save_every=3") + ["--resume"]) == 0
    assert json.loads((part / "train_summary.json").read_text())["steps"] == 6
    a = AutoModelForSequenceClassification.from_pretrained(full / "final").state_dict()
    b = AutoModelForSequenceClassification.from_pretrained(part / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ppo_and_rloo_commands_train_from_the_reward_model(tmp_path, tiny_lm, case_pairs):
    assert main(rm_args(tiny_lm, case_pairs, tmp_path / "rm", "max_steps=2")) == 0
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}:"}) + "\n" for i in range(8)))
    common = [f"model={tiny_lm / 'lm'}", f"reward_model={tmp_path / 'rm' / 'final'}", f"prompts={prompts}", "steps=2",
              "max_new_tokens=4", "progress=false"]
    assert main(["ppo", *common, "rollout_size=4", "minibatch_size=2", "ppo_epochs=1", f"output_dir={tmp_path / 'ppo'}"]) == 0
    assert main(["rloo", *common, "rollout_prompts=2", "k=2", f"output_dir={tmp_path / 'rloo'}"]) == 0
    for run in ("ppo", "rloo"):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(l)["step"] for l in lines] == [1, 2]
        assert (tmp_path / run / "final" / "config.json").exists()


@pytest.mark.parametrize("command,args,message", [
    ("ppo", ["reward=model"], "reward=model needs reward_model"),
    ("ppo", ["reward=sentiment", "gamma=1.5"], "gamma must be in [0, 1]"),
    ("ppo", ["reward=sentiment", "minibatch_size=64", "rollout_size=8"], "minibatch_size (64) must be ≤ rollout_size (8)"),
    ("ppo", ["reward=sentiment", "kl_coef=nan"], "kl_coef must be"),
    ("rloo", ["reward=sentiment", "k=1"], "k must be ≥ 2"),
    ("ppo", ["reward_model=/no/such/rm"], "reward_model"),
    ("rm", ["lora.r=4"], "objective=rm trains the full reward model"),
])
def test_bad_rlhf_settings_are_one_line_and_exit_2(tmp_path, capsys, command, args, message):
    assert main([command, f"output_dir={tmp_path / 'out'}", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err


# -- online RL: prompt files, reward errors, stops, RLOO resume --------------------------------
def lowercase_share(texts):
    """A checkable reward the tiny model can learn fast (share of a-z characters)."""
    return [sum("a" <= ch <= "z" for ch in t) / max(len(t), 1) for t in texts]


@pytest.fixture
def learnable_reward(monkeypatch):
    """The commands' ground truth swapped for `lowercase_share` (VADER scores the tiny model's
    byte soup 0, so nothing would move)."""
    import dpokit.eval.rewards

    monkeypatch.setattr(dpokit.eval.rewards, "get_reward", lambda name: lowercase_share)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}:"}) + "\n" for i in range(8)))
    return path


def online_args(command, tiny_lm, prompts, out, *extra):
    shape = ["rollout_size=8", "minibatch_size=4", "ppo_epochs=2"] if command == "ppo" else ["rollout_prompts=4", "k=2"]
    return [command, f"model={tiny_lm / 'lm'}", "reward=sentiment", f"prompts={prompts}", "max_new_tokens=6", "lr=3e-2",
            "progress=false", f"output_dir={out}", *shape, *extra]


def one_error_line(capsys) -> str:
    """dpokit's one error line. Runs that got as far as loading models also leave transformers'
    own load messages on stderr (not dpokit's to silence), so only dpokit's lines are counted."""
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("dpokit:")]
    assert len(ours) == 1 and "Traceback" not in err, err
    return ours[0]


OK = b'{"prompt": "ok"}\n'
BAD_PROMPT_FILES = [
    (OK + b'{"prompt": \n', "p.jsonl:2: invalid JSON"),
    (OK + b"[1]\n", "p.jsonl:2: expected a JSON object, got list"),
    (OK + b'{"text": "x"}\n', "p.jsonl:2: field 'prompt': missing"),
    (OK + b'{"prompt": 3}\n', "p.jsonl:2: field 'prompt': expected a string or a list of messages, got int"),
    (OK + b'{"prompt": ""}\n', "p.jsonl:2: field 'prompt': no visible text"),
    (OK + b'{"prompt": " \\u200b\\u2060 "}\n', "p.jsonl:2: field 'prompt': no visible text"),
    (OK + b'{"prompt": "a\\ud800"}\n', "p.jsonl:2: field 'prompt': not valid Unicode: a lone surrogate (\\ud800"),
    (OK + b'{"prompt": "hi<|im_end|>"}\n', "p.jsonl:2: field 'prompt': holds special-token text '<|im_end|>'"),
    (OK + b'{"prompt": [{"role": "user", "content": "<|im_start|>system"}]}\n',
     "p.jsonl:2: field 'prompt[0].content': holds special-token text '<|im_start|>'"),
    (OK + b'{"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n',
     "p.jsonl:2: field 'prompt': the last message must not be the assistant's"),
    (OK + b'{"prompt": [{"role": "boss", "content": "hi"}]}\n', "p.jsonl:2: field 'prompt[0]': unknown role 'boss'"),
    (OK + b'{"prompt": []}\n', "p.jsonl:2: field 'prompt': no visible text"),
    (OK + b'{"prompt": "caf\xe9"}\n', "p.jsonl:2: not valid UTF-8 (byte 0xe9 at offset 15 of the line)"),
    (b"\n \n", "p.jsonl: holds no prompts"),
]


@pytest.mark.parametrize("command", ["ppo", "rloo"])
@pytest.mark.parametrize("content,message", BAD_PROMPT_FILES)
def test_bad_prompt_files_are_one_line_naming_line_and_field(tmp_path, capsys, tiny_lm, command, content, message):
    bad = tmp_path / "p.jsonl"
    bad.write_bytes(content)
    assert main(online_args(command, tiny_lm, bad, tmp_path / "out", "steps=1")) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()  # refused before any round


def test_missing_prompt_file_is_one_line(tmp_path, capsys, tiny_lm):
    assert main(online_args("rloo", tiny_lm, tmp_path / "nope.jsonl", tmp_path / "out", "steps=1")) == 2
    assert "nope.jsonl: no such prompt file" in one_error_line(capsys)


def test_text_and_chat_prompts_train_and_are_counted(tmp_path, capsys, tiny_lm):
    """Text prompts are used verbatim, chat prompts through the chat template with its
    generation prompt (its markup becomes the real control tokens); the count is printed."""
    from dpokit.rlhf.ppo_config import PPOConfig
    from dpokit.rlhf.ppo_run import load_prompts
    from dpokit.testing import tiny_tokenizer

    path = tmp_path / "p.jsonl"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    path.write_text(json.dumps({"prompt": "q0:"}) + "\n" + json.dumps({"prompt": chat}) + "\n" + json.dumps({"prompt": "q2:"}) + "\n")
    assert main(online_args("ppo", tiny_lm, path, tmp_path / "out", "steps=1", "n_prompts=2")) == 0
    assert "prompts: 3 read from" in capsys.readouterr().out
    prompts = load_prompts(PPOConfig(model=str(tiny_lm / "lm"), reward="sentiment", prompts=str(path)))
    assert prompts[0] == "q0:" and prompts[1] == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tiny_tokenizer()(prompts[1], add_special_tokens=False)["input_ids"].count(257) == 3  # <|im_start|>


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory, tiny_lm):
    """A reward model on the tiny LM's backbone (untrained: these tests need only its shape)."""
    from dpokit.rlhf.reward_model import build_reward_model, save_reward_model

    root = tmp_path_factory.mktemp("tiny_rm")
    rm, tok = build_reward_model(tiny_lm / "lm")
    save_reward_model(rm, tok, root)
    return root


def nan_for_the_third(texts):
    return [float("nan") if i == 2 else 0.5 for i in range(len(texts))]


def boom(texts):
    raise ZeroDivisionError("boom")


@pytest.mark.parametrize("command", ["ppo", "rloo"])
@pytest.mark.parametrize("reward_fn,message", [
    (nan_for_the_third, "round 1, sample 3 of 8 (prompt 'q"),
    (boom, "round 1, sample 1 of 8 (prompt 'q"),
])
def test_a_reward_that_is_nan_or_raises_stops_the_run_naming_round_and_sample(
        tmp_path, capsys, monkeypatch, tiny_lm, prompt_file, command, reward_fn, message):
    """Never a silent zero: one line naming round, sample, prompt and completion, exit 1
    (the run started and failed), no final model, the summary says why."""
    import dpokit.eval.rewards

    monkeypatch.setattr(dpokit.eval.rewards, "get_reward", lambda name: reward_fn)
    out = tmp_path / "out"
    assert main(online_args(command, tiny_lm, prompt_file, out, "steps=2")) == 1
    line = one_error_line(capsys)
    assert line.startswith("dpokit: reward error: ") and message in line and "completion '" in line, line
    detail = "the ground-truth reward is nan (1 of 8 samples not finite)" if reward_fn is nan_for_the_third \
        else "the ground-truth reward raised ZeroDivisionError: boom"
    assert detail in line, line
    assert not (out / "final").exists()
    assert json.loads((out / f"{command}_summary.json").read_text())["stopped"] in line


@pytest.mark.parametrize("command", ["ppo", "rloo"])
def test_a_reward_model_score_that_is_inf_stops_the_run(tmp_path, capsys, monkeypatch, tiny_lm, tiny_rm, prompt_file, command):
    import dpokit.rlhf.ppo
    import dpokit.rlhf.rloo

    module = dpokit.rlhf.ppo if command == "ppo" else dpokit.rlhf.rloo
    real = module.sequence_scores

    def scores(model, batch):  # RLOO: one micro-batch of 8 (minibatch_size=8), so row 1 = sample 2
        out = real(model, batch)
        out[1] = float("inf")
        return out

    monkeypatch.setattr(module, "sequence_scores", scores)
    args = online_args(command, tiny_lm, prompt_file, tmp_path / "out", "steps=2", "reward=model", f"reward_model={tiny_rm}")
    assert main(args + (["minibatch_size=8"] if command == "rloo" else [])) == 1
    line = one_error_line(capsys)
    assert "round 1, sample 2 of 8" in line and "the reward model's score is inf" in line, line


def kls(run):
    return [json.loads(line)["kl"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def checkpoints(run):
    return sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint-"))


def same_weights(a, b):
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("command", ["ppo", "rloo"])
def test_max_kl_stops_before_the_blown_up_update_and_keeps_the_last_good_checkpoint(
        tmp_path, capsys, learnable_reward, tiny_lm, prompt_file, command):
    """lr=3e-2 drives KL up fast. max_kl is set between the KL of round 2 and round 3 of the
    same run without a limit: the run stops at round 3 (exit 1, one line), before round 3's
    update, with no final model. keep_checkpoints=1 and save_every=1: checkpoint-2 (the weights
    whose rollout blew up) is never written, so checkpoint-1 survives. Resumed from it with
    the limit off, the run ends bit for bit where the unlimited run ended."""
    free = tmp_path / "free"
    assert main(online_args(command, tiny_lm, prompt_file, free, "steps=4", "max_kl=0")) == 0
    kl = kls(free)
    assert kl[2] > kl[1] + 1 and kl[0] < kl[1] + 1, kl  # a clear gap to put the limit in
    limit = (kl[1] + kl[2]) / 2
    run = tmp_path / "run"
    args = online_args(command, tiny_lm, prompt_file, run, "steps=4", "save_every=1", "keep_checkpoints=1")
    assert main(args + [f"max_kl={limit}"]) == 1
    line = one_error_line(capsys)
    assert line.startswith("dpokit: round 3: mean KL to the reference") and f"exceeds max_kl={limit:g}" in line, line
    assert f"Last good checkpoint: {run / 'checkpoint-000001'}" in line, line
    assert checkpoints(run) == ["checkpoint-000001"] and not (run / "final").exists()
    assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    # max_kl changes no number of a run, so a resume may change it without --force.
    assert main(args + ["max_kl=0", "--resume"]) == 0
    assert kls(run) == kl
    assert same_weights(free / "final", run / "final")


@pytest.mark.parametrize("command", ["ppo", "rloo"])
def test_rounds_of_only_skipped_updates_stop_the_run(tmp_path, capsys, monkeypatch, tiny_lm, prompt_file, command):
    """From round 2 on every loss is NaN: each update is skipped (weights stay finite), and
    after max_consecutive_skips=2 such rounds the run stops, exit 1, no final model. No
    checkpoint is written inside the streak: only checkpoint-1 (after round 1's real update)."""
    import dpokit.rlhf.estimators
    import dpokit.rlhf.rloo

    module, name = (dpokit.rlhf.estimators, "ppo_policy_loss") if command == "ppo" else (dpokit.rlhf.rloo, "reinforce_losses")
    real, calls = getattr(module, name), []
    per_round = 4 if command == "ppo" else 1  # PPO: 2 epochs × 2 minibatches; RLOO: 1 step of 1 micro-batch

    def nan_after_round_1(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        if len(calls) <= per_round:
            return out
        return dataclasses.replace(out, loss=out.loss * float("nan")) if command == "ppo" else out * float("nan")

    monkeypatch.setattr(module, name, nan_after_round_1)
    run = tmp_path / "run"
    args = online_args(command, tiny_lm, prompt_file, run, "steps=5", "save_every=1", "keep_checkpoints=0", "max_consecutive_skips=2")
    assert main(args) == 1
    line = one_error_line(capsys)
    assert "rounds 2-3 (2 in a row = max_consecutive_skips)" in line and "checkpoint-000001" in line, line
    assert checkpoints(run) == ["checkpoint-000001"] and not (run / "final").exists()
    skipped = "skipped_minibatches" if command == "ppo" else "skipped_steps"
    assert [json.loads(l)[skipped] for l in (run / "metrics.jsonl").read_text().splitlines()] == [0, per_round, per_round]


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_rloo_resumed_equals_the_uninterrupted_run(tmp_path, learnable_reward, tiny_lm, prompt_file):
    """4 rounds straight vs. a new command resumed from the round-2 checkpoint: the same metrics
    for rounds 3-4 and a bit-identical final policy (the optimizer state travels; every draw of
    a round is seeded by its number)."""
    full, part = tmp_path / "full", tmp_path / "part"
    args = lambda out: online_args("rloo", tiny_lm, prompt_file, out, "steps=4", "save_every=2")
    assert main(args(full)) == 0
    assert checkpoints(full) == ["checkpoint-000002"]
    part.mkdir()
    shutil.copytree(full / "checkpoint-000002", part / "checkpoint-000002")
    assert main(args(part) + ["--resume"]) == 0
    a, b = metrics(full), metrics(part)
    assert [r["step"] for r in b] == [3, 4]
    for x, y in zip(a[2:], b):
        for key in ("reward/ground_truth", "kl", "loss", "grad_norm", "entropy"):
            assert x[key] == y[key], key
    assert a[3]["kl"] != a[1]["kl"]  # the rounds differ: a resume that replayed round 2 would show
    assert same_weights(full / "final", part / "final")
    assert json.loads((part / "rloo_summary.json").read_text())["rounds"] == 4


def _set_kind(ck):
    state = json.loads((ck / "state.json").read_text())
    (ck / "state.json").write_text(json.dumps({**state, "kind": "ppo"}))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("tamper,extra,message", [
    (lambda ck: (ck / "optimizer.pt").write_bytes(b"\x80\x04N."), [], "pickle-format file in a checkpoint"),
    (_set_kind, [], "not a RLOO checkpoint of this dpokit"),
    (lambda ck: _truncate(ck / "optimizer.safetensors"), [], "optimizer.safetensors: not a readable safetensors file"),
    (lambda ck: _truncate(ck / "policy" / "model.safetensors"), [], "model.safetensors: not a readable safetensors file"),
    (lambda ck: (ck / "optimizer.json").write_text("{"), [], "optimizer.json: not valid JSON"),
    (lambda ck: None, ["lr=1e-2"], "made with other settings (lr 0.03 -> 0.01); --force resumes anyway"),
    (lambda ck: None, ["n_prompts=7"], "made with other settings (prompts (8 then, 7 now, or other text); n_prompts 0 -> 7)"),
])
def test_rloo_resume_refuses_tampered_or_foreign_checkpoints(tmp_path, capsys, tiny_lm, prompt_file, tamper, extra, message):
    run = tmp_path / "run"
    args = online_args("rloo", tiny_lm, prompt_file, run, "steps=2", "save_every=1")
    assert main(args) == 0
    ck = run / "checkpoint-000001"
    final = (run / "final" / "model.safetensors").read_bytes()
    tamper(ck)
    assert main(args + extra + ["--resume"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("dpokit: checkpoint error: ") and message in line, line
    assert (run / "final" / "model.safetensors").read_bytes() == final  # nothing was run or replaced
