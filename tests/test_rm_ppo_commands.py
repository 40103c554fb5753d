"""The RLHF commands a user runs, on the tiny model: `dpokit rm` learns a checkable preference,
saves a reward model that plain transformers loads, and resumes exactly; `dpokit ppo` and
`dpokit rloo` train from that reward model; bad settings are one line and exit 2."""

import json
import random
import shutil

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from dpokit.cli import main
from dpokit.testing import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_lm")
    tiny_model().save_pretrained(root)
    tiny_tokenizer().save_pretrained(root)
    return root


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
    return ["rm", f"model={tiny_lm}", f"data={pairs}", f"output_dir={out}", "lr=3e-3", "batch_size=8", "epochs=2",
            "eval_fraction=0.25", "progress=false", "max_length=64", "max_prompt_length=32", *extra]


def test_rm_command_learns_the_preference_and_saves_a_loadable_reward_model(tmp_path, tiny_lm, case_pairs):
    assert main(rm_args(tiny_lm, case_pairs, tmp_path / "rm")) == 0
    summary = json.loads((tmp_path / "rm" / "train_summary.json").read_text())
    assert summary["objective"] == "rm"
    # 24 held-out pairs of prompts never trained on: the rule (case) is learnt, not the pairs.
    assert summary["eval"]["rewards/accuracies"] >= 0.9
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "final").eval()
    assert model.num_labels == 1 and model.config.pad_token_id is not None
    tok = tiny_tokenizer()
    ids = lambda text: torch.tensor([tok("q: " + text)["input_ids"] + [258]])  # noqa: E731
    with torch.no_grad():
        assert model(ids(" lmnop")).logits.item() > model(ids(" LMNOP")).logits.item()


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
    common = [f"model={tiny_lm}", f"reward_model={tmp_path / 'rm' / 'final'}", f"prompts={prompts}", "steps=2",
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
