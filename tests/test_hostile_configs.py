"""A corpus of broken config files (tests/hostile/configs, one defect each) run through the
command a user types: each must end in exit 2 and one stderr line naming the key (with its
valid range) or the file (with the YAML line), never a traceback, and before any model loads.
tests/hostile/good holds odd-but-valid files that must load."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dpokit.tasks.sentiment
import dpokit.train.loop
from dpokit.cli import main
from dpokit.config import LoraConfig, TrainConfig, load_config

HOSTILE = Path(__file__).parent / "hostile" / "configs"
GOOD = Path(__file__).parent / "hostile" / "good"
BOTH, DPO, RUN = ("dpo", "run"), ("dpo",), ("run",)

# file -> (text the one-line message must contain, commands it is run through). Keys of the
# sentiment study's own sections are unknown to `dpokit dpo`; keys the study sets itself are
# valid for `dpokit dpo`.
CASES = {
    "lr_nan.yaml": ("lr must be > 0 and finite, got nan", BOTH),
    "lr_zero.yaml": ("lr must be > 0 and finite, got 0.0", BOTH),
    "lr_huge_exponent.yaml": ("lr must be > 0 and finite, got inf", BOTH),
    "beta_inf.yaml": ("beta must be > 0 and finite, got inf", BOTH),
    "beta_negative.yaml": ("beta must be > 0 and finite, got -0.1", BOTH),
    "eval_fraction_one.yaml": ("eval_fraction must be in [0, 1), got 1.0", DPO),
    "robust_label_smoothing_half.yaml": ("label_smoothing must be in [0, 0.5), got 0.5", BOTH),
    "chunk_size_zero.yaml": ("chunk_size must be ≥ 1, got 0", BOTH),
    "max_length_one.yaml": ("max_length must be ≥ 2, got 1", BOTH),
    "epochs_zero.yaml": ("epochs must be > 0 when max_steps is 0, got 0", BOTH),
    "epochs_nan.yaml": ("epochs must be ≥ 0 and finite, got nan", BOTH),
    "max_steps_negative.yaml": ("max_steps must be ≥ 0 (0 = run `epochs`), got -5", BOTH),
    "save_every_negative.yaml": ("save_every must be ≥ 0 (0 = only the final model), got -2", BOTH),
    "warmup_steps_negative.yaml": ("warmup_steps must be ≥ 0, got -1", BOTH),
    "lora_alpha_zero.yaml": ("lora.alpha must be > 0, got 0", BOTH),
    "lora_dropout_one.yaml": ("lora.dropout must be in [0, 1), got 1.0", BOTH),
    "lora_rank_negative.yaml": ("lora.r must be ≥ 0 (0 trains the full model), got -4", BOTH),
    "lora_without_modules.yaml": ("lora.target_modules must name at least one module", BOTH),
    "max_grad_norm_nan.yaml": ("max_grad_norm must be ≥ 0 and finite (0 disables clipping), got nan", BOTH),
    "weight_decay_negative.yaml": ("weight_decay must be ≥ 0 and finite, got -0.01", BOTH),
    "pack_tokens_zero.yaml": ("pack_tokens must be ≥ 1, got 0", BOTH),
    "max_consecutive_skips_zero.yaml": ("max_consecutive_skips must be ≥ 1, got 0", BOTH),
    "rpo_alpha_negative.yaml": ("rpo_alpha must be ≥ 0 and finite, got -1.0", BOTH),
    "simpo_gamma_inf.yaml": ("simpo_gamma must be finite, got -inf", BOTH),
    "seed_negative.yaml": ("seed must be in [0, 4294967296)", BOTH),
    "huge_integer.yaml": ("max_steps: 1000000000000...00000000000000 is too large (at most 2**63 - 1)", BOTH),
    "huge_integer_as_float.yaml": ("epochs: 1000000000000...00000000000000 is too large for a float", BOTH),
    "integer_too_long_to_read.yaml": ("integer_too_long_to_read.yaml: YAML error: a number too long to read", BOTH),
    "bool_for_bool_key_wrong.yaml": ("packing: expected true/false, got 3", BOTH),
    "string_for_float.yaml": ("beta: expected float, got 'high'", BOTH),
    "mapping_for_scalar.yaml": ("beta: expected float, got {'value': 0.1}", BOTH),
    "scalar_for_section.yaml": ("lora: expected a mapping of keys, got 8", BOTH),
    "list_for_string.yaml": ("model: expected str, got ['a', 'b']", BOTH),
    "unknown_key.yaml": ("unknown config key(s): bta; valid keys: autocast_bf16", BOTH),
    "unknown_nested_key.yaml": ("unknown config key(s) in 'lora': rank; valid keys: alpha, dropout, layers, r", BOTH),
    "numeric_key.yaml": ("unknown config key(s): 1; valid keys:", BOTH),
    "empty_model.yaml": ("model must not be empty", BOTH),
    "bad_choice.yaml": ("optimizer: 'sgd' is not one of adamw, adamw8bit, rmsprop", BOTH),
    "alias_bomb.yaml": ("lora.target_modules: expected str, got ['x', 'x', 'x', 'x', 'x', 'x', ...]", BOTH),
    "optimizer_in_backward_with_clipping.yaml": ("set max_grad_norm=0, grad_accum=1", BOTH),
    "yaml_syntax_error.yaml": ("yaml_syntax_error.yaml:3:7: YAML error: while parsing a flow sequence", BOTH),
    "yaml_bad_indent.yaml": ("yaml_bad_indent.yaml:3:9: YAML error: mapping values are not allowed here", BOTH),
    "yaml_tab_indent.yaml": ("yaml_tab_indent.yaml:2:1: YAML error:", BOTH),
    "yaml_python_tag.yaml": ("yaml_python_tag.yaml:1:7: YAML error: could not determine a constructor", BOTH),
    "yaml_two_documents.yaml": ("yaml_two_documents.yaml:2:1: YAML error: expected a single document", BOTH),
    "top_level_list.yaml": ("top_level_list.yaml: expected a mapping of keys at the top level, got list", BOTH),
    "top_level_scalar.yaml": ("top_level_scalar.yaml: expected a mapping of keys at the top level, got str", BOTH),
    "deep_nesting.yaml": ("deep_nesting.yaml: YAML nested too deeply", BOTH),
    "non_utf8.yaml": ("non_utf8.yaml: not UTF-8 text (byte 0xe9 at offset 30)", BOTH),
    "utf16.yaml": ("utf16.yaml: not UTF-8 text (byte 0xff at offset 0)", BOTH),
    "model_missing.yaml": ("model '/no/such/dir/model' is neither a directory", BOTH),
    "model_uncached_hub_id.yaml": ("model 'no-such-org/no-such-model' is not a local directory and not in the local Hugging Face cache", BOTH),
    "sentiment_sets_data.yaml": ("data: set by the sentiment study itself", RUN),
    "sentiment_sets_objective.yaml": ("objective: the sentiment study trains one of dpo, kto, rrhf, got 'sft'", RUN),
    "sentiment_sft_with_lora.yaml": ("sft.enabled=true with LoRA (lora.r > 0) is not supported", RUN),
    "sentiment_temperature_zero.yaml": ("pairs.temperature must be > 0 and finite, got 0.0", RUN),
    "sentiment_min_gap_nan.yaml": ("pairs.min_gap must be ≥ 0 and finite, got nan", RUN),
    "sentiment_per_prompt_negative.yaml": ("pairs.per_prompt must be ≥ 0 (0 = all), got -1", RUN),
    "sentiment_max_new_tokens_zero.yaml": ("pairs.max_new_tokens must be ≥ 1, got 0", RUN),
    "sentiment_n_train_zero.yaml": ("prompts.n_train must be ≥ 1, got 0", RUN),
    "sentiment_n_heldout_all.yaml": ("prompts.n_heldout must be < 640", RUN),
    "sentiment_eval_samples_zero.yaml": ("eval.samples_per_prompt must be ≥ 1, got 0", RUN),
    "sentiment_eval_examples_negative.yaml": ("eval.examples must be ≥ 0, got -1", RUN),
    "sentiment_sft_lr_zero.yaml": ("sft.lr must be > 0 and finite, got 0.0", RUN),
    "sentiment_sft_epochs_zero.yaml": ("sft.epochs must be > 0 and finite, got 0.0", RUN),
    "sentiment_unknown_reward.yaml": ("reward: 'toxicity' is not one of sentiment", RUN),
    "sentiment_unknown_section_key.yaml": ("unknown config key(s) in 'pairs': samples", RUN),
}
ARGV = {"dpo": ["dpo", "--config"], "run": ["run", "sentiment", "--config"]}


@pytest.fixture()
def no_training(monkeypatch, tmp_path):
    """A config that got through would start training (minutes, the real model): fail fast instead."""

    def reached(*args, **kwargs):
        raise AssertionError("the config was accepted: training started")

    monkeypatch.setattr(dpokit.train.loop, "train", reached)
    monkeypatch.setattr(dpokit.tasks.sentiment, "run_sentiment", reached)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache for the hub-id case
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


def assert_one_clear_line(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("dpokit: config error: "), err
    assert expected in err, err
    assert len(err) < 1000, err  # bounded even for huge or deeply nested values (the longest: all valid keys)


def test_the_corpus_is_the_table():
    assert sorted(p.name for p in HOSTILE.iterdir()) == sorted(CASES)
    assert len(CASES) >= 20


@pytest.mark.parametrize("name, command", [(name, c) for name, (_, commands) in sorted(CASES.items()) for c in commands])
def test_hostile_config_is_one_line_exit_2(name, command, no_training, capsys):
    expected = CASES[name][0]
    code = main(ARGV[command] + [str(HOSTILE / name)])
    assert_one_clear_line(code, capsys.readouterr().err, expected)


@pytest.mark.parametrize("argv, expected", [
    (["dpo", "=3"], "override '=3' is not key=value"),
    (["dpo", "lora..r=3"], "override 'lora..r=3' is not key=value"),
    (["dpo", "beta"], "override 'beta' is not key=value"),
    (["dpo", "beta=[0.1"], "override 'beta=[0.1': the value is not valid YAML"),
    (["dpo", "lora=5", "lora.r=3"], "override 'lora.r=3': lora was given a value, not a section"),
    (["dpo", "lr=nan"], "lr must be > 0 and finite, got nan"),
    (["dpo", "max_steps=-5"], "max_steps must be ≥ 0"),
    (["run", "sentiment", "eval_fraction=0.5"], "eval_fraction: set by the sentiment study itself"),
    (["run", "sentiment", "split=test", "data=x.jsonl"], "data, split: set by the sentiment study itself"),
    (["run", "sentiment", "beta=0.1,-1"], "beta must be > 0 and finite, got -1.0"),  # every sweep point, up front
    (["dpo", "--config", "no/such/file.yaml"], "config file not found: no/such/file.yaml"),
    (["dpo", "--config", "nope"], "--config nope: no such file, and no packaged recipe of that name (packaged: dpo, "),
    (["dpo", "--config", "tests"], "cannot read config file tests: Is a directory"),
    (["dpo", "ref_model=/no/such/ref"], "ref_model: model '/no/such/ref' is neither a directory"),
])
def test_hostile_command_line_is_one_line_exit_2(argv, expected, no_training, capsys):
    code = main(argv)
    assert_one_clear_line(code, capsys.readouterr().err, expected)


def test_every_sweep_point_is_checked_before_the_first_runs(no_training, tmp_path, capsys):
    from dpokit.models import save_model
    from dpokit.testing import tiny_model, tiny_tokenizer

    save_model(tiny_model(), tiny_tokenizer(), tmp_path / "tiny")
    capsys.readouterr()  # save_model's progress bar
    code = main(["run", "sentiment", "--quick", f"output_dir={tmp_path / 'sweep'}", f"model={tmp_path / 'tiny'},/no/such/model"])
    assert_one_clear_line(code, capsys.readouterr().err, "model '/no/such/model' is neither a directory")


def test_a_directory_that_is_not_a_model(no_training, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    code = main(["dpo", f"model={tmp_path / 'notes'}"])
    assert_one_clear_line(code, capsys.readouterr().err, "is a directory without config.json or adapter_config.json")


def test_output_dir_under_a_file(no_training, tmp_path, capsys):
    (tmp_path / "blocker").write_text("a file, not a directory")
    for out, expected in ((tmp_path / "blocker" / "run", "lies under"), (tmp_path / "blocker", "is a file")):
        for argv in (["dpo"], ["run", "sentiment"]):
            code = main(argv + [f"output_dir={out}"])
            assert_one_clear_line(code, capsys.readouterr().err, f"output_dir {out} {expected}")
    assert (tmp_path / "blocker").is_file()  # created nothing, changed nothing


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_output_dir_in_a_read_only_directory(no_training, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = main(["dpo", f"output_dir={locked / 'run'}"])
    finally:
        locked.chmod(0o700)
    assert_one_clear_line(code, capsys.readouterr().err, f"would be created in {locked}, which is not writable")


def test_read_only_output_dir_is_refused_before_loading(no_training, tmp_path, monkeypatch, capsys):
    """The same check as above where the tests run as root (which writes anywhere): os.access
    is what decides, so make it say no for the one directory."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path else real_access(p, mode, **kw))
    code = main(["run", "sentiment", f"output_dir={tmp_path / 'study'}"])
    assert_one_clear_line(code, capsys.readouterr().err, f"would be created in {tmp_path}, which is not writable")


@pytest.mark.parametrize("name", ["non_utf8.yaml", "yaml_syntax_error.yaml", "deep_nesting.yaml", "model_missing.yaml"])
def test_no_traceback_reaches_the_terminal(name, tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    # cwd: a config that slipped through would write its run directory there, not in the repo
    proc = subprocess.run([sys.executable, "-m", "dpokit", "dpo", "--config", str(HOSTILE / name)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert_one_clear_line(proc.returncode, proc.stderr, CASES[name][0])
    assert proc.stdout == ""


def test_mistyped_model_never_touches_the_network(no_training, monkeypatch, capsys):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    for name in ("no-such-org/no-such-model", "/no/such/dir", "smollm2-135m-instrcut"):
        code = main(["dpo", f"model={name}"])
        assert_one_clear_line(code, capsys.readouterr().err, f"model '{name}'")


GOOD_EXPECT = {
    "empty.yaml": {},  # an empty file: every key keeps its default
    "comments_only.yaml": {},
    "exponent_without_dot.yaml": {"lr": 3e-5},
    "epochs_zero_with_max_steps.yaml": {"max_steps": 10, "epochs": 0.0},
    "null_section.yaml": {},
    "cdpo_smoothing.yaml": {"loss": "cdpo", "label_smoothing": 0.4},
    "lora.yaml": {"reference": "adapter"},
    "unicode_output_dir.yaml": {"output_dir": "runs/café-β"},
    "boundaries.yaml": {"eval_fraction": 0.0, "max_length": 2, "max_prompt_length": 1, "max_grad_norm": 0.0,
                        "keep_checkpoints": 0, "log_every": 0, "seed": 2**32 - 1},
}


@pytest.mark.parametrize("name", sorted(GOOD_EXPECT))
def test_odd_but_valid_configs_load(name):
    cfg = load_config(TrainConfig, GOOD / name)
    defaults = TrainConfig()
    for key in (f.name for f in dataclasses.fields(TrainConfig)):
        want = GOOD_EXPECT[name].get(key, getattr(defaults, key))
        if key == "lora" and name == "lora.yaml":
            want = LoraConfig(r=8, alpha=16, dropout=0.1, target_modules=["q_proj", "v_proj"])
        assert getattr(cfg, key) == want, key


def test_good_corpus_is_the_table():
    assert sorted(p.name for p in GOOD.iterdir()) == sorted(GOOD_EXPECT)
